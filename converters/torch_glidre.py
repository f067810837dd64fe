"""GLiDRE in PyTorch (spec §1) with the official state-dict keys: the test oracle.

torch + transformers only, written from the spec rather than from our JAX
code: documents go one at a time, trimmed of their padding, and each entity
pools the explicit list of its mention words (a word once per mention that
covers it). It eats the padded numpy batch of `glidre_jax.data.batch` and
returns the relation logits [B, E, E, K]. `from_pretrained` /
`save_pretrained` read and write the official directory layout
(`converters.official`), as the official GLiDRE does.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

import numpy as np
import torch
import transformers
from torch import nn

from . import official

SUPPORTED_ENCODERS = ("bert", "deberta-v2")
_POOL_EPS = 1e-7  # the reference divides mention sums by (count + 1e-7)
_LOP_EPS = 1e-5
_LABEL_EPS = 1e-9  # clamp of the label mask sum (sentence-transformers mean)
# Tensors that loaders may legitimately lack or carry beyond the model.
_OPTIONAL_MISSING = ("pooler.",)
_IGNORED_EXTRA = ("rnn.",)


def projection_ffn(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
  """GLiNER's projection layer: indices 0 (Linear) and 3 (Linear)."""
  return nn.Sequential(nn.Linear(d_in, 4 * d_out), nn.ReLU(), nn.Dropout(dropout),
                       nn.Linear(4 * d_out, d_out))


def hf_encoder(hf: Mapping[str, Any]) -> transformers.PreTrainedModel:
  """A randomly initialised HF encoder with eager attention (attention probs)."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_ENCODERS:
    raise ValueError(f"unsupported encoder model_type {model_type!r}; "
                     f"supported: {list(SUPPORTED_ENCODERS)}")
  fields = {k: v for k, v in hf.items() if k != "model_type"}
  config = transformers.AutoConfig.for_model(model_type, **fields)
  return transformers.AutoModel.from_config(config, attn_implementation="eager")


class Slot(nn.Module):
  """The official encoder wrapper: the HF model sits under `.model`."""

  def __init__(self, model: nn.Module):
    super().__init__()
    self.model = model


class TokenRep(nn.Module):

  def __init__(self, hidden: int, text_hf: Mapping, label_hf: Mapping):
    super().__init__()
    self.bert_layer = Slot(hf_encoder(text_hf))
    self.labels_encoder = Slot(hf_encoder(label_hf))
    d_text = self.bert_layer.model.config.hidden_size
    d_label = self.labels_encoder.model.config.hidden_size
    self.projection = nn.Linear(d_text, hidden) if d_text != hidden else None
    self.labels_projection = nn.Linear(d_label, hidden) if d_label != hidden else None


class RelRep(nn.Module):

  def __init__(self, hidden: int, dropout: float, atlop: bool):
    super().__init__()
    self.head_extractor = projection_ffn(2 * hidden, hidden, dropout) if atlop else None
    self.tail_extractor = projection_ffn(2 * hidden, hidden, dropout) if atlop else None
    self.projection = projection_ffn(2 * hidden, hidden, dropout)


class TorchGLiDRE(nn.Module):
  """`official_cfg`: a glidre_config.json dict; `*_hf`: encoder config.json dicts."""

  def __init__(self, official_cfg: Mapping[str, Any], text_hf: Mapping, label_hf: Mapping):
    super().__init__()
    official.check_supported(official_cfg, "TorchGLiDRE")
    self.official_cfg = dict(official_cfg)
    hidden, dropout = int(official_cfg["hidden_size"]), float(official_cfg["dropout"])
    self.pooling = official_cfg.get("pooling", "mean")
    if self.pooling not in ("mean", "logsumexp"):
      raise ValueError(f"pooling {self.pooling!r} is not mean / logsumexp")
    self.token_rep_layer = TokenRep(hidden, text_hf, label_hf)
    self.span_rep_layer = RelRep(hidden, dropout, bool(official_cfg.get("atlop", True)))
    self.prompt_rep_layer = projection_ffn(hidden, hidden, dropout)

  # --- the model ---------------------------------------------------------

  def encode_labels(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """l_k [K, D]: projected label tokens, mask-mean pooled, prompt FFN."""
    layer = self.token_rep_layer
    tokens = layer.labels_encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    if layer.labels_projection is not None:
      tokens = layer.labels_projection(tokens)
    m = mask.unsqueeze(-1).to(tokens.dtype)
    pooled = (tokens * m).sum(1) / m.sum(1).clamp(min=_LABEL_EPS)
    return self.prompt_rep_layer(pooled)

  def encode_document(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected subword vectors [L, D] and last-layer attention [H, L, L]."""
    layer = self.token_rep_layer
    out = layer.bert_layer.model(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None],
                                 output_attentions=True)
    tokens = out.last_hidden_state[0]
    if layer.projection is not None:
      tokens = layer.projection(tokens)
    return tokens, out.attentions[-1][0]

  def pool_entity(self, words: torch.Tensor, word_att: torch.Tensor, counts: torch.Tensor):
    """Entity vector [D] and attention row [W] over its mention words."""
    idx = torch.repeat_interleave(torch.arange(len(counts)), counts.round().long())
    if idx.numel() == 0:  # all mentions truncated away
      return words.new_zeros(words.shape[1]), word_att.new_zeros(word_att.shape[1])
    vecs, rows = words[idx], word_att[idx]
    if self.pooling == "mean":
      vec = vecs.sum(0) / (idx.numel() + _POOL_EPS)
    else:
      vec = torch.logsumexp(vecs, dim=0)
    return vec, rows.sum(0) / (idx.numel() + _POOL_EPS)

  def relation_reps(self, words: torch.Tensor, word_att: torch.Tensor,
                    counts: torch.Tensor) -> torch.Tensor:
    """r_{h,t} [E, E, D] from word vectors [W, D], word attention [W, W] and
    per-entity word counts [E, W]."""
    pooled = [self.pool_entity(words, word_att, c) for c in counts]
    ents = torch.stack([p[0] for p in pooled])
    ent_att = torch.stack([p[1] for p in pooled])
    n = len(ents)
    heads = ents[:, None, :].expand(n, n, -1)
    tails = ents[None, :, :].expand(n, n, -1)
    rel = self.span_rep_layer
    if rel.head_extractor is None:
      return rel.projection(torch.cat([heads, tails], dim=-1))
    alpha = ent_att[:, None, :] * ent_att[None, :, :]
    alpha = alpha / (alpha.sum(-1, keepdim=True) + _LOP_EPS)
    context = alpha @ words  # [E, E, W] @ [W, D]
    head = torch.tanh(rel.head_extractor(torch.cat([heads, context], dim=-1)))
    tail = torch.tanh(rel.tail_extractor(torch.cat([tails, context], dim=-1)))
    return rel.projection(torch.cat([head, tail], dim=-1))

  def forward(self, batch: Mapping[str, np.ndarray]) -> torch.Tensor:
    """Logits [B, E, E, K] (zeros for padding documents)."""
    t = lambda name: torch.as_tensor(np.asarray(batch[name]))
    labels = self.encode_labels(t("label_input_ids").long(), t("label_attention_mask").long())
    ids, att_mask, word_index = t("input_ids").long(), t("attention_mask"), t("word_index").long()
    word_mask, weights = t("word_mask"), t("entity_word_weights").float()
    b, e = weights.shape[:2]
    logits = labels.new_zeros(b, e, e, labels.shape[0])
    for i in range(b):
      if not int(batch["doc_mask"][i]):
        continue
      n_sub, n_words = int(att_mask[i].sum()), int(word_mask[i].sum())
      tokens, att = self.encode_document(ids[i, :n_sub])
      first = word_index[i, :n_words]  # first subword of each word
      words = tokens[first]
      word_att = att.mean(0)[first][:, first]
      rel = self.relation_reps(words, word_att, weights[i, :, :n_words])
      logits[i] = rel @ labels.T
    return logits

  # --- the official directory layout -------------------------------------

  @classmethod
  def from_pretrained(cls, directory: str | os.PathLike, *, text_encoder_dir=None,
                      label_encoder_dir=None) -> "TorchGLiDRE":
    """Loads an official GLiDRE directory (safetensors first, as the official loader)."""
    directory = pathlib.Path(directory)
    cfg = official.read_config(directory)
    text_hf, _ = official.encoder_config(directory, cfg, "text", text_encoder_dir)
    label_hf, _ = official.encoder_config(directory, cfg, "labels", label_encoder_dir)
    model = cls(cfg, text_hf, label_hf)
    if (directory / official.SAFETENSORS).exists():
      from safetensors.torch import load_file
      state = load_file(str(directory / official.SAFETENSORS))
    else:
      state = torch.load(directory / official.TORCH_BIN, map_location="cpu", weights_only=True)
    model.load_official_state(state)
    return model.eval()

  def load_official_state(self, state: Mapping[str, torch.Tensor]) -> None:
    state = official.strip_wrapper_prefix(state)
    state = {k: v for k, v in state.items() if not k.startswith(_IGNORED_EXTRA)}
    result = self.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys
               if not any(p in k for p in _OPTIONAL_MISSING)]
    if missing or result.unexpected_keys:
      raise ValueError(f"state dict does not match: missing {missing}, "
                       f"unexpected {result.unexpected_keys}")

  def save_pretrained(self, out_dir: str | os.PathLike, text_encoder_dir, label_encoder_dir,
                      *, safetensors: bool = False) -> pathlib.Path:
    """As the official `save_pretrained` (pytorch_model.bin by default), plus the
    encoder folders that make the directory self-contained."""
    out = pathlib.Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(self.official_cfg)
    for role, src in (("text", text_encoder_dir), ("labels", label_encoder_dir)):
      sub, name_field, _ = official.ROLES[role]
      official.write_encoder_folder(src, out / sub)
      cfg[name_field] = str(out / sub)
    official.copy_tokenizer(text_encoder_dir, out)
    official.write_config(out, cfg)
    state = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}
    official.write_weights(out, state, torch_bin=True, safetensors=safetensors)
    return out

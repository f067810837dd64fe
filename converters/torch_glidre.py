"""GLiDRE in PyTorch (spec §1) with the official state-dict keys: the test oracle.

torch + transformers only, written from the spec and the official code rather
than from our JAX code: documents go one at a time and each entity pools the
explicit list of its mention words (a word once per mention that covers it).
`forward` eats the padded numpy batch of `glidre_jax.data.batch` and returns
the relation logits [B, E, E, K]; `official_logits` starts from a document's
words and mention spans and builds its inputs as the official code does
(GLiNER's `words_mask` from the fast tokenizer's `word_ids()`), independently
of our tokenisation and featurisation. `from_pretrained` / `save_pretrained`
read and write the official directory layout (`converters.official`), as the
official GLiDRE does.

Word vectors follow the official `extract_word_embeddings`: word w gets its
first subword's vector and attention row/column, scattered into zeros, so a
word with no subword (a lone non-breaking space) is a zero vector with zero
attention that still counts in its mentions' lengths. One official bug is
not reproduced unless asked (spec §1): words cut off by the encoder's
subword limit are dropped, not zero vectors (`official_logits(...,
keep_cut_words=True)` reproduces the official behaviour).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

import numpy as np
import torch
import transformers
from torch import nn

from glidre_jax.data import label_split

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
    # The official adaptive-threshold variant (its losses atloss / afloss):
    # threshold logit = threshold_layer([mean of the label vectors; r]).
    self.threshold_layer = (
        nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                      nn.Linear(hidden, 1))
        if official_cfg.get("loss") in official.THRESHOLD_LOSSES else None)

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

  def word_features(self, tokens: torch.Tensor, att: torch.Tensor, words_mask: torch.Tensor,
                    num_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Word vectors [W, D] and head-mean word attention [W, W], as the official
    `extract_word_embeddings`: words_mask[i] = w + 1 where subword i is word
    w's first, 0 elsewhere; words never named stay zero."""
    sub = torch.nonzero(words_mask > 0).squeeze(-1)
    tgt = words_mask[sub].long() - 1
    words = tokens.new_zeros(num_words, tokens.shape[-1])
    words[tgt] = tokens[sub]
    rows = att.new_zeros(att.shape[0], num_words, att.shape[-1])
    rows[:, tgt, :] = att[:, sub, :]
    word_att = att.new_zeros(att.shape[0], num_words, num_words)
    word_att[:, :, tgt] = rows[:, :, sub]
    return words, word_att.mean(0)  # the official rel_rep averages heads after the gather

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

  def forward(self, batch: Mapping[str, np.ndarray], with_threshold: bool = False):
    """Logits [B, E, E, K] (zeros for padding documents); with_threshold:
    (logits, threshold logits [B, E, E]) of the threshold_layer variant."""
    t = lambda name: torch.as_tensor(np.asarray(batch[name]))
    # One padded batch of whole label names, as the official code encodes them.
    label_ids, label_mask = label_split.joined(batch)
    labels = self.encode_labels(torch.as_tensor(label_ids).long(),
                                torch.as_tensor(label_mask).long())
    # The official model sees only real labels: its threshold input is their mean.
    label_mean = labels[t("label_mask").bool()].mean(0)
    ids, att_mask, word_index = t("input_ids").long(), t("attention_mask"), t("word_index").long()
    word_mask, weights = t("word_mask"), t("entity_word_weights").float()
    b, e, w = weights.shape
    logits = labels.new_zeros(b, e, e, labels.shape[0])
    threshold = labels.new_zeros(b, e, e)
    for i in range(b):
      if not int(batch["doc_mask"][i]):
        continue
      n_sub = int(att_mask[i].sum())
      tokens, att = self.encode_document(ids[i, :n_sub])
      # word_mask 0 inside a document: a word without subword. Padding words
      # are zero vectors with zero weights: they change nothing.
      words_mask = torch.zeros(n_sub, dtype=torch.long)
      has = torch.nonzero(word_mask[i] > 0).squeeze(-1)
      words_mask[word_index[i, has]] = has + 1
      words, word_att = self.word_features(tokens, att, words_mask, w)
      rel = self.relation_reps(words, word_att, weights[i])
      logits[i] = rel @ labels.T
      if self.threshold_layer is not None:
        threshold[i] = self.threshold_layer(
            torch.cat([label_mean.expand_as(rel), rel], dim=-1))[..., 0]
    if with_threshold:
      if self.threshold_layer is None:
        raise ValueError("this model has no threshold_layer (official loss atloss / afloss)")
      return logits, threshold
    return logits

  def official_logits(self, tokenizer, words, entities, label_input_ids, label_attention_mask,
                      *, keep_cut_words: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [E, E, K] and scored-entity mask [E] of one document given as
    words and, per entity, its mentions' (start, end) word spans with `end`
    inclusive (the official format), prepared as the official processor does.

    tokenizer: a HF fast tokenizer (truncated at its model_max_length, as the
    official `truncation=True`). Entities without a kept word are not scored
    (mask 0), unless keep_cut_words: the official bug, cut words as zeros.
    """
    words = list(words)[:int(self.official_cfg.get("max_len", 512))]  # official word limit
    enc = tokenizer(words, is_split_into_words=True, truncation=True,
                    max_length=tokenizer.model_max_length)
    words_mask, prev = [], None
    for wid in enc.word_ids():  # GLiNER's prepare_word_mask, bi-encoder (no prompt)
      words_mask.append(0 if wid is None or wid == prev else wid + 1)
      prev = wid
    full = {w for w in tokenizer(words, is_split_into_words=True, verbose=False).word_ids()
            if w is not None}
    cut = sorted(full - {w for w in enc.word_ids() if w is not None})
    kept = len(words) if keep_cut_words or not cut else cut[0]
    counts = torch.zeros(len(entities), kept)
    for e, spans in enumerate(entities):
      for start, end in spans:
        counts[e, start:min(end + 1, kept)] += 1
    ids = torch.as_tensor(enc["input_ids"])
    with torch.no_grad():
      labels = self.encode_labels(torch.as_tensor(label_input_ids).long(),
                                  torch.as_tensor(label_attention_mask).long())
      tokens, att = self.encode_document(ids)
      word_vecs, word_att = self.word_features(tokens, att, torch.as_tensor(words_mask), kept)
      logits = self.relation_reps(word_vecs, word_att, counts) @ labels.T
    return logits, counts.sum(1) > 0

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

"""The directory layout of the official PyTorch GLiDRE (robinarmingaud/glidre).

Its `GLiDRE.save_pretrained` writes the state dict of the inner relation model
(keys without a `model.` prefix, spec §5), `glidre_config.json` (its
`GLiDREConfig`) and the text tokenizer's files. Its `from_pretrained` reads
`model.safetensors` if present, else `pytorch_model.bin`, both through
`torch.load(weights_only=True)`; it rebuilds both encoders with
`AutoConfig.from_pretrained(model_name / labels_encoder)` and loads the label
tokenizer from `labels_encoder`. The weights are then loaded non-strictly, so
a key the official model does not know would be skipped silently: exports
must therefore match its layout exactly.

Beyond the official files, exports carry `text_encoder/` and
`labels_encoder/` (config.json + tokenizer), so that the directory works
offline, for the official loader (their absolute paths are written as
`model_name` / `labels_encoder`) and for our importer.

Pure Python + numpy (torch / safetensors imported when writing): shared by the
JAX converters and the PyTorch oracle.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping

import numpy as np

from glidre_jax import hub

CONFIG_FILE = hub.OFFICIAL_CONFIG
SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
HF_CONFIG = "config.json"

# Files a HF tokenizer may consist of (BERT, DeBERTa-v2/v3, BPE tokenizers).
TOKENIZER_FILES = hub.TOKENIZER_FILES

# role -> (subfolder we write, official name field, official embedded config field)
ROLES = {
    "text": ("text_encoder", "model_name", "encoder_config"),
    "labels": ("labels_encoder", "labels_encoder", "labels_encoder_config"),
}

# Our GLiDREConfig field -> official GLiDREConfig field, for what both model.
HEAD_FIELDS = {"hidden_size": "hidden_size", "dropout": "dropout", "pooling": "pooling",
               "lop": "atlop"}

# The remaining official fields, as the reference's fine-tuning config sets them
# (has_rnn is off: the relation model never calls that LSTM, and an official
# model built with it would expect its weights).
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "model_type": "glidre", "name": "glidre", "max_width": 12, "fine_tune": True,
    "subtoken_pooling": "first", "span_mode": "markerV0", "post_fusion_schema": "",
    "num_post_fusion_layers": 1, "vocab_size": -1, "max_neg_type_ratio": 1, "max_types": 100,
    "max_len": 512, "words_splitter_type": "whitespace", "has_rnn": False,
    "fuse_layers": False, "embed_ent_token": True, "class_token_index": -1,
    "ent_token": "<<ENT>>", "sep_token": "<<SEP>>", "alpha": 0.8, "loss": "", "gamma": 3,
    "reduction": "sum", "self_rel": True, "weights": None, "cross_attention": False,
}

# Official options whose other values change the architecture: we support
# exactly these values (an absent field means the official default).
SUPPORTED_OPTIONS = {"span_mode": "markerV0", "post_fusion_schema": "", "fuse_layers": False,
                     "cross_attention": False, "subtoken_pooling": "first"}
# Official losses that build its `threshold_layer` (our model.adaptive_threshold;
# exports write the first).
THRESHOLD_LOSSES = ("atloss", "afloss")


class UnsupportedCheckpointError(ValueError):
  """A GLiDRE variant that this project does not implement."""


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{directory}: no {CONFIG_FILE} (not a GLiDRE directory)")
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    value, problem = None, f"invalid JSON ({e})"
  else:
    problem = None if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"
  if problem:
    raise ValueError(f"{path}: {problem}; the GLiDRE config is damaged or was cut short. "
                     "Copy the directory again, or rewrite it with the official "
                     "save_pretrained / python -m converters.export_official") from None
  return value


def check_supported(official: Mapping[str, Any], source: str) -> None:
  """Raises UnsupportedCheckpointError naming every option we cannot honour."""
  problems = [f"{k}={official[k]!r} (supported: {v!r})"
              for k, v in SUPPORTED_OPTIONS.items() if k in official and official[k] != v]
  if not official.get("labels_encoder"):
    problems.append("labels_encoder is empty (uni-encoder GLiNER; only the bi-encoder "
                    "GLiDRE is supported)")
  if problems:
    raise UnsupportedCheckpointError(f"{source}: unsupported GLiDRE options: "
                                     + "; ".join(problems))


def head_fields(official: Mapping[str, Any]) -> dict[str, Any]:
  """Our GLiDREConfig fields from an official config (absent -> ours default)."""
  fields = {ours: official[theirs] for ours, theirs in HEAD_FIELDS.items() if theirs in official}
  # The official model has a threshold_layer exactly when its loss is one of these.
  fields["adaptive_threshold"] = official.get("loss") in THRESHOLD_LOSSES
  return fields


def official_config(head: Mapping[str, Any], text_name: str, label_name: str,
                    text_hf: Mapping[str, Any], label_hf: Mapping[str, Any],
                    **overrides) -> dict[str, Any]:
  """A full official `glidre_config.json` from our head fields and encoders."""
  cfg = dict(OFFICIAL_DEFAULTS)
  cfg.update({theirs: head[ours] for ours, theirs in HEAD_FIELDS.items()})
  if head.get("adaptive_threshold"):  # the official model then builds its threshold_layer
    cfg["loss"] = THRESHOLD_LOSSES[0]
  cfg.update(model_name=text_name, labels_encoder=label_name,
             encoder_config=dict(text_hf), labels_encoder_config=dict(label_hf))
  unknown = set(overrides) - set(cfg)
  if unknown:
    raise ValueError(f"unknown official GLiDRE config fields: {sorted(unknown)}")
  cfg.update(overrides)
  return cfg


def write_config(directory: pathlib.Path, cfg: Mapping[str, Any]) -> None:
  (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def copy_tokenizer(src: str | os.PathLike, dst: pathlib.Path) -> list[str]:
  """Copies the tokenizer files of a HF model directory; returns their names."""
  src = pathlib.Path(src)
  names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
  if not any(n in names for n in ("tokenizer.json", "tokenizer_config.json")):
    raise FileNotFoundError(f"{src}: no tokenizer.json / tokenizer_config.json to copy")
  dst.mkdir(parents=True, exist_ok=True)
  for n in names:
    shutil.copyfile(src / n, dst / n)
  return names


def write_encoder_folder(src: str | os.PathLike, dst: pathlib.Path) -> None:
  """`dst/config.json` and tokenizer files from a HF model directory `src`."""
  src = pathlib.Path(src)
  if not (src / HF_CONFIG).is_file():
    raise FileNotFoundError(f"{src}: no {HF_CONFIG} for the encoder")
  dst.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(src / HF_CONFIG, dst / HF_CONFIG)
  copy_tokenizer(src, dst)


def _float32(value) -> np.ndarray:
  array = np.asarray(value)
  # bf16/fp16 params go out as fp32: what the official model is built in.
  return np.ascontiguousarray(array.astype(np.float32) if array.dtype.kind == "f"
                              or "bfloat16" in str(array.dtype) else array)


def write_weights(directory: pathlib.Path, state: Mapping[str, Any], *,
                  torch_bin: bool = True, safetensors: bool = True) -> list[str]:
  """Writes `pytorch_model.bin` (a plain dict of tensors) and/or
  `model.safetensors`; stale files of the other format are removed so that a
  loader never picks up old weights. Returns the names written."""
  arrays = {k: _float32(v) for k, v in state.items()}
  written = []
  if torch_bin:
    import torch
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, directory / TORCH_BIN)
    written.append(TORCH_BIN)
  if safetensors:
    from safetensors.numpy import save_file
    # transformers refuses safetensors files without format metadata.
    save_file(arrays, str(directory / SAFETENSORS), metadata={"format": "pt"})
    written.append(SAFETENSORS)
  for name in (TORCH_BIN, SAFETENSORS):
    if name not in written and (directory / name).exists():
      (directory / name).unlink()
  return written


def strip_wrapper_prefix(state: Mapping[str, Any], prefix: str = "model.") -> dict[str, Any]:
  """Drops the `model.` prefix of a state dict saved from the outer GLiDRE."""
  if state and all(k.startswith(prefix) for k in state):
    return {k[len(prefix):]: v for k, v in state.items()}
  return dict(state)


def encoder_config(directory: str | os.PathLike, official: Mapping[str, Any], role: str,
                   override: str | os.PathLike | None = None
                   ) -> tuple[dict[str, Any], pathlib.Path | None]:
  """The HF config dict of the `role` ('text' / 'labels') encoder of a GLiDRE
  directory, and a local directory holding it (None if only embedded).

  Tried in order: `override`; our `text_encoder/` / `labels_encoder/`
  subfolder; the official name field when it is a local directory; the
  encoder config that the official `save_pretrained` embeds in
  `glidre_config.json`.
  """
  sub, name_field, embedded_field = ROLES[role]
  if override is not None:
    candidates = [pathlib.Path(override)]
  else:
    candidates = [pathlib.Path(directory) / sub]
    if official.get(name_field):
      candidates.append(pathlib.Path(str(official[name_field])).expanduser())
  for path in candidates:
    if (path / HF_CONFIG).is_file():
      return json.loads((path / HF_CONFIG).read_text()), path
  if override is not None:
    raise FileNotFoundError(f"{role} encoder directory {override}: no {HF_CONFIG}")
  embedded = official.get(embedded_field)
  if isinstance(embedded, dict) and embedded.get("model_type"):
    return dict(embedded), None
  raise FileNotFoundError(
      f"{directory}: cannot find the {role} encoder's config (tried "
      f"{', '.join(str(p) for p in candidates)} and {embedded_field} in {CONFIG_FILE}); "
      f"pass --{'text' if role == 'text' else 'label'}_encoder_dir with a local HF model "
      "directory")

"""Export a glidre-jax GLiDRE to a directory the official PyTorch GLiDRE loads.

    python -m converters.export_official --workdir runs/default --out glidre_pt \
        [--which best] [--text_encoder_name microsoft/deberta-v3-large] \
        [--label_encoder_name BAAI/bge-large-en-v1.5] [--no_safetensors]

then, in PyTorch: `from glidre import GLiDRE; GLiDRE.from_pretrained("glidre_pt")`.

Writes glidre_config.json, pytorch_model.bin (a plain dict of tensors) and
model.safetensors with the official keys (spec §5), the text tokenizer's files,
and text_encoder/ + labels_encoder/ (config.json + tokenizer). The official
loader opens model.safetensors with `torch.load`, which only recent torch
versions can do: pass --no_safetensors for an older torch.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
from absl import flags
from flax import nnx

from . import official
from glidre_jax import cli, encoders, keymap, run_dir, weights
from glidre_jax.data.tokenize import resolve_encoder_dir
from glidre_jax.model.glidre import GLiDREModel
from glidre_jax.model import params as glidre_params

# Encoder config fields that only affect training, not the weights' layout.
_TRAINING_ONLY = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# Unused encoder tensors copied from the source checkpoint into exports.
_CARRIED = ("pooler.",)


def check_encoder_dir(encoder, encoder_dir: str | os.PathLike, role: str) -> dict:
  """The HF config of `encoder_dir`, checked against the encoder's own config."""
  hf = encoders.common.read_hf_config(encoder_dir)
  theirs = encoders.config_from_hf(hf)
  ours = encoder.config
  differ = [f"{f.name}: {getattr(theirs, f.name)!r} != {getattr(ours, f.name)!r}"
            for f in dataclasses.fields(ours) if f.name not in _TRAINING_ONLY
            and getattr(theirs, f.name, None) != getattr(ours, f.name)]
  if differ:
    raise ValueError(f"{role} encoder directory {encoder_dir} does not describe the "
                     f"model's {role} encoder: " + "; ".join(differ))
  return hf


def extra_encoder_tensors(encoder_dir: str | os.PathLike, model_type: str) -> dict:
  """Tensors of the source checkpoint that GLiDRE never uses but HF models
  carry (the BERT pooler), so that loaders find no missing weights."""
  prefixes = encoders.encoder_family(model_type).torch_prefixes
  bare = lambda k: next((k[len(p):] for p in prefixes if k.startswith(p)), k)
  path = pathlib.Path(encoder_dir) / official.SAFETENSORS
  if path.exists():  # read just those tensors
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
      return {bare(k): f.get_tensor(k) for k in f.keys() if bare(k).startswith(_CARRIED)}
  try:
    state = weights.read_state_dict(encoder_dir)
  except weights.CheckpointError:
    return {}  # a config-only directory: nothing to carry over
  return {bare(k): v for k, v in state.items() if bare(k).startswith(_CARRIED)}


def glidre_state_dict(model: GLiDREModel) -> dict[str, np.ndarray]:
  """Our parameters under the official torch keys (torch layouts)."""
  text, label = glidre_params.encoder_modules(model)
  table = glidre_params.key_table(text.config.model_type, label.config.model_type)
  flat = {k: np.asarray(v) for k, v in weights.flat_params(model).items()}
  return keymap.convert_to_torch(table, flat)


def export_glidre(model: GLiDREModel, out_dir: str | os.PathLike,
                  text_encoder_dir: str | os.PathLike, label_encoder_dir: str | os.PathLike,
                  *, text_encoder_name: str | None = None, label_encoder_name: str | None = None,
                  safetensors: bool = True, **official_fields) -> pathlib.Path:
  """Writes `model` as an official GLiDRE directory; returns its path.

  `*_encoder_dir` are the local HF directories the encoders came from (their
  config.json and tokenizer are copied). `*_encoder_name` become the official
  `model_name` / `labels_encoder` (e.g. Hub ids, for a relocatable directory);
  by default the absolute paths of the copied encoder folders.
  `official_fields` override other glidre_config.json fields (e.g. max_len).
  """
  cfg = model.config
  out = pathlib.Path(out_dir).absolute()
  out.mkdir(parents=True, exist_ok=True)
  text, label = glidre_params.encoder_modules(model)
  state = glidre_state_dict(model)
  hf = {}
  for role, encoder, src, prefix in (
      ("text", text, text_encoder_dir, glidre_params.TEXT_ENCODER),
      ("labels", label, label_encoder_dir, glidre_params.LABEL_ENCODER)):
    hf[role] = check_encoder_dir(encoder, src, role)
    official.write_encoder_folder(src, out / official.ROLES[role][0])
    extra = extra_encoder_tensors(src, encoder.config.model_type)
    state.update({prefix + k: v for k, v in extra.items()})
  # The official loader reads the text tokenizer from the directory itself.
  official.copy_tokenizer(text_encoder_dir, out)
  names = {role: name or str(out / official.ROLES[role][0]) for role, name in
           (("text", text_encoder_name), ("labels", label_encoder_name))}
  official.write_config(out, official.official_config(
      dataclasses.asdict(cfg), names["text"], names["labels"], hf["text"], hf["labels"],
      **official_fields))
  official.write_weights(out, state, safetensors=safetensors)
  return out


def load_run_model(workdir: str | os.PathLike, which: str = "best"):
  """(GLiDRE, text encoder dir, label encoder dir) of a `glidre_jax.train` run."""
  config, graphdef, params, rest = run_dir.restore_weights(workdir, which)
  return (nnx.merge(graphdef, params, rest),
          resolve_encoder_dir(config.text_encoder),
          resolve_encoder_dir(config.label_encoder))


def define_run_flags(flag_values: flags.FlagValues) -> None:
  """The flags of an export from a run: --workdir (or --checkpoint), --which, --out."""
  flags.DEFINE_string("workdir", None, "a glidre_jax.train run directory",
                      flag_values=flag_values)
  flags.DEFINE_alias("checkpoint", "workdir", flag_values=flag_values)  # as in the other tools
  cli.define_which(flag_values)
  flags.DEFINE_string("out", None, "output directory", flag_values=flag_values)
  flags.mark_flags_as_required(["workdir", "out"], flag_values=flag_values)


FLAGS = flags.FlagValues()  # this tool's own (see glidre_jax.cli)
define_run_flags(FLAGS)
flags.DEFINE_string("text_encoder_name", None, "official model_name (e.g. a Hub id); "
                    "default: the copied folder", flag_values=FLAGS)
flags.DEFINE_string("label_encoder_name", None, "official labels_encoder; default: the copied "
                    "folder", flag_values=FLAGS)
flags.DEFINE_bool("no_safetensors", False, "write pytorch_model.bin only (for a torch whose "
                  "torch.load cannot read model.safetensors)", flag_values=FLAGS)


def main(argv=None) -> None:
  cli.parse(FLAGS, argv, __doc__)
  args = FLAGS
  model, text_dir, label_dir = load_run_model(args.workdir, args.which)
  out = export_glidre(model, args.out, text_dir, label_dir,
                      text_encoder_name=args.text_encoder_name,
                      label_encoder_name=args.label_encoder_name,
                      safetensors=not args.no_safetensors)
  print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))


if __name__ == "__main__":
  main()

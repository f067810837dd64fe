"""Import an official PyTorch GLiDRE directory into glidre-jax.

    python -m converters.import_official --src glidre_pt --workdir runs/imported \
        [--text_encoder_dir DIR] [--label_encoder_dir DIR]
    glidre-import --src cea-list-ia/glidre_large --workdir runs/glidre_large   # a Hub id

--src and the encoder directories may be Hub ids ('org/name[@revision]',
read through the HF cache; see glidre_jax.hub).

writes a run directory (config.json + the 'best' orbax checkpoint) that
`python -m glidre_jax.evaluate --workdir runs/imported` scores. In Python,
`import_glidre(dir)` returns the GLiDRE module.

Weights: model.safetensors if present, else pytorch_model.bin through
`torch.load(weights_only=True)` (never unpickling code). The model config
comes from glidre_config.json and the encoders' config.json, found in
--*_encoder_dir, in our exports' text_encoder/ / labels_encoder/ folders,
at the official model_name / labels_encoder path, or embedded in
glidre_config.json by the official save_pretrained (see `official.encoder_config`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax.numpy as jnp
from absl import flags
from flax import nnx

from . import official
from glidre_jax import checkpointing, cli, encoders, hub, keymap, run_dir, shipped, weights
from glidre_jax.model import params as glidre_params
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import GLiDREModel, build_glidre


@dataclasses.dataclass(frozen=True)
class OfficialModel:
  """What a GLiDRE directory describes, before any weight is read."""
  directory: pathlib.Path
  official: dict[str, Any]  # glidre_config.json
  config: GLiDREConfig
  text_hf: dict[str, Any]  # HF config.json of each encoder
  label_hf: dict[str, Any]
  text_dir: pathlib.Path | None  # local encoder directories, when found
  label_dir: pathlib.Path | None


def describe(directory: str | os.PathLike, *, text_encoder_dir=None, label_encoder_dir=None,
             label_max_length: int = 16) -> OfficialModel:
  directory = hub.model_dir(str(directory))
  text_encoder_dir, label_encoder_dir = (
      None if d is None else hub.encoder_dir(str(d), weights=False)
      for d in (text_encoder_dir, label_encoder_dir))
  off = official.read_config(directory)
  official.check_supported(off, str(directory))
  config = GLiDREConfig(**official.head_fields(off), label_max_length=label_max_length)
  text_hf, text_dir = official.encoder_config(directory, off, "text", text_encoder_dir)
  label_hf, label_dir = official.encoder_config(directory, off, "labels", label_encoder_dir)
  return OfficialModel(directory, off, config, text_hf, label_hf, text_dir, label_dir)


def _drop_unused(state: dict, prefix: str, encoder_config) -> dict:
  """Applies the encoder family's own filter to the tensors under `prefix`."""
  family = encoders.encoder_family(encoder_config.model_type)
  inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  kept = family.drop_unused(encoder_config, inner)
  return {k: v for k, v in state.items() if not k.startswith(prefix)} | {
      prefix + k: v for k, v in kept.items()}


def import_glidre(directory: str | os.PathLike, *, text_encoder_dir=None,
                  label_encoder_dir=None, dtype=jnp.float32, label_max_length: int = 16,
                  seed: int = 0) -> GLiDREModel:
  """An official GLiDRE directory as our GLiDRE module (fp32 parameters).

  Raises `official.UnsupportedCheckpointError` for GLiDRE variants we do not
  implement, ValueError for an unsupported encoder model_type,
  `weights.CheckpointError` for an unreadable file or a pickle that is not a
  plain state dict, and `keymap.CheckpointMismatchError` listing every
  unmapped key, missing parameter and shape mismatch.
  """
  return _import(describe(directory, text_encoder_dir=text_encoder_dir,
                          label_encoder_dir=label_encoder_dir,
                          label_max_length=label_max_length), dtype, seed)


def _import(desc: OfficialModel, dtype, seed: int) -> GLiDREModel:
  text_cfg = encoders.config_from_hf(desc.text_hf)
  label_cfg = encoders.config_from_hf(desc.label_hf)
  make = lambda: build_glidre(desc.config, text_cfg, label_cfg, dtype=dtype, seed=seed)
  expected = weights.param_shapes(nnx.eval_shape(make))
  state = official.strip_wrapper_prefix(weights.read_state_dict(desc.directory))
  state = _drop_unused(state, glidre_params.TEXT_ENCODER, text_cfg)
  state = _drop_unused(state, glidre_params.LABEL_ENCODER, label_cfg)
  table = glidre_params.key_table(text_cfg.model_type, label_cfg.model_type)
  flat = keymap.convert_to_ours(table, state, expected, source=str(desc.directory))
  return weights.build_from_flat(make, flat, seed=seed)


def _run_encoder_dir(desc: OfficialModel, role: str, workdir: pathlib.Path) -> str:
  """The run config's encoder: a local directory (config.json + tokenizer),
  or the Hub id the official config names."""
  found = desc.text_dir if role == "text" else desc.label_dir
  if found is not None:
    return str(found.absolute())
  if role == "text" and (desc.directory / "tokenizer_config.json").exists():
    # Official directories carry the text tokenizer at their top level.
    out = workdir / official.ROLES["text"][0]
    out.mkdir(parents=True, exist_ok=True)
    (out / official.HF_CONFIG).write_text(json.dumps(desc.text_hf, indent=2))
    official.copy_tokenizer(desc.directory, out)
    return str(out.absolute())
  name = desc.official.get(official.ROLES[role][1])
  if hub.parse_hub_id(name) and not hub.is_local(name):
    hub.encoder_dir(name, weights=False)  # config + tokenizer cached now, or a clear error
    return name
  flag = "--text_encoder_dir" if role == "text" else "--label_encoder_dir"
  raise FileNotFoundError(f"{desc.directory}: no local {role} encoder directory with a "
                          f"tokenizer for the run config; pass {flag}")


def save_as_run(model: GLiDREModel, desc: OfficialModel, workdir: str | os.PathLike,
                seed: int = 0) -> pathlib.Path:
  """A run directory (default config + this model) with the model as 'best'."""
  default = shipped.config_module("default")
  workdir = pathlib.Path(workdir).absolute()
  config = default.get_config()
  config.workdir = str(workdir)
  config.seed = seed
  config.text_encoder = _run_encoder_dir(desc, "text", workdir)
  config.label_encoder = _run_encoder_dir(desc, "labels", workdir)
  config.model.update(dataclasses.asdict(model.config))
  if model.config.adaptive_threshold:  # the loss that trains the threshold_layer
    config.train.loss = "adaptive_threshold"
  run_dir.save_config(config, workdir)
  params = nnx.as_pure(nnx.split(model, nnx.Param, ...)[1])
  checkpoints = checkpointing.RunCheckpoints(workdir, save_every=1)
  try:
    checkpoints.save_best(0, params, {"imported_from": str(desc.directory.absolute())})
    checkpoints.wait()
  finally:
    checkpoints.close()
  return workdir


FLAGS = flags.FlagValues()  # this tool's own (see glidre_jax.cli)
flags.DEFINE_string("src", None, "official GLiDRE directory or Hub id", flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "run directory to write", flag_values=FLAGS)
flags.mark_flags_as_required(["src", "workdir"], flag_values=FLAGS)
flags.DEFINE_string("text_encoder_dir", None, "local HF directory of the text encoder (config + "
                    "tokenizer)", flag_values=FLAGS)
flags.DEFINE_string("label_encoder_dir", None, "local HF directory of the label encoder (config "
                    "+ tokenizer)", flag_values=FLAGS)
flags.DEFINE_integer("label_max_length", 16, "subwords of a relation name for the label encoder",
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "PRNG seed of the model build (and the run config)",
                     flag_values=FLAGS)


def main(argv=None) -> None:
  cli.parse(FLAGS, argv, __doc__)
  args = FLAGS
  desc = describe(args.src, text_encoder_dir=args.text_encoder_dir,
                  label_encoder_dir=args.label_encoder_dir,
                  label_max_length=args.label_max_length)
  model = _import(desc, jnp.float32, args.seed)
  out = save_as_run(model, desc, args.workdir, seed=args.seed)
  n = sum(int(v.size) for v in weights.flat_params(model).values())
  print(f"imported {n:,} parameters from {args.src} into {out}")


if __name__ == "__main__":
  main()

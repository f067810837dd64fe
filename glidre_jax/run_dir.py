"""A run directory: its saved config, the model it describes, and its weights.

`glidre_jax.train` writes `config.json` when a run starts; everything else
(evaluation, prediction, export) rebuilds the run from it. Restoring weights
needs no optimizer: only the parameters are read from a checkpoint.
"""
from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import ml_collections
from flax import nnx

from glidre_jax import checkpointing, encoders, weights
from glidre_jax.data.tokenize import resolve_encoder_dir
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import GLiDREModel

CONFIG_FILE = "config.json"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Top-level fields every run config has (configs/default.py).
_RUN_CONFIG_FIELDS = ("text_encoder", "label_encoder", "model", "data", "train")


def compute_dtype(config) -> jnp.dtype:
  if config.compute_dtype not in DTYPES:
    raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, "
                     f"got {config.compute_dtype!r}")
  return DTYPES[config.compute_dtype]


def model_config(config) -> GLiDREConfig:
  return GLiDREConfig(**config.model.to_dict())


def build_model(config, *, pretrained_encoders: bool = True) -> GLiDREModel:
  """The network with encoders from their HF checkpoints (or random, same shapes)."""
  dtype = compute_dtype(config)
  overrides = {}
  if config.encoder_attention_dropout is not None:
    overrides["attention_probs_dropout_prob"] = config.encoder_attention_dropout
  parts = []
  for offset, name in enumerate((config.text_encoder, config.label_encoder)):
    path = resolve_encoder_dir(name, weights=pretrained_encoders)
    if pretrained_encoders:
      parts.append(encoders.load_encoder(path, dtype=dtype, seed=config.seed + offset,
                                         **overrides))
    else:
      hf = encoders.common.read_hf_config(path)
      parts.append(encoders.new_encoder(encoders.config_from_hf(hf, **overrides),
                                        dtype=dtype, seed=config.seed + offset))
  return GLiDREModel(model_config(config), *parts, dtype=dtype, rngs=nnx.Rngs(config.seed))


def abstract_model(config) -> GLiDREModel:
  """Shapes only (nothing allocated): the restore target of checkpoints."""
  return nnx.eval_shape(lambda: build_model(config, pretrained_encoders=False))


def save_config(config, workdir: pathlib.Path) -> None:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # Written whole or not at all: a run killed here keeps its previous config.json.
  tmp = workdir / (CONFIG_FILE + ".tmp")
  tmp.write_text(config.to_json_best_effort(indent=2))
  tmp.replace(workdir / CONFIG_FILE)


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{workdir}: no config.json (not a glidre_jax.train run directory)")
  fix = ("glidre_jax.train writes it when a run starts: rerun the training command with the "
         "same --config and --workdir (it resumes from the checkpoints), or restore the file "
         "from a copy")
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: the run's config is not valid JSON ({e}); the file is damaged "
                     f"or was cut short. {fix}.") from None
  missing = [k for k in _RUN_CONFIG_FIELDS if not isinstance(value, dict) or k not in value]
  if missing:
    raise ValueError(f"{path}: not a glidre_jax.train run config (missing "
                     f"{', '.join(missing)}). {fix}.")
  return ml_collections.ConfigDict(value)


def restore_weights(workdir, which: str = "best", config=None):
  """(config, eval graphdef, params, rest) of a run directory, without its
  data and without an optimizer."""
  workdir = pathlib.Path(workdir)
  config = load_config(workdir) if config is None else config
  model = abstract_model(config)
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  checkpoints = checkpointing.RunCheckpoints(workdir, save_every=1)
  try:
    params = checkpoints.restore_params(which, nnx.as_pure(params))
  finally:
    checkpoints.close()
  return config, graphdef, params, weights.materialize(nnx.as_pure(rest), config.seed)

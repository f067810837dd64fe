"""Picks the encoder family from a HF `model_type` and loads checkpoints."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

from glidre_jax import hub, keymap, weights
from glidre_jax.encoders import common
from glidre_jax.encoders.bert import modeling as bert_modeling
from glidre_jax.encoders.bert import params as bert_params


@dataclasses.dataclass(frozen=True)
class EncoderFamily:
  config_cls: type
  model_cls: type
  key_table: keymap.KeyTable
  # Prefixes that task-head checkpoints (BertForX, DebertaV2ForX) put on keys.
  torch_prefixes: tuple[str, ...]
  # config, state -> state without tensors this config never reads.
  drop_unused: Callable[[Any, dict], dict] = lambda config, state: state


ENCODER_FAMILIES: dict[str, EncoderFamily] = {
    "bert": EncoderFamily(bert_modeling.BertConfig, bert_modeling.BertModel,
                          bert_params.KEY_TABLE, ("bert.",)),
}


def _register_deberta() -> None:
  from glidre_jax.encoders.deberta import modeling, params
  family = EncoderFamily(modeling.DebertaV2Config, modeling.DebertaV2Model,
                         params.KEY_TABLE, ("deberta.",), params.drop_unused)
  ENCODER_FAMILIES["deberta-v2"] = family
  ENCODER_FAMILIES["deberta-v3"] = family


_register_deberta()


def encoder_family(model_type: str) -> EncoderFamily:
  if model_type not in ENCODER_FAMILIES:
    raise ValueError(f"unsupported encoder model_type {model_type!r}; "
                     f"supported: {sorted(ENCODER_FAMILIES)}")
  return ENCODER_FAMILIES[model_type]


def config_from_hf(hf: dict[str, Any], **overrides):
  family = encoder_family(hf.get("model_type", ""))
  return family.config_cls.from_hf(hf, **overrides)


def new_encoder(config, *, dtype=jnp.float32, seed: int = 0) -> nnx.Module:
  """A randomly initialised encoder of the config's family."""
  family = encoder_family(config.model_type)
  return family.model_cls(config, dtype=dtype, rngs=nnx.Rngs(seed))


def _strip_prefix(state: dict, family: EncoderFamily) -> dict:
  for prefix in family.torch_prefixes:
    if any(k.startswith(prefix) for k in state):
      return {k.removeprefix(prefix): v for k, v in state.items()}
  return state


def load_encoder(path: str | os.PathLike, *, dtype=jnp.float32, seed: int = 0,
                 **config_overrides) -> nnx.Module:
  """Loads a HF BERT / DeBERTa-v2/v3 model directory (config.json + weights),
  or a Hub id ('org/name[@revision]', through the HF cache: `glidre_jax.hub`).

  Raises `keymap.CheckpointMismatchError` listing unmapped, missing and
  mis-shaped keys; `weights.CheckpointError` for unreadable files.
  """
  if not hub.is_local(path) and hub.parse_hub_id(str(path)):
    path = hub.encoder_dir(str(path))
  hf = common.read_hf_config(path)
  config = config_from_hf(hf, **config_overrides)
  family = encoder_family(config.model_type)
  make = lambda: family.model_cls(config, dtype=dtype, rngs=nnx.Rngs(seed))
  state = family.drop_unused(config, _strip_prefix(weights.read_state_dict(path), family))
  expected = weights.param_shapes(nnx.eval_shape(make))
  flat = keymap.convert_to_ours(family.key_table, state, expected, source=str(path))
  return weights.build_from_flat(make, flat, seed=seed)

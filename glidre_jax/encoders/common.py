"""Pieces every encoder shares: output type, activations, masks, dropout."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass
class EncoderOutput:
  last_hidden_state: jax.Array  # [B, L, d]
  attentions: jax.Array  # last layer only: [B, heads, L, L], fp32


jax.tree_util.register_dataclass(
    EncoderOutput, data_fields=["last_hidden_state", "attentions"],
    meta_fields=[])

class EncoderModel(nnx.Module):
  """Embeddings, then the layer stack: the last hidden states and the last
  layer's attention probs. Each family names its `embeddings_cls` and
  `encoder_cls` and defines `embed(input_ids, attention_mask,
  token_type_ids)` (what its embeddings read)."""

  def __init__(self, cfg, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.config = cfg
    self.embeddings = self.embeddings_cls(cfg, dtype=dtype, rngs=rngs)
    self.encoder = self.encoder_cls(cfg, dtype=dtype, rngs=rngs)

  @property
  def hidden_size(self) -> int:
    return self.config.hidden_size

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None) -> EncoderOutput:
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.embed(input_ids, attention_mask, token_type_ids)
    x, probs = self.encoder(x, attention_mask)
    return EncoderOutput(last_hidden_state=x, attentions=probs)


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"hidden_act {name!r} is not supported; "
                     f"choose one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def masked_softmax(scores: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Softmax over the last axis in fp32, keys masked by attention_mask [B, L]."""
  scores = scores.astype(jnp.float32)
  keep = attention_mask[:, None, None, :].astype(bool)
  scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1)


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a HF `config.json` from a model directory or the file itself."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / "config.json"
  try:
    return json.loads(path.read_text())
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{path}: no config.json for the encoder") from e
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON ({e})") from e


def config_from_dict(cls, hf: dict[str, Any], **overrides):
  """Builds a frozen config dataclass from the HF fields it knows."""
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {k: v for k, v in hf.items() if k in names}
  kwargs.update(overrides)
  return cls(**kwargs)


class Dropout(nnx.Dropout):
  """nnx.Dropout that is a no-op (and needs no rng) when rate == 0."""

  def __call__(self, x, **kwargs):
    if self.rate == 0:
      return x
    return super().__call__(x, **kwargs)


class Intermediate(nnx.Module):
  """dense -> activation: HF's BertIntermediate / DebertaV2Intermediate.

  `cfg` is any encoder config with hidden_size, intermediate_size, hidden_act.
  """

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
    self.dense = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, rngs=rngs)
    self.act = activation(cfg.hidden_act)

  def __call__(self, x):
    return self.act(self.dense(x))


class ResidualOutput(nnx.Module):
  """dense -> dropout -> residual LayerNorm: HF's *SelfOutput and *Output.

  `cfg` is any encoder config with hidden_size, layer_norm_eps,
  hidden_dropout_prob.
  """

  def __init__(self, d_in: int, cfg, *, dtype, rngs: nnx.Rngs):
    self.dense = nnx.Linear(d_in, cfg.hidden_size, dtype=dtype, rngs=rngs)
    self.LayerNorm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps,
                                   dtype=dtype, rngs=rngs)
    self.dropout = Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, x, residual):
    return self.LayerNorm(self.dropout(self.dense(x)) + residual)

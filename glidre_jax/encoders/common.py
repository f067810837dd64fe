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
  # Under grad, XLA kept the exact GELU's erf and exp intermediates for the
  # backward: ~4 more [tokens, intermediate] arrays a layer (same-work step:
  # temporaries 697 -> 584 MB, peak RSS 3.26-3.30 -> 3.12 GB). Checkpointed,
  # its input alone is kept and the rest recomputed (elementwise). Nothing
  # changes outside differentiation.
  return jax.checkpoint(ACTIVATIONS[name])


# Attention runs heads first ([B, H, L, d]): two plain batched matmuls. As
# einsums over [B, L, H, d], XLA:CPU gave the context a transposed layout that
# ran at 6 GFLOP/s at batch 8 (the batch-8 predict step 1.47-1.87 -> 1.31-1.52 s).
def attention_scores(q: jax.Array, k: jax.Array) -> jax.Array:
  """Unscaled q · kᵀ per head [B, H, Lq, Lk] of q [B, Lq, H, d], k [B, Lk, H, d]."""
  return jnp.swapaxes(q, 1, 2) @ jnp.transpose(k, (0, 2, 3, 1))


def attention_context(probs: jax.Array, v: jax.Array) -> jax.Array:
  """probs [B, H, Lq, Lk] · v [B, Lk, H, d] -> [B, Lq, H·d]."""
  out = jnp.swapaxes(probs @ jnp.swapaxes(v, 1, 2), 1, 2)
  return out.reshape(out.shape[:2] + (-1,))


def masked_softmax(scores: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Softmax over the last axis in fp32, keys masked by attention_mask [B, L]."""
  scores = scores.astype(jnp.float32)
  keep = attention_mask[:, None, None, :].astype(bool)
  scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)
  return softmax(scores)


@jax.custom_jvp
def softmax(x: jax.Array) -> jax.Array:
  """Softmax over the last axis whose derivative reads its output alone.

  jax.nn.softmax (unless jax_softmax_custom_jvp is set) differentiates
  through exp and the division, so the backward kept the masked scores and
  their exponentials beside the probabilities: two more [B, H, L, L] arrays
  an attention layer."""
  unnormalized = jnp.exp(x - jax.lax.stop_gradient(x.max(axis=-1, keepdims=True)))
  return unnormalized / unnormalized.sum(axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  y = softmax(x)
  return y, y * (dx - (y * dx).sum(axis=-1, keepdims=True))


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


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: every input bit flips each output bit
  with probability ~1/2 (a bijection of uint32)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
  """Dropout's keep mask (True with probability 1 - rate, quantised to 2⁻³²)
  from a PRNG key: `keep_mask_from_seeds` with two seeds drawn from it."""
  return keep_mask_from_seeds(jax.random.bits(key, (2,), jnp.uint32), shape, rate)


def keep_mask_from_seeds(seed: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
  """Dropout's keep mask from two uint32 seeds.

  Counter-based: a hash of each element's flat index, keyed by the seeds.
  On XLA:CPU threefry costs ~25 ns an element (a [1736, 3072] mask took as
  long as a [1736, 768] × [768, 3072] matmul); the hash fuses into the
  consumer at ~1 ns. The index comes from broadcasted iotas, so a sharded
  array hashes the same indices as an unsharded one.
  """
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  if stride > 2**32:
    raise ValueError(f"dropout over {stride} elements: more than the 2^32 a mask indexes")
  # Golden-ratio spread, then two hash rounds, the second keyed too: two
  # keys whose first seeds align give unrelated masks, not shifted copies.
  h = _fmix32(_fmix32(index * jnp.uint32(0x9E3779B9) + seed[0]) ^ seed[1])
  return h >= jnp.uint32(min(round(rate * 2**32), 2**32 - 1))


def stream_seeds(stream: nnx.RngStream) -> jax.Array:
  """Two uint32 seeds for the next draw of an nnx rng stream (its count
  advances by one, as a draw of the stream does): its key's data and the
  count, hashed.

  The stream's own draw (fold_in) and the two seeds drawn from the key it
  returns each run threefry: on XLA:CPU ~16 small kernels a dropout layer,
  ~870 in the same-work train step, whose executable keeps ~60 KB a kernel
  for every batch shape it is compiled for. These are two fused scalar hashes.
  """
  data = jax.random.key_data(stream.key[...]).ravel().astype(jnp.uint32)
  count = stream.count[...].astype(jnp.uint32)
  stream.count[...] += 1
  h0 = _fmix32(count * jnp.uint32(0x9E3779B9) + jnp.uint32(0x7F4A7C15))
  h1 = _fmix32(h0 ^ jnp.uint32(0x85EBCA77))
  for i in range(data.shape[0]):  # every word of the key counts
    h0, h1 = _fmix32(h0 ^ data[i]), _fmix32(h1 + data[i] * jnp.uint32(0xC2B2AE3D))
  return jnp.stack([h0, _fmix32(h1 ^ h0)])


class Dropout(nnx.Dropout):
  """nnx.Dropout (same arguments and rng handling) with `keep_mask`'s
  counter-based mask; a no-op that needs no rng when rate == 0. A stream
  (its own, or nnx.Rngs / RngStream passed in) gives `stream_seeds`; a key
  passed in gives `keep_mask`."""

  def __call__(self, x, *, deterministic: bool | None = None, rngs=None):
    deterministic = self.deterministic if deterministic is None else deterministic
    if self.rate == 0 or deterministic:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    if self.broadcast_dims:
      raise NotImplementedError("Dropout with broadcast_dims")
    rngs = self.rngs if rngs is None else rngs
    if rngs is None:
      raise ValueError("Dropout is not deterministic but has no rngs")
    if isinstance(rngs, nnx.Rngs):
      rngs = rngs[self.rng_collection]
    if isinstance(rngs, nnx.RngStream):
      keep = keep_mask_from_seeds(stream_seeds(rngs), x.shape, self.rate)
    else:  # a key
      keep = keep_mask(rngs, x.shape, self.rate)
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


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

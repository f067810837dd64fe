"""DeBERTa-v2/v3 in Flax NNX, attribute names as in Hugging Face `DebertaV2Model`.

Disentangled attention: content->content scores plus content->position (c2p)
and position->content (p2c) terms read from a shared table of relative
position embeddings, optionally log-bucketed (v3: 256 buckets).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glidre_jax.encoders import common

_POS_ATT_TYPES = ("c2p", "p2c", "p2p")  # HF v2 ignores p2p (a DeBERTa-v1 term)


@dataclasses.dataclass(frozen=True)
class DebertaV2Config:
  """HF `DebertaV2Config` fields; defaults are HF's (so absent keys act alike)."""
  vocab_size: int = 128100
  hidden_size: int = 1536
  num_hidden_layers: int = 24
  num_attention_heads: int = 24
  intermediate_size: int = 6144
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 0
  layer_norm_eps: float = 1e-7
  relative_attention: bool = False
  max_relative_positions: int = -1  # < 1 means max_position_embeddings
  position_buckets: int = -1  # <= 0: no log bucketing
  pad_token_id: int | None = 0
  position_biased_input: bool = True
  # A list or HF's "p2c|c2p" string; stored as a tuple (hashable config).
  pos_att_type: tuple[str, ...] | str | None = ()
  share_att_key: bool = False
  norm_rel_ebd: str = "none"
  embedding_size: int | None = None  # None means hidden_size
  attention_head_size: int | None = None  # None means hidden // heads
  conv_kernel_size: int = 0  # > 0: v2 ConvLayer after the first layer
  conv_groups: int = 1
  conv_act: str = "tanh"
  model_type: str = "deberta-v2"

  def __post_init__(self):
    pos = self.pos_att_type
    if pos is None:
      pos = ()
    elif isinstance(pos, str):
      pos = pos.split("|")
    pos = tuple(p.strip().lower() for p in pos if p.strip())
    if unknown := [p for p in pos if p not in _POS_ATT_TYPES]:
      raise ValueError(f"pos_att_type entries {unknown} are not supported; "
                       f"use a combination of 'c2p' and 'p2c'")
    object.__setattr__(self, "pos_att_type", pos)
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.head_dim * self.num_attention_heads != self.hidden_size:
      # HF builds the attention output dense as hidden -> hidden, so it would
      # fail too; say so up front instead of with a shape error.
      raise ValueError(f"attention_head_size {self.attention_head_size} x "
                       f"{self.num_attention_heads} heads != hidden_size "
                       f"{self.hidden_size}")
    if self.conv_kernel_size > 0 and self.conv_kernel_size % 2 == 0:
      raise ValueError("conv_kernel_size must be odd (the output must keep the "
                       f"sequence length), got {self.conv_kernel_size}")

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> "DebertaV2Config":
    return common.config_from_dict(cls, hf, **overrides)

  @property
  def head_dim(self) -> int:
    return self.attention_head_size or self.hidden_size // self.num_attention_heads

  @property
  def embed_dim(self) -> int:
    return self.embedding_size or self.hidden_size

  @property
  def max_relative(self) -> int:
    if self.max_relative_positions < 1:
      return self.max_position_embeddings
    return self.max_relative_positions

  @property
  def att_span(self) -> int:
    """HF's pos_ebd_size: rel_embeddings has 2 * att_span rows."""
    return self.position_buckets if self.position_buckets > 0 else self.max_relative

  # Presets: the released checkpoints' config.json values.
  @classmethod
  def _v3(cls, **kwargs) -> "DebertaV2Config":
    shared = dict(hidden_size=768, num_attention_heads=12,
                  intermediate_size=3072, relative_attention=True,
                  position_buckets=256, norm_rel_ebd="layer_norm",
                  share_att_key=True, pos_att_type=("p2c", "c2p"),
                  max_relative_positions=-1, position_biased_input=False,
                  type_vocab_size=0, vocab_size=128100, layer_norm_eps=1e-7)
    return cls(**{**shared, **kwargs})

  @classmethod
  def deberta_v3_small(cls) -> "DebertaV2Config":
    return cls._v3(num_hidden_layers=6)

  @classmethod
  def deberta_v3_base(cls) -> "DebertaV2Config":
    return cls._v3(num_hidden_layers=12)

  @classmethod
  def deberta_v3_large(cls) -> "DebertaV2Config":
    return cls._v3(num_hidden_layers=24, hidden_size=1024,
                   num_attention_heads=16, intermediate_size=4096)

  @classmethod
  def deberta_v2_xlarge(cls) -> "DebertaV2Config":
    return cls(hidden_size=1536, num_hidden_layers=24, num_attention_heads=24,
               attention_head_size=64, intermediate_size=6144,
               relative_attention=True, position_buckets=256,
               norm_rel_ebd="layer_norm", share_att_key=True,
               pos_att_type=("p2c", "c2p"), conv_kernel_size=3, conv_act="gelu",
               max_relative_positions=-1, position_biased_input=False,
               type_vocab_size=0, vocab_size=128100, layer_norm_eps=1e-7)


def log_bucket_position(rel: np.ndarray, bucket_size: int,
                        max_position: int) -> np.ndarray:
  """HF `make_log_bucket_position`, in float32 as torch evaluates it.

  |rel| below bucket_size // 2 stays exact; larger distances share
  logarithmically wider buckets up to max_position.
  """
  mid = bucket_size // 2
  abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
  ratio = (abs_pos / mid).astype(np.float32)
  log_pos = np.ceil(np.log(ratio) / np.log(np.float32((max_position - 1) / mid))
                    * np.float32(mid - 1)) + mid
  return np.where(abs_pos <= mid, rel, log_pos * np.sign(rel)).astype(np.int32)


@functools.lru_cache(maxsize=64)
def _relative_table(length: int, buckets: int, max_position: int) -> np.ndarray:
  """(Bucketed) q - k for every delta in [-(length-1), length-1], on the host.

  Computed with numpy at trace time: sequence lengths are static, and the
  bucket boundaries (a float `ceil`) then never depend on the device's log.
  """
  delta = np.arange(-(length - 1), length, dtype=np.int64)
  if buckets > 0 and max_position > 0:
    return log_bucket_position(delta, buckets, max_position)
  return delta.astype(np.int32)


def relative_positions(length: int, cfg: DebertaV2Config) -> jax.Array:
  """HF `build_relative_position` for self-attention: [L, L] int32, q - k."""
  table = jnp.asarray(_relative_table(length, cfg.position_buckets,
                                      cfg.max_relative))
  ids = jnp.arange(length)
  return table[ids[:, None] - ids[None, :] + length - 1]


class DebertaV2Embeddings(nnx.Module):

  def __init__(self, cfg: DebertaV2Config, *, dtype, rngs: nnx.Rngs):
    embed = lambda n: nnx.Embed(n, cfg.embed_dim, dtype=dtype, rngs=rngs)
    self.word_embeddings = embed(cfg.vocab_size)
    self.position_embeddings = (embed(cfg.max_position_embeddings)
                                if cfg.position_biased_input else None)
    self.token_type_embeddings = (embed(cfg.type_vocab_size)
                                  if cfg.type_vocab_size > 0 else None)
    self.embed_proj = (nnx.Linear(cfg.embed_dim, cfg.hidden_size, use_bias=False,
                                  dtype=dtype, rngs=rngs)
                       if cfg.embed_dim != cfg.hidden_size else None)
    self.LayerNorm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps,
                                   dtype=dtype, rngs=rngs)
    self.dropout = common.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, input_ids, attention_mask, token_type_ids):
    x = self.word_embeddings(input_ids)
    if self.position_embeddings is not None:
      x = x + self.position_embeddings(jnp.arange(input_ids.shape[1])[None, :])
    if self.token_type_embeddings is not None:
      x = x + self.token_type_embeddings(token_type_ids)
    if self.embed_proj is not None:
      x = self.embed_proj(x)
    x = self.LayerNorm(x) * attention_mask[:, :, None].astype(x.dtype)
    return self.dropout(x)


class DisentangledSelfAttention(nnx.Module):

  def __init__(self, cfg: DebertaV2Config, *, dtype, rngs: nnx.Rngs):
    self.num_heads = cfg.num_attention_heads
    self.head_dim = cfg.head_dim
    self.pos_att_type = cfg.pos_att_type
    self.relative_attention = cfg.relative_attention
    self.share_att_key = cfg.share_att_key
    self.att_span = cfg.att_span
    all_head = self.num_heads * self.head_dim
    linear = lambda: nnx.Linear(cfg.hidden_size, all_head, dtype=dtype, rngs=rngs)
    self.query_proj, self.key_proj, self.value_proj = linear(), linear(), linear()
    # Separate position projections only without share_att_key (HF's rule).
    separate = self.relative_attention and not self.share_att_key
    self.pos_key_proj = (linear() if separate and "c2p" in self.pos_att_type
                         else None)
    self.pos_query_proj = (linear() if separate and "p2c" in self.pos_att_type
                           else None)
    self.pos_dropout = common.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.dropout = common.Dropout(cfg.attention_probs_dropout_prob, rngs=rngs)
    # HF divides every term by sqrt(d * (1 + #relative terms)), even when
    # relative_attention is off.
    n_terms = 1 + sum(t in self.pos_att_type for t in ("c2p", "p2c"))
    self.scale = float(np.sqrt(np.float32(self.head_dim) * np.float32(n_terms)))

  def _heads(self, t):
    return t.reshape(*t.shape[:-1], self.num_heads, self.head_dim)

  def _relative_bias(self, q, k, rel_pos, rel_embeddings):
    """c2p / p2c scores [B, heads, L, L] via one gather on clipped indices."""
    span = self.att_span
    rel_emb = self.pos_dropout(rel_embeddings[:2 * span])
    if self.share_att_key:
      pos_q = self._heads(self.query_proj(rel_emb))
      pos_k = self._heads(self.key_proj(rel_emb))
    else:
      pos_q = (self._heads(self.pos_query_proj(rel_emb))
               if self.pos_query_proj is not None else None)
      pos_k = (self._heads(self.pos_key_proj(rel_emb))
               if self.pos_key_proj is not None else None)
    bias = 0.0
    if "c2p" in self.pos_att_type:
      # Query i against the embedding of its distance to key j: (i - j).
      c2p = jnp.einsum("bqhd,phd->bhqp", q, pos_k)
      idx = jnp.clip(rel_pos + span, 0, 2 * span - 1)
      bias = bias + jnp.take_along_axis(c2p, idx[None, None], axis=-1) / self.scale
    if "p2c" in self.pos_att_type:
      # Key j against position -rel[j, i] (HF's index), gathered along each
      # key row and transposed to [query, key] exactly as HF does.
      p2c = jnp.einsum("bkhd,phd->bhkp", k, pos_q)
      idx = jnp.clip(-rel_pos + span, 0, 2 * span - 1)
      gathered = jnp.take_along_axis(p2c, idx[None, None], axis=-1)
      bias = bias + jnp.swapaxes(gathered, -1, -2) / self.scale
    return bias

  def __call__(self, x, pair_mask, rel_pos, rel_embeddings):
    q = self._heads(self.query_proj(x))
    k = self._heads(self.key_proj(x))
    v = self._heads(self.value_proj(x))
    scores = common.attention_scores(q, k) / self.scale
    if self.relative_attention:
      scores = scores + self._relative_bias(q, k, rel_pos, rel_embeddings)
    # HF masks with the outer product mask_i * mask_j: padded query rows end up
    # uniform over all keys (they never feed real positions).
    scores = jnp.where(pair_mask, scores.astype(jnp.float32),
                       jnp.finfo(jnp.float32).min)
    probs = common.softmax(scores)
    return common.attention_context(self.dropout(probs).astype(v.dtype), v), probs



class DebertaV2Attention(nnx.Module):

  def __init__(self, cfg: DebertaV2Config, *, dtype, rngs: nnx.Rngs):
    self.self = DisentangledSelfAttention(cfg, dtype=dtype, rngs=rngs)
    self.output = common.ResidualOutput(cfg.hidden_size, cfg, dtype=dtype, rngs=rngs)

  def __call__(self, x, pair_mask, rel_pos, rel_embeddings):
    context, probs = self.self(x, pair_mask, rel_pos, rel_embeddings)
    return self.output(context, x), probs



class DebertaV2Layer(nnx.Module):

  def __init__(self, cfg: DebertaV2Config, *, dtype, rngs: nnx.Rngs):
    self.attention = DebertaV2Attention(cfg, dtype=dtype, rngs=rngs)
    self.intermediate = common.Intermediate(cfg, dtype=dtype, rngs=rngs)
    self.output = common.ResidualOutput(cfg.intermediate_size, cfg, dtype=dtype,
                                      rngs=rngs)

  def __call__(self, x, pair_mask, rel_pos, rel_embeddings):
    x, probs = self.attention(x, pair_mask, rel_pos, rel_embeddings)
    return self.output(self.intermediate(x), x), probs


class ConvLayer(nnx.Module):
  """DeBERTa-v2's convolution branch over the first layer's input."""

  def __init__(self, cfg: DebertaV2Config, *, dtype, rngs: nnx.Rngs):
    pad = (cfg.conv_kernel_size - 1) // 2
    self.conv = nnx.Conv(cfg.hidden_size, cfg.hidden_size, (cfg.conv_kernel_size,),
                         padding=[(pad, pad)], feature_group_count=cfg.conv_groups,
                         dtype=dtype, rngs=rngs)
    self.conv_act = common.activation(cfg.conv_act)
    self.LayerNorm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps,
                                   dtype=dtype, rngs=rngs)
    self.dropout = common.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, x, residual, attention_mask):
    keep = attention_mask[:, :, None].astype(bool)
    out = jnp.where(keep, self.conv(x), 0)
    out = self.conv_act(self.dropout(out))
    return self.LayerNorm(residual + out) * keep.astype(residual.dtype)


class DebertaV2Encoder(nnx.Module):

  def __init__(self, cfg: DebertaV2Config, *, dtype, rngs: nnx.Rngs):
    self.config = cfg
    self.dtype = dtype
    self.layer = nnx.List([DebertaV2Layer(cfg, dtype=dtype, rngs=rngs)
                           for _ in range(cfg.num_hidden_layers)])
    self.rel_embeddings = (nnx.Embed(2 * cfg.att_span, cfg.hidden_size,
                                     dtype=dtype, rngs=rngs)
                           if cfg.relative_attention else None)
    norm = [t.strip() for t in cfg.norm_rel_ebd.lower().split("|")]
    self.LayerNorm = (nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps,
                                    dtype=dtype, rngs=rngs)
                      if "layer_norm" in norm else None)
    self.conv = (ConvLayer(cfg, dtype=dtype, rngs=rngs)
                 if cfg.conv_kernel_size > 0 else None)

  def get_rel_embedding(self):
    if self.rel_embeddings is None:
      return None
    table = jnp.asarray(self.rel_embeddings.embedding[...], self.dtype)
    return self.LayerNorm(table) if self.LayerNorm is not None else table

  def __call__(self, x, attention_mask):
    keep = attention_mask.astype(bool)
    pair_mask = (keep[:, None, :, None] & keep[:, None, None, :])
    rel_pos = (relative_positions(x.shape[1], self.config)
               if self.rel_embeddings is not None else None)
    rel_embeddings = self.get_rel_embedding()
    first_input, probs = x, None
    for i, layer in enumerate(self.layer):
      x, probs = layer(x, pair_mask, rel_pos, rel_embeddings)
      if i == 0 and self.conv is not None:
        x = self.conv(first_input, x, attention_mask)
    return x, probs  # only the last layer's attention leaves this function


class DebertaV2Model(common.EncoderModel):
  """Returns the last hidden states and the last layer's attention probs."""

  embeddings_cls, encoder_cls = DebertaV2Embeddings, DebertaV2Encoder

  def embed(self, input_ids, attention_mask, token_type_ids):
    return self.embeddings(input_ids, attention_mask, token_type_ids)

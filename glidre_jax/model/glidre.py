"""The GLiDRE head on top of a text encoder and a label encoder (spec §1).

Entity-first: mention words are pooled into E entity vectors and E attention
rows once; the batch's real (document, head, tail) pairs, packed per shard
(`glidre_jax.data.pairs`), then gather them. Everything works on the padded
arrays of `glidre_jax.data.batch`; no Python loops over documents, entities
or pairs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from glidre_jax import encoders, sharding
from glidre_jax.encoders import common
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.layers import FFN, masked_mean
from glidre_jax.model.windows import merge_windows

_EPS_POOL = 1e-7  # as the reference: sum / (number of mention words + eps)
_EPS_LOP = 1e-5  # ATLOP's normaliser of the localized attention
_LSE_MASK = -1e9  # log-weight of words outside an entity (the reference masks with -1e9)


@dataclasses.dataclass
class GLiDREOutput:
  logits: jax.Array  # [S, P, K] relation logits r_{h,t} · l_k of the packed pairs
  threshold_logits: jax.Array | None  # [S, P] (adaptive threshold head) or None


jax.tree_util.register_dataclass(
    GLiDREOutput, data_fields=["logits", "threshold_logits"], meta_fields=[])


def gather_words(hidden: jax.Array, attentions: jax.Array, word_index: jax.Array,
                 word_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """First-subword word vectors [B, W, d] and head-mean word attention [B, W, W].

  Words with word_mask 0 get a zero vector and a zero attention row and
  column: padding words (so no document sees its own padding: batch
  independence) and, as in the official GLiDRE, words that yield no subword
  (its `extract_word_embeddings` scatters first subwords into zeros, so such
  a word keeps zeros everywhere, yet still counts in the length of the
  mentions holding it: entity means divide by all mention words).
  """
  keep = word_mask.astype(hidden.dtype)
  words = jnp.take_along_axis(hidden, word_index[..., None], axis=1) * keep[..., None]
  att = attentions.mean(axis=1)  # the mean over heads commutes with the gather
  att = jnp.take_along_axis(att, word_index[:, :, None], axis=1)
  att = jnp.take_along_axis(att, word_index[:, None, :], axis=2)
  keep = word_mask.astype(att.dtype)
  return words, att * keep[:, :, None] * keep[:, None, :]


def pool_entities(words: jax.Array, word_att: jax.Array, weights: jax.Array,
                  pooling: str) -> tuple[jax.Array, jax.Array]:
  """Entity vectors [B, E, D] and entity attention rows [B, E, W].

  `weights[b, e, w]` counts word w in entity e's mentions (token-weighted).
  """
  count = weights.sum(-1, keepdims=True)
  if pooling == "mean":
    entities = (weights @ words.astype(jnp.float32)) / (count + _EPS_POOL)
  else:  # logsumexp over the same words, each taken as often as it occurs
    # Words outside the entity get a large finite offset, not -inf: a row with
    # no word (padded entity slot) would otherwise give inf - inf = NaN in the
    # backward pass, which the `where` below cannot stop.
    inside = weights > 0
    log_w = jnp.where(inside, jnp.log(jnp.where(inside, weights, 1.0)), _LSE_MASK)
    entities = jax.nn.logsumexp(
        words.astype(jnp.float32)[:, None] + log_w[..., None], axis=2)
    entities = jnp.where(count > 0, entities, 0.0)
  entity_att = (weights @ word_att.astype(jnp.float32)) / (count + _EPS_POOL)
  return entities, entity_att


class EncoderSlot(nnx.Module):
  """Holds an encoder under `.model`, as the reference's wrappers do."""

  def __init__(self, model: nnx.Module):
    self.model = model


class TokenRepLayer(nnx.Module):
  """Text encoder + projection to D, label encoder + labels projection."""

  def __init__(self, cfg: GLiDREConfig, text_encoder: nnx.Module,
               label_encoder: nnx.Module, *, dtype, rngs: nnx.Rngs):
    self.bert_layer = EncoderSlot(text_encoder)
    self.labels_encoder = EncoderSlot(label_encoder)
    d_text, d_label, d = text_encoder.hidden_size, label_encoder.hidden_size, cfg.hidden_size
    self.projection = (nnx.Linear(d_text, d, dtype=dtype, rngs=rngs)
                       if d_text != d else None)
    # A plain Linear, as the official BiEncoder (it projects each label token
    # before the mean pooling; the mean commutes with an affine map).
    self.labels_projection = (nnx.Linear(d_label, d, dtype=dtype, rngs=rngs)
                              if d_label != d else None)

  def encode_text(self, input_ids, attention_mask, word_index, word_mask,
                  window_word_mask=None):
    """Word vectors and word attention; input_ids [B, N, L] (with
    window_word_mask [B, N, W]) are overlapping windows of long documents."""
    if input_ids.ndim == 3:
      b, n, length = input_ids.shape
      out = self.bert_layer.model(input_ids.reshape(b * n, length),
                                  attention_mask.reshape(b * n, length))
      held = window_word_mask.reshape(b * n, -1)
      words, word_att = gather_words(out.last_hidden_state, out.attentions,
                                     word_index.reshape(b * n, -1), held)
      words, word_att = merge_windows(words, word_att, window_word_mask, word_mask)
    else:
      out = self.bert_layer.model(input_ids, attention_mask)
      words, word_att = gather_words(out.last_hidden_state, out.attentions,
                                     word_index, word_mask)
    if self.projection is not None:
      # Officially the projection acts on subwords before the gather: a word
      # without subword stays 0, not the projection's bias.
      words = self.projection(words) * word_mask[..., None].astype(words.dtype)
    return words, word_att

  def encode_label_tokens(self, labels: Mapping[str, jax.Array]) -> jax.Array:
    """Mask-weighted mean of the label encoder's states [K, d_label] from
    the label fields of a batch (split by name length or not, batch.py)."""
    pooled = self._pool_label_tokens(labels["label_input_ids"], labels["label_attention_mask"])
    if labels["label_long_rows"].shape[0]:  # the long names, whole, replace their cut rows
      long = self._pool_label_tokens(labels["label_long_input_ids"],
                                     labels["label_long_attention_mask"])
      pooled = pooled.at[labels["label_long_rows"]].set(long)
    return pooled

  def _pool_label_tokens(self, ids, mask):
    out = self.labels_encoder.model(ids, mask)
    return masked_mean(out.last_hidden_state.astype(jnp.float32), mask, axis=1)

  def project_labels(self, pooled):
    return pooled if self.labels_projection is None else self.labels_projection(pooled)


def dense(values: jax.Array, batch: dict) -> jax.Array:
  """Packed values [S, P, ...] -> [B, E, E, ...] by one scatter (0 off the
  scored pairs), for callers that want the dense view."""
  s, _ = batch["pair_mask"].shape
  b, e = batch["entity_mask"].shape
  doc = batch["pair_doc"] + (jnp.arange(s, dtype=jnp.int32) * (b // s))[:, None]
  doc = jnp.where(batch["pair_mask"] > 0, doc, b)  # padding pairs land outside: dropped
  out = jnp.zeros((b, e, e) + values.shape[2:], values.dtype)
  return out.at[doc, batch["pair_head"], batch["pair_tail"]].set(values, mode="drop")


@dataclasses.dataclass
class EntityContext:
  """Per-document tensors every pair is built from: O(E·D + E·W + W·D), each
  split into S shards of B/S documents ([S, B/S, ...], see `by_shard`)."""
  words: jax.Array  # [B, W, D]
  entities: jax.Array  # [B, E, D]
  entity_att: jax.Array  # [B, E, W]

  def by_shard(self, shards: int) -> EntityContext:
    """[B, ...] -> [S, B/S, ...]: shard s holds the documents its pairs index."""
    split = lambda x: x.reshape((shards, x.shape[0] // shards) + x.shape[1:])
    return EntityContext(split(self.words), split(self.entities), split(self.entity_att))


def _gather(x: jax.Array, doc: jax.Array, index: jax.Array) -> jax.Array:
  """x [S, Bs, E, ...] at (doc, index) [S, C] of its own shard -> [S, C, ...]."""
  s, bs, e = x.shape[:3]
  flat = x.reshape((s, bs * e) + x.shape[3:])
  idx = (doc * e + index).reshape((s, -1) + (1,) * (x.ndim - 3))
  return jnp.take_along_axis(flat, idx, axis=1)


def _spread(alpha: jax.Array, docs: jax.Array, bs: int) -> jax.Array:
  """alpha [S, C, W] placed in its own document's columns of [S, C, Bs·W]."""
  own = (docs[..., None] == jnp.arange(bs, dtype=docs.dtype)).astype(alpha.dtype)
  return (own[..., None] * alpha[:, :, None, :]).reshape(alpha.shape[:2] + (-1,))


@jax.custom_vjp
def lop_context(alpha: jax.Array, docs: jax.Array, words: jax.Array) -> jax.Array:
  """LOP context [S, C, D]: each pair's alpha [S, C, W] against its own
  document's words (words [S, Bs, W, D], docs [S, C]).

  One matmul against the shard's words [Bs·W, D], alpha spread into its own
  document's columns (zeros elsewhere: the same sums). Bs times the FLOPs of
  a per-pair gather of words ([C, W, D], far more memory): 2·Bs·W·D per pair,
  ~10 % (W = 256) to ~19 % (W = 512) of a pair's head FLOPs at Bs = 4, D = 384.
  """
  return _lop_context(alpha, docs, words)


def _lop_context(alpha, docs, words):
  s, bs, w, d = words.shape
  return jnp.einsum("scv,svd->scd", _spread(alpha, docs, bs), words.reshape(s, bs * w, d))


def _lop_context_fwd(alpha, docs, words):
  return _lop_context(alpha, docs, words), (alpha, docs, words)


def _lop_context_bwd(residuals, grad):
  # Autodiff's d_alpha fused the [C, Bs·W] matmul with the mask product and
  # the sum over Bs into one XLA:CPU kernel at ~35 GFLOP/s; here the matmul
  # stands alone and d_alpha takes each pair's own block (fwd + bwd at
  # C = 1736, Bs = 4, W = 256: 52 -> 19 ms at D = 768, 42 -> 12 ms at D = 384).
  alpha, docs, words = residuals
  s, bs, w, d = words.shape
  flat = words.reshape(s, bs * w, d)
  scores = jnp.einsum("scd,svd->scv", grad, flat).reshape(s, -1, bs, w)
  # A pair outside the shard's documents (none in packed batches) has a zero
  # context and so a zero d_alpha, as the spread gives it.
  d_alpha = jnp.take_along_axis(scores, docs[..., None, None], axis=2, mode="fill",
                               fill_value=0)[:, :, 0]
  d_words = jnp.einsum("scv,scd->svd", _spread(alpha, docs, bs), grad).reshape(words.shape)
  return d_alpha.astype(alpha.dtype), None, d_words.astype(words.dtype)


lop_context.defvjp(_lop_context_fwd, _lop_context_bwd)


class RelRep(nnx.Module):
  """Entity pairs → relation vectors (the reference's `span_rep_layer`)."""

  def __init__(self, cfg: GLiDREConfig, *, dtype, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.pooling = cfg.pooling
    if cfg.lop:
      self.head_extractor = FFN(2 * d, d, cfg.dropout, dtype=dtype, rngs=rngs)
      self.tail_extractor = FFN(2 * d, d, cfg.dropout, dtype=dtype, rngs=rngs)
    else:
      self.head_extractor = self.tail_extractor = None
    self.projection = FFN(2 * d, d, cfg.dropout, dtype=dtype, rngs=rngs)

  def entity_context(self, words, word_att, entity_word_weights) -> EntityContext:
    entities, entity_att = pool_entities(words, word_att, entity_word_weights,
                                         self.pooling)
    return EntityContext(words.astype(jnp.float32), entities, entity_att)

  def __call__(self, ctx: EntityContext, docs: jax.Array, heads: jax.Array, tails: jax.Array,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Relation vectors [S, C, D] of the C pairs (docs, heads, tails)[s, c]
    of each shard; `ctx` is `by_shard` ([S, B/S, ...])."""
    keys = [None] * 3 if dropout_key is None else list(jax.random.split(dropout_key, 3))
    if self.head_extractor is None:
      head_part = self.projection.left_part(ctx.entities)  # [S, Bs, E, 4D], once per entity
      tail_vecs = _gather(ctx.entities, docs, tails)
      return self.projection.call_with_left_part(_gather(head_part, docs, heads), tail_vecs,
                                                 keys[0])
    alpha = _gather(ctx.entity_att, docs, heads) * _gather(ctx.entity_att, docs, tails)
    alpha = alpha / (alpha.sum(-1, keepdims=True) + _EPS_LOP)  # [S, C, W]
    context = sharding.constrain(lop_context(alpha, docs, ctx.words), "batch", "pairs", "embed")
    head = jnp.tanh(self.head_extractor.call_with_left_part(
        _gather(self.head_extractor.left_part(ctx.entities), docs, heads), context, keys[0]))
    tail = jnp.tanh(self.tail_extractor.call_with_left_part(
        _gather(self.tail_extractor.left_part(ctx.entities), docs, tails), context, keys[1]))
    return self.projection(jnp.concatenate([head, tail], axis=-1), keys[2])


class GLiDREModel(nnx.Module):
  """Scores every (head, label, tail) of the packed pairs of a padded batch.

  Pairs are scored in blocks of `config.pair_chunk_size` per shard (0: all
  at once); in training each block is rematerialised, so peak memory follows
  the block, not the pair count.
  """

  # The submodules whose parameters `encode_words` and `encode_labels` use;
  # `score` uses the others.
  ENCODER_PARTS = ("token_rep_layer", "prompt_rep_layer")

  def __init__(self, cfg: GLiDREConfig, text_encoder: nnx.Module,
               label_encoder: nnx.Module, *, dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.config = cfg
    d = cfg.hidden_size
    self.token_rep_layer = TokenRepLayer(cfg, text_encoder, label_encoder,
                                         dtype=dtype, rngs=rngs)
    self.span_rep_layer = RelRep(cfg, dtype=dtype, rngs=rngs)
    self.prompt_rep_layer = FFN(d, d, cfg.dropout, dtype=dtype, rngs=rngs)
    # The official `threshold_layer`: Linear(2D, D) → ReLU → Dropout → Linear(D, 1)
    # on [mean label vector; r] (spec §1.11, §5).
    self.threshold_layer = (FFN(2 * d, 1, cfg.dropout, hidden=d, dtype=dtype, rngs=rngs)
                            if cfg.adaptive_threshold else None)
    # Dropout keys of the pair blocks come from here, drawn once per call, so
    # blocks inside lax.map never touch (mutate) an rng stream.
    self.pair_dropout = common.Dropout(cfg.dropout, rngs=rngs)

  def encode_labels(self, labels: Mapping[str, jax.Array],
                    freeze_encoder: bool = False) -> jax.Array:
    """Label vectors l_k [K, D] from a batch's label fields; depend only on
    the label strings (cacheable).

    freeze_encoder: no gradient flows into the label encoder (its backward
    pass is then not computed at all).
    """
    pooled = self.token_rep_layer.encode_label_tokens(labels)
    if freeze_encoder:
      pooled = jax.lax.stop_gradient(pooled)
    return self.label_vectors(pooled)

  def label_vectors(self, pooled: jax.Array) -> jax.Array:
    """Label vectors [K, D] from the label encoder's pooled states [K, d_label]
    (computed once when that encoder is frozen)."""
    labels = self.token_rep_layer.project_labels(pooled)
    return self.prompt_rep_layer(labels).astype(jnp.float32)

  def encode_words(self, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Word vectors [B, W, D] and word attention [B, W, W] of a batch's documents."""
    return self.token_rep_layer.encode_text(
        batch["input_ids"], batch["attention_mask"], batch["word_index"], batch["word_mask"],
        batch.get("window_word_mask"))

  def entity_context(self, batch: dict) -> EntityContext:
    return self.span_rep_layer.entity_context(*self.encode_words(batch),
                                              batch["entity_word_weights"])

  def score_pairs(self, ctx: EntityContext, docs: jax.Array, heads: jax.Array,
                  tails: jax.Array, labels: jax.Array, dropout_key: jax.Array | None = None,
                  label_mask: jax.Array | None = None) -> GLiDREOutput:
    """Outputs for the pairs (docs, heads, tails) [S, C] of the sharded
    context `ctx` (`EntityContext.by_shard`): logits [S, C, K].

    label_mask [K] (None: all real) marks the real labels, over which the
    threshold layer takes its mean label vector."""
    rel_key, th_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    relations = self.span_rep_layer(ctx, docs, heads, tails, rel_key).astype(jnp.float32)
    relations = sharding.constrain(relations, "batch", "pairs", "embed")
    logits = sharding.constrain(jnp.einsum("bcd,kd->bck", relations, labels),
                                "batch", "pairs", "labels")
    threshold = None
    if self.threshold_layer is not None:
      mask = jnp.ones(labels.shape[:1]) if label_mask is None else label_mask
      label_mean = masked_mean(labels, mask, axis=0)  # padded labels do not count
      label_part = self.threshold_layer.left_part(label_mean)  # same for every pair
      threshold = self.threshold_layer.call_with_left_part(
          jnp.broadcast_to(label_part, relations.shape[:2] + label_part.shape), relations,
          th_key)[..., 0]
    return GLiDREOutput(logits=logits, threshold_logits=threshold)

  def __call__(self, batch: dict, label_vectors: jax.Array | None = None
               ) -> GLiDREOutput:
    """`batch` holds the fields of `glidre_jax.data.batch`; `label_vectors`
    ([K, D], from `encode_labels`) skips the label encoder when given.
    Returns logits [S, P, K] (and threshold logits [S, P]) of the packed
    pairs (`dense` gives the [B, E, E, ...] view)."""
    if label_vectors is None:
      label_vectors = self.encode_labels(batch)
    return self.score(batch, *self.encode_words(batch), label_vectors)

  def score(self, batch: dict, words: jax.Array, word_att: jax.Array,
            label_vectors: jax.Array) -> GLiDREOutput:
    """The pair scoring of `__call__` from the encoders' outputs (`encode_words`,
    `encode_labels`): what depends on the pair bucket and not on the encoders."""
    label_mask = batch.get("label_mask")
    num_shards, num_pairs = batch["pair_mask"].shape
    ctx = self.span_rep_layer.entity_context(
        words, word_att, batch["entity_word_weights"]).by_shard(num_shards)
    pairs = (batch["pair_doc"], batch["pair_head"], batch["pair_tail"])
    key = None
    if not self.pair_dropout.deterministic and self.pair_dropout.rate > 0:
      key = self.pair_dropout.rngs()
    chunk = self.config.pair_chunk_size
    if not chunk or chunk >= num_pairs:
      return self.score_pairs(ctx, *pairs, label_vectors, key, label_mask)
    num_blocks = -(-num_pairs // chunk)
    # Padded ids repeat the last pair; their outputs are cut off below.
    ids = jnp.minimum(jnp.arange(num_blocks * chunk), num_pairs - 1).reshape(num_blocks, chunk)
    blocked = tuple(jnp.moveaxis(x[:, ids], 1, 0) for x in pairs)  # [blocks, S, chunk]
    keys = (jnp.zeros((num_blocks,), jnp.uint32) if key is None
            else jax.random.split(key, num_blocks))

    @jax.checkpoint  # recompute each block in the backward pass
    def block(args):
      docs, heads, tails, block_key = args
      return self.score_pairs(ctx, docs, heads, tails, label_vectors,
                              None if key is None else block_key, label_mask)

    blocks = jax.lax.map(block, blocked + (keys,))
    join = lambda x: jnp.moveaxis(x, 0, 1).reshape(
        (num_shards, num_blocks * chunk) + x.shape[3:])[:, :num_pairs]
    return jax.tree.map(join, blocks)


def build_glidre(cfg: GLiDREConfig, text_encoder_config, label_encoder_config, *,
                 dtype=jnp.float32, seed: int = 0) -> GLiDREModel:
  """A randomly initialised GLiDRE (encoders too) from configs alone."""
  rngs = nnx.Rngs(seed)
  text = encoders.new_encoder(text_encoder_config, dtype=dtype, seed=seed)
  label = encoders.new_encoder(label_encoder_config, dtype=dtype, seed=seed + 1)
  return GLiDREModel(cfg, text, label, dtype=dtype, rngs=rngs)

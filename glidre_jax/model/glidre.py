"""The GLiDRE head on top of a text encoder and a label encoder (spec §1).

Entity-first: mention words are pooled into E entity vectors and E attention
rows once; the E×E pairs are then formed by broadcasting. Everything works on
the padded arrays of `glidre_jax.data.batch`; no Python loops over documents,
entities or pairs.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from glidre_jax import encoders
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.layers import FFN, masked_mean

_EPS_POOL = 1e-7  # as the reference: sum / (number of mention words + eps)
_EPS_LOP = 1e-5  # ATLOP's normaliser of the localized attention


@dataclasses.dataclass
class GLiDREOutput:
  logits: jax.Array  # [B, E, E, K] relation logits r_{h,t} · l_k
  threshold_logits: jax.Array | None  # [B, E, E] (adaptive threshold head) or None


jax.tree_util.register_dataclass(
    GLiDREOutput, data_fields=["logits", "threshold_logits"], meta_fields=[])


def gather_words(hidden: jax.Array, attentions: jax.Array, word_index: jax.Array,
                 word_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """First-subword word vectors [B, W, d] and head-mean word attention [B, W, W].

  Padding words are zeroed, in the vectors and as attention columns, so that
  no document sees its own padding (batch independence).
  """
  keep = word_mask.astype(hidden.dtype)
  words = jnp.take_along_axis(hidden, word_index[..., None], axis=1) * keep[..., None]
  att = attentions.mean(axis=1)  # the mean over heads commutes with the gather
  att = jnp.take_along_axis(att, word_index[:, :, None], axis=1)
  att = jnp.take_along_axis(att, word_index[:, None, :], axis=2)
  return words, att * word_mask.astype(att.dtype)[:, None, :]


def pool_entities(words: jax.Array, word_att: jax.Array, weights: jax.Array,
                  pooling: str) -> tuple[jax.Array, jax.Array]:
  """Entity vectors [B, E, D] and entity attention rows [B, E, W].

  `weights[b, e, w]` counts word w in entity e's mentions (token-weighted).
  """
  count = weights.sum(-1, keepdims=True)
  if pooling == "mean":
    entities = (weights @ words.astype(jnp.float32)) / (count + _EPS_POOL)
  else:  # logsumexp over the same words, each taken as often as it occurs
    log_w = jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 1e-30)), -jnp.inf)
    entities = jax.nn.logsumexp(
        words.astype(jnp.float32)[:, None] + log_w[..., None], axis=2)
    entities = jnp.where(count > 0, entities, 0.0)
  entity_att = (weights @ word_att.astype(jnp.float32)) / (count + _EPS_POOL)
  return entities, entity_att


def localized_context(entity_att: jax.Array, words: jax.Array) -> jax.Array:
  """ATLOP LOP: c_{h,t} = Σ_w α_w H_w, α ∝ A_h ⊙ A_t. One matmul, [B, E, E, D]."""
  alpha = entity_att[:, :, None, :] * entity_att[:, None, :, :]
  alpha = alpha / (alpha.sum(-1, keepdims=True) + _EPS_LOP)
  return jnp.einsum("bhtw,bwd->bhtd", alpha, words.astype(jnp.float32))


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

  def encode_text(self, input_ids, attention_mask, word_index, word_mask):
    out = self.bert_layer.model(input_ids, attention_mask)
    words, word_att = gather_words(out.last_hidden_state, out.attentions,
                                   word_index, word_mask)
    if self.projection is not None:
      words = self.projection(words)
    return words, word_att

  def encode_label_tokens(self, label_input_ids, label_attention_mask):
    """Mask-weighted mean of the label encoder's states [K, d_label]."""
    out = self.labels_encoder.model(label_input_ids, label_attention_mask)
    return masked_mean(out.last_hidden_state.astype(jnp.float32),
                       label_attention_mask, axis=1)

  def project_labels(self, pooled):
    return pooled if self.labels_projection is None else self.labels_projection(pooled)


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

  def __call__(self, words, word_att, entity_word_weights):
    entities, entity_att = pool_entities(words, word_att, entity_word_weights,
                                         self.pooling)
    heads = entities[:, :, None, :]  # [B, E, 1, D]: broadcast over tails
    tails = entities[:, None, :, :]  # [B, 1, E, D]: broadcast over heads
    if self.head_extractor is None:
      return self.projection.call_on_concat(heads, jnp.broadcast_to(
          tails, heads.shape[:2] + tails.shape[2:]))
    context = localized_context(entity_att, words)  # [B, E, E, D]
    head = jnp.tanh(self.head_extractor.call_on_concat(heads, context))
    tail = jnp.tanh(self.tail_extractor.call_on_concat(tails, context))
    return self.projection(jnp.concatenate([head, tail], axis=-1))


class GLiDRE(nnx.Module):
  """Scores every (head, label, tail) of a padded batch of documents."""

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
    self.threshold_head = (FFN(2 * d, 1, cfg.dropout, dtype=dtype, rngs=rngs)
                           if cfg.adaptive_threshold else None)

  def encode_labels(self, label_input_ids, label_attention_mask,
                    freeze_encoder: bool = False) -> jax.Array:
    """Label vectors l_k [K, D]; depend only on the label strings (cacheable).

    freeze_encoder: no gradient flows into the label encoder (its backward
    pass is then not computed at all).
    """
    pooled = self.token_rep_layer.encode_label_tokens(label_input_ids, label_attention_mask)
    if freeze_encoder:
      pooled = jax.lax.stop_gradient(pooled)
    labels = self.token_rep_layer.project_labels(pooled)
    return self.prompt_rep_layer(labels).astype(jnp.float32)

  def relation_reps(self, input_ids, attention_mask, word_index, word_mask,
                    entity_word_weights) -> jax.Array:
    """Relation vectors r_{h,t} [B, E, E, D]."""
    words, word_att = self.token_rep_layer.encode_text(
        input_ids, attention_mask, word_index, word_mask)
    return self.span_rep_layer(words, word_att, entity_word_weights).astype(jnp.float32)

  def score(self, relations: jax.Array, labels: jax.Array) -> GLiDREOutput:
    logits = jnp.einsum("bhtd,kd->bhtk", relations, labels)
    threshold = None
    if self.threshold_head is not None:
      label_mean = jnp.broadcast_to(labels.mean(0), relations.shape)
      threshold = self.threshold_head.call_on_concat(label_mean, relations)[..., 0]
    return GLiDREOutput(logits=logits, threshold_logits=threshold)

  def __call__(self, batch: dict, label_vectors: jax.Array | None = None
               ) -> GLiDREOutput:
    """`batch` holds the fields of `glidre_jax.data.batch`; `label_vectors`
    ([K, D], from `encode_labels`) skips the label encoder when given."""
    if label_vectors is None:
      label_vectors = self.encode_labels(batch["label_input_ids"],
                                         batch["label_attention_mask"])
    relations = self.relation_reps(batch["input_ids"], batch["attention_mask"],
                                   batch["word_index"], batch["word_mask"],
                                   batch["entity_word_weights"])
    return self.score(relations, label_vectors)


def build_glidre(cfg: GLiDREConfig, text_encoder_config, label_encoder_config, *,
                 dtype=jnp.float32, seed: int = 0) -> GLiDRE:
  """A randomly initialised GLiDRE (encoders too) from configs alone."""
  rngs = nnx.Rngs(seed)
  text = encoders.new_encoder(text_encoder_config, dtype=dtype, seed=seed)
  label = encoders.new_encoder(label_encoder_config, dtype=dtype, seed=seed + 1)
  return GLiDRE(cfg, text, label, dtype=dtype, rngs=rngs)

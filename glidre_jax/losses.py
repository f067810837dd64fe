"""Relation losses on [..., K] logits of pairs, all masked (spec §2).

The model's pairs are packed ([S, P, K], `glidre_jax.data.pairs`); `valid`
([S, P]) marks the real ones (padding pairs count for nothing, also in the
gradient); `label_mask` [K] masks padded labels. The cell losses work on any
leading pair axes. Reduction is a sum over valid (pair, label) cells (the
reference's), or a mean.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

LOSSES = ("focal", "bce", "adaptive_threshold")
# p_t is clamped to [EPS, 1 - EPS] before (1 - p_t)^γ, as the reference's
# loss_functions.py does: for 0 < γ < 1 the factor's derivative
# γ (1 - p_t)^(γ-1) is infinite once p_t rounds to 1 (|logit| > ~17 in fp32).
FOCAL_EPS = 1e-7


def _reduce(cell_loss: jax.Array, weight: jax.Array, reduction: str) -> jax.Array:
  total = (cell_loss * weight).sum()
  if reduction == "sum":
    return total
  if reduction == "mean":
    return total / jnp.maximum(weight.sum(), 1.0)
  raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def _cell_weight(valid, label_mask):
  return valid.astype(jnp.float32)[..., None] * label_mask.astype(jnp.float32)


def bce_loss(logits, labels, valid, label_mask, reduction: str = "sum"):
  labels = labels.astype(jnp.float32)
  cell = jnp.logaddexp(0.0, logits) - logits * labels  # stable BCE-with-logits
  return _reduce(cell, _cell_weight(valid, label_mask), reduction)


def focal_loss(logits, labels, valid, label_mask, alpha: float = 0.8,
               gamma: float = 3.0, reduction: str = "sum"):
  """Sigmoid focal loss: BCE × α_t × (1 − p_t)^γ (α for positives), p_t
  clamped to [FOCAL_EPS, 1 − FOCAL_EPS]; γ = 0 is plain α-weighted BCE."""
  labels = labels.astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  bce = jnp.logaddexp(0.0, logits) - logits * labels
  alpha_t = alpha * labels + (1 - alpha) * (1 - labels)
  cell = alpha_t * bce
  if gamma > 0:  # a Python float: static
    p = jax.nn.sigmoid(logits)
    p_t = jnp.clip(p * labels + (1 - p) * (1 - labels), FOCAL_EPS, 1 - FOCAL_EPS)
    cell = cell * (1 - p_t) ** gamma
  return _reduce(cell, _cell_weight(valid, label_mask), reduction)


def adaptive_threshold_loss(logits, threshold_logits, labels, valid, label_mask,
                            reduction: str = "sum"):
  """ATLOP: positives must beat the threshold class, the threshold must beat
  every negative. `threshold_logits` has the pair axes of `logits` ([S, P])."""
  neg_inf = jnp.finfo(jnp.float32).min
  labels = labels.astype(jnp.float32) * label_mask.astype(jnp.float32)
  real = label_mask.astype(bool)
  th = threshold_logits[..., None].astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  # Positives against the threshold: softmax over {positives, TH}.
  pos_logits = jnp.where(labels > 0, logits, neg_inf)
  pos_norm = jax.nn.logsumexp(jnp.concatenate([pos_logits, th], -1), axis=-1)
  loss_pos = (labels * (pos_norm[..., None] - logits)).sum(-1)
  # The threshold against negatives: softmax over {negatives, TH}.
  neg_logits = jnp.where((labels == 0) & real, logits, neg_inf)
  neg_norm = jax.nn.logsumexp(jnp.concatenate([neg_logits, th], -1), axis=-1)
  loss_th = neg_norm - th[..., 0]
  weight = valid.astype(jnp.float32)
  return _reduce(loss_pos + loss_th, weight, reduction)


def valid_pairs(batch) -> jax.Array:
  """[S, P] mask of the packed pairs that count: only real candidate pairs
  of real entities and documents are packed (data/pairs.py), the rest is
  padding."""
  return batch["pair_mask"].astype(bool)


def relation_loss(output, batch, kind: str = "focal", alpha: float = 0.8,
                  gamma: float = 3.0, reduction: str = "sum") -> jax.Array:
  """Dispatches on `kind` (one of LOSSES) for a `GLiDREOutput` and a batch."""
  valid = valid_pairs(batch)
  args = (batch["pair_labels"], valid, batch["label_mask"])
  if kind == "focal":
    return focal_loss(output.logits, *args, alpha=alpha, gamma=gamma,
                      reduction=reduction)
  if kind == "bce":
    return bce_loss(output.logits, *args, reduction=reduction)
  if kind == "adaptive_threshold":
    if output.threshold_logits is None:
      raise ValueError("the adaptive_threshold loss needs model.adaptive_threshold=True")
    return adaptive_threshold_loss(output.logits, output.threshold_logits, *args,
                                   reduction=reduction)
  raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")

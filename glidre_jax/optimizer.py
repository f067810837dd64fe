"""The optimizer of a training run: AdamW in the official parameter groups,
gradient clipping and accumulation (`make_optimizer`)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from glidre_jax.model import params as model_params

# The official optimizer groups (glidre/training_utils.py:create_optimizer):
# every parameter under `token_rep_layer` (both encoders and their
# projections) at lr_encoder, everything else at lr_head; no weight decay on
# biases and LayerNorm parameters. Our parameter paths mirror the official
# state-dict keys, so the same names decide.
ENCODER_SCOPE, LABEL_ENCODER = model_params.ENCODER_SCOPE, model_params.LABEL_ENCODER_PATH[1]
# nnx.LayerNorm's parameters are `scale` and `bias`; no other module of the
# model has a `scale` (tests/test_optimizer.py checks it).
NO_DECAY_LEAVES = ("bias", "scale")


def _names(path) -> list[str]:
  return [str(getattr(p, "key", p)) for p in path]


def param_groups(params, freeze_label_encoder: bool) -> Any:
  """'encoder' for `token_rep_layer.*`, 'head' for everything else, and
  'frozen' for the label encoder's own weights when it is not trained."""
  def group(path, _):
    names = _names(path)
    if freeze_label_encoder and LABEL_ENCODER in names:
      return "frozen"
    return "encoder" if ENCODER_SCOPE in names else "head"
  return jax.tree_util.tree_map_with_path(group, params)


def decay_mask(params) -> Any:
  """True where AdamW applies weight decay (not biases, not LayerNorm)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _names(path)[-1] not in NO_DECAY_LEAVES, params)


def learning_rate_schedules(train_cfg) -> dict[str, optax.Schedule]:
  """Per-group learning rate against the optimizer-update count: linear
  warm-up from 0 over warmup_fraction of train.steps, then cosine to 0 at
  train.steps (transformers' get_cosine_schedule_with_warmup, as official)."""
  steps = train_cfg.steps
  warmup = max(int(train_cfg.warmup_fraction * steps), 1)
  return {name: optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup_steps=warmup, decay_steps=max(steps, warmup + 1))
          for name, peak in (("encoder", train_cfg.lr_encoder), ("head", train_cfg.lr_head))}


def clip_grad_norm(max_norm: float, eps: float = 1e-6) -> optax.GradientTransformation:
  """torch.nn.utils.clip_grad_norm_, as the official loop calls it: every
  gradient times min(1, max_norm / (global norm + eps)).

  The scale is one scalar multiply, which XLA fuses into each consumer (the
  AdamW moments); optax.clip_by_global_norm divides and selects, which XLA
  materialises as a parameter-sized temporary (273 MB on the same-work
  model) and ~2 more kernels an array."""
  def update(updates, state, params=None):
    del params
    norm = optax.global_norm(updates)
    scale = jnp.minimum(max_norm / (norm + eps), 1.0)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(train_cfg, params) -> optax.GradientTransformation:
  """AdamW (official groups, see above), clipping, accumulation.

  `train.steps` counts optimizer updates: with grad_accum = k, one update
  consumes k micro-batches (optax.MultiSteps averages their gradients;
  clipping and AdamW act on the average, as the official loop does).
  """
  tx = optax.chain(
      clip_grad_norm(train_cfg.clip_norm),
      optax.multi_transform(
          # mask is a callable: it sees each group's own subtree.
          {name: optax.adamw(schedule, weight_decay=train_cfg.weight_decay, mask=decay_mask)
           for name, schedule in learning_rate_schedules(train_cfg).items()}
          | {"frozen": optax.set_to_zero()},
          param_groups(params, train_cfg.freeze_label_encoder)))
  if train_cfg.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=train_cfg.grad_accum)
  return tx

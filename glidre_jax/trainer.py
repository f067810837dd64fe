"""Optimizer, train state and the one jitted train step (inference: glidre_jax.inference)."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from glidre_jax import inference, losses, sharding
from glidre_jax.data import pipeline
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


def make_optimizer(train_cfg, params) -> optax.GradientTransformation:
  """AdamW (official groups, see above), clipping, accumulation.

  `train.steps` counts optimizer updates: with grad_accum = k, one update
  consumes k micro-batches (optax.MultiSteps averages their gradients;
  clipping and AdamW act on the average, as the official loop does).
  """
  tx = optax.chain(
      optax.clip_by_global_norm(train_cfg.clip_norm),
      optax.multi_transform(
          # mask is a callable: it sees each group's own subtree.
          {name: optax.adamw(schedule, weight_decay=train_cfg.weight_decay, mask=decay_mask)
           for name, schedule in learning_rate_schedules(train_cfg).items()}
          | {"frozen": optax.set_to_zero()},
          param_groups(params, train_cfg.freeze_label_encoder)))
  if train_cfg.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=train_cfg.grad_accum)
  return tx


@dataclasses.dataclass
class TrainState:
  step: jax.Array  # micro-steps taken (optimizer updates × grad_accum)
  params: Any  # nnx.State of nnx.Param
  rest: Any  # other model state (dropout rng streams)
  opt_state: Any
  metrics: dict  # on-device sums since the last fetch


jax.tree_util.register_dataclass(
    TrainState, data_fields=["step", "params", "rest", "opt_state", "metrics"],
    meta_fields=[])


def empty_metrics() -> dict:
  return {"loss_sum": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32),
          "grad_norm_sum": jnp.zeros((), jnp.float32)}


def abstract_state(params, rest, train_cfg) -> TrainState:
  """The shapes of a run's TrainState (restore target), nothing allocated."""
  tx = make_optimizer(train_cfg, params)
  return jax.eval_shape(lambda p, r: TrainState(
      step=jnp.zeros((), jnp.int32), params=p, rest=r, opt_state=tx.init(p),
      metrics=empty_metrics()), params, rest)


class Trainer:
  """Holds the static parts (graph defs, optimizer, mesh) of a training run.

  Parameters and optimizer state are replicated over the mesh; documents are
  split over its 'data' axis and the pair tensors over its 'model' axis
  (`glidre_jax.sharding`).
  """

  def __init__(self, model: nnx.Module, train_cfg, mesh: jax.sharding.Mesh | None = None):
    self.train_cfg = train_cfg
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    model.train()
    self.train_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    self.eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
    # Plain arrays (no Variable objects) in the state: one stable pytree
    # structure for optax, orbax and jit's cache.
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    self.tx = make_optimizer(train_cfg, params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                       opt_state=self.tx.init(params), metrics=empty_metrics())
    self.state_sharding = jax.tree.map(lambda _: sharding.named(self.mesh), state)
    self.initial_state = sharding.replicate(state, self.mesh)
    self.batch_sharding = sharding.named(self.mesh, "batch")
    self._train_step_jit = jax.jit(self._train_step, donate_argnums=0,
                                   out_shardings=self.state_sharding)
    self.predictor = inference.Predictor(self.eval_graphdef, self.mesh)
    self.num_traces = 0  # how often the train step was traced (compiles)

  def train_step(self, state: TrainState, batch: dict) -> TrainState:
    """One micro-step (an optimizer update every train.grad_accum of them);
    `batch` as placed by `pipeline.to_device`."""
    with jax.set_mesh(self.mesh):  # sharding.constrain resolves against it
      return self._train_step_jit(state, batch)

  def place(self, batch: dict) -> dict:
    """A process-local numpy batch -> global arrays on the mesh."""
    return pipeline.to_device(batch, self.batch_sharding)

  def lower(self, state: TrainState, batch: dict):
    """Ahead-of-time lowering of the train step (memory analysis, dry runs)."""
    with jax.set_mesh(self.mesh):
      return self._train_step_jit.lower(state, batch)

  def _loss(self, params, rest, batch):
    # Fresh Variables at this trace level: dropout updates its rng counter.
    rest = jax.tree.map(lambda x: x, rest)
    model = nnx.merge(self.train_graphdef, params, rest)
    cfg = self.train_cfg
    label_vectors = model.encode_labels(batch["label_input_ids"], batch["label_attention_mask"],
                                        freeze_encoder=cfg.freeze_label_encoder)
    output = model(batch, label_vectors)
    loss = losses.relation_loss(output, batch, cfg.loss, alpha=cfg.focal_alpha,
                                gamma=cfg.focal_gamma)
    return loss, nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))

  def _train_step(self, state: TrainState, batch) -> TrainState:
    self.num_traces += 1  # runs at trace time only
    (loss, rest), grads = jax.value_and_grad(self._loss, has_aux=True)(
        state.params, state.rest, batch)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss_sum": state.metrics["loss_sum"] + loss,
               "count": state.metrics["count"] + 1,
               "grad_norm_sum": state.metrics["grad_norm_sum"] + optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=params, rest=rest,
                      opt_state=opt_state, metrics=metrics)

  def fetch_metrics(self, state: TrainState) -> tuple[dict, TrainState]:
    """Host copy of the accumulated metrics, and the state with them reset."""
    m = jax.device_get(state.metrics)
    n = max(int(m["count"]), 1)
    out = {"loss": float(m["loss_sum"]) / n, "grad_norm": float(m["grad_norm_sum"]) / n}
    # Same shardings as before, or the next train step would compile again.
    fresh = sharding.replicate(empty_metrics(), self.mesh)
    return out, dataclasses.replace(state, metrics=fresh)

"""Train state and the jitted train step (on XLA:CPU: gradients per batch
shape, the optimizer update compiled once; the optimizer: glidre_jax.optimizer;
inference: glidre_jax.inference)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from glidre_jax import inference, losses, sharding
from glidre_jax.data import batch as batch_lib
from glidre_jax.data import pipeline
from glidre_jax.model import glidre
from glidre_jax.optimizer import make_optimizer


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


def _rng_state(model: nnx.Module):
  """The model's state other than parameters (dropout rng streams), as arrays."""
  return nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))


def split_encoder_params(params) -> tuple[Any, Any]:
  """(encoder-side, pair-scoring) parts of a parameter state (or a tree of
  its shardings): `GLiDREModel.ENCODER_PARTS` and the rest."""
  return params.split(lambda path, _: path[0] in glidre.GLiDREModel.ENCODER_PARTS, ...)


def abstract_state(params, rest, train_cfg) -> TrainState:
  """The shapes of a run's TrainState (restore target), nothing allocated."""
  tx = make_optimizer(train_cfg, params)
  return jax.eval_shape(lambda p, r: TrainState(
      step=jnp.zeros((), jnp.int32), params=p, rest=r, opt_state=tx.init(p),
      metrics=empty_metrics()), params, rest)


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Per-device bytes of the two executables of a train step, as one step:
  `argument` the resident state and the batch, `temp` the larger of the
  gradient executable's temporaries and gradients (its outputs) and the
  update's temporaries with the gradients it consumes; the update's outputs
  alias the donated state. Field names as XLA's CompiledMemoryStats."""
  argument_size_in_bytes: int
  output_size_in_bytes: int
  alias_size_in_bytes: int
  temp_size_in_bytes: int
  generated_code_size_in_bytes: int


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """The executables of a train step (Trainer.split_update: two, else one
  in `grads` and `update` None)."""
  grads: Any  # jax.stages.Compiled: the gradients, per batch shape (or the whole step)
  update: Any  # jax.stages.Compiled: the optimizer update, the same for every shape
  optimizer_bytes: int  # per device: the state outside the gradients' arguments

  def memory_analysis(self) -> StepMemory | None:
    if self.update is None:  # one executable: XLA's own analysis
      return self.grads.memory_analysis()
    g, u = self.grads.memory_analysis(), self.update.memory_analysis()
    if g is None or u is None:
      return None
    grads = g.output_size_in_bytes  # the gradients (and loss, rng state)
    return StepMemory(
        argument_size_in_bytes=g.argument_size_in_bytes + self.optimizer_bytes,
        output_size_in_bytes=u.output_size_in_bytes,
        alias_size_in_bytes=u.alias_size_in_bytes,
        temp_size_in_bytes=max(g.temp_size_in_bytes, u.temp_size_in_bytes) + grads,
        generated_code_size_in_bytes=(g.generated_code_size_in_bytes
                                      + u.generated_code_size_in_bytes))


@dataclasses.dataclass(frozen=True)
class LoweredStep:
  grads: Any  # jax.stages.Lowered, as CompiledStep
  update: Any
  optimizer_bytes: int

  def compile(self) -> CompiledStep:
    update = None if self.update is None else self.update.compile()
    return CompiledStep(self.grads.compile(), update, self.optimizer_bytes)


def device_bytes(tree) -> int:
  """Bytes one device holds of a tree of (abstract) arrays with shardings
  (PRNG keys left out)."""
  def one(x):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    return int(np.prod(shape)) * np.dtype(x.dtype).itemsize
  return sum(one(x) for x in jax.tree.leaves(tree)
             if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))


# Label token fields: with a frozen label encoder, Trainer.place swaps them
# for a host-side key of the label set (LABEL_SET) and the step receives the
# set's cached pooled label-encoder states instead.
LABEL_SET = "label_set"
MAX_LABEL_SETS = 64  # cached label sets (open labels draw a new set per batch)


class Trainer:
  """Holds the static parts (graph defs, optimizer, mesh) of a training run.

  Documents are split over the mesh's 'data' axis and the pair tensors over
  its 'model' axis (`glidre_jax.sharding`). Parameters and optimizer state
  are replicated, or with `fsdp` split over 'data' (ZeRO-3: each array along
  its largest divisible axis; `sharding.fsdp_axes`).

  With train.freeze_label_encoder the label encoder is not run in the step:
  its pooled states (eval mode, no dropout) are computed once per label set
  and fed to the step, where the labels projection and prompt_rep_layer
  still train. `model` may be abstract (`nnx.eval_shape`) for `lower` alone.
  """

  def __init__(self, model: nnx.Module, train_cfg, mesh: jax.sharding.Mesh | None = None, *,
               fsdp: bool = False, fsdp_min_size: int = sharding.FSDP_MIN_SIZE,
               split_update: bool | None = None, stage_encoders: bool | None = None):
    self.train_cfg = train_cfg
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    self.frozen_labels = bool(train_cfg.freeze_label_encoder)
    model.train()
    self.train_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    self.eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
    # Plain arrays (no Variable objects) in the state: one stable pytree
    # structure for optax, orbax and jit's cache.
    self._params, self._rest = nnx.as_pure(params), nnx.as_pure(rest)
    self.tx = make_optimizer(train_cfg, self._params)
    shapes = jax.eval_shape(self._new_state, self._params, self._rest)
    self.state_sharding = sharding.state_shardings(shapes, self.mesh, fsdp, fsdp_min_size)
    # The state's shapes with their shardings: what `lower` needs, nothing allocated.
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
        self.state_sharding)
    self.batch_sharding = sharding.named(self.mesh, "batch")
    # On XLA:CPU the step runs as two executables: the gradients, compiled
    # per batch shape, and the optimizer update, compiled once. XLA:CPU keeps
    # ~55-85 KB per compiled kernel for the executable's life, and AdamW with
    # clipping makes ~5 kernels per parameter array (~1 200 on the same-work
    # model): in one jitted step they were compiled again for every shape.
    # Elsewhere one step: XLA may then place the gradients in memory the
    # forward activations freed (up to ~45 % of the gradients' bytes on CPU),
    # which counts more on an accelerator than a few MB of code per shape.
    if split_update is None:
      split_update = self.mesh.devices.flat[0].platform == "cpu"
    self.split_update = bool(split_update)
    # train.stage_encoders (split steps only): the gradients in three parts,
    # the encoders' compiled once per encoder input shape (`_staged_grads`).
    if stage_encoders is None:
      stage_encoders = train_cfg.stage_encoders
    self.stage_encoders = self.split_update and bool(stage_encoders)
    self._grads_jit = jax.jit(self._grads, out_shardings=(
        sharding.named(self.mesh), self.state_sharding.rest, self.state_sharding.params))
    # The split step's gradients in three parts (`_staged_grads`).
    self._encode_jit = jax.jit(self._encode)
    self._score_jit = jax.jit(self._score_grads)
    self._encoder_grads_jit = jax.jit(self._encoder_grads)
    self._update_jit = jax.jit(self._update, donate_argnums=0,
                               out_shardings=self.state_sharding)
    self._step_jit = jax.jit(self._step, donate_argnums=0, out_shardings=self.state_sharding)
    self._label_jit = jax.jit(self._label_states, out_shardings=sharding.named(self.mesh))
    self._label_cache: dict = {}  # label-set key -> pooled states [K, d_label]
    self._last_params = None  # the parameters the last step returned
    self.predictor = inference.Predictor(self.eval_graphdef, self.mesh)
    self.num_traces = 0  # how often the train step (staged: its pair scoring) was traced
    self.encoder_traces = 0  # traces of the staged step's encoder parts (stage_encoders)
    self.label_encodes = 0  # label sets run through the label encoder (frozen)

  def _new_state(self, params, rest) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                      opt_state=self.tx.init(params), metrics=empty_metrics())

  @functools.cached_property
  def initial_state(self) -> TrainState:
    """Step 0, placed with `state_sharding` (built on first use). The trainer
    then lets go of the model's arrays: the first step donates this state,
    and a buffer still referenced elsewhere cannot be donated: XLA would keep
    the initial parameters alive beside the updated ones for the whole run."""
    shard = self.state_sharding
    params, rest = sharding.put((self._params, self._rest), (shard.params, shard.rest))
    self._params = self._rest = None
    # put's arrays may alias host memory, which XLA cannot donate: the state
    # gets buffers of its own (a copy), its optimizer state built in place.
    own = lambda p, r: self._new_state(*jax.tree.map(jnp.copy, (p, r)))
    return jax.jit(own, out_shardings=shard)(params, rest)

  def train_step(self, state: TrainState, batch: dict) -> TrainState:
    """One micro-step (an optimizer update every train.grad_accum of them);
    `batch` as placed by `Trainer.place`."""
    batch = dict(batch)
    key = batch.pop(LABEL_SET, None)
    labels = None
    if self.frozen_labels:
      tokens = {k: batch.pop(k) for k in batch_lib.LABEL_TOKEN_FIELDS}
      labels = self.label_states(state, key, tokens)
    with jax.set_mesh(self.mesh):  # sharding.constrain resolves against it
      if not self.split_update:
        state = self._step_jit(state, batch, labels)
      else:  # dispatched one after the other, no host sync between
        gradients = self._staged_grads if self.stage_encoders else self._grads_jit
        loss, rest, grads = gradients(state.params, state.rest, batch, labels)
        state = self._update_jit(state, loss, rest, grads)
    self._last_params = state.params
    return state

  def label_states(self, state: TrainState, key, tokens: dict) -> jax.Array:
    """Pooled eval-mode label-encoder states [K, d_label] of a label set,
    cached by `key` (None: not cached) while the parameters are those this
    trainer's last step returned (restored or other ones start it afresh)."""
    if state.params is not self._last_params:
      self._label_cache.clear()
    if key in self._label_cache:
      return self._label_cache[key]
    with jax.set_mesh(self.mesh):
      pooled = self._label_jit(state.params, state.rest, tokens)
    self.label_encodes += 1
    if key is not None:
      if len(self._label_cache) >= MAX_LABEL_SETS:
        self._label_cache.pop(next(iter(self._label_cache)))
      self._label_cache[key] = pooled
    return pooled

  def place(self, batch: dict) -> dict:
    """A process-local numpy batch -> global arrays on the mesh (plus, with a
    frozen label encoder, the host-side key of its label set)."""
    placed = pipeline.to_device(batch, self.batch_sharding)
    if self.frozen_labels:
      placed[LABEL_SET] = tuple((k, np.shape(batch[k]), np.asarray(batch[k]).tobytes())
                                for k in batch_lib.LABEL_TOKEN_FIELDS)
    return placed

  def lower(self, state: TrainState, batch: dict):
    """Ahead-of-time lowering of the train step (memory analysis, dry runs);
    `state` and `batch` may be shapes (`abstract_state`, ShapeDtypeStructs).
    A staged step (`stage_encoders`) is analysed as its gradients in one
    executable."""
    batch = {k: v for k, v in batch.items() if k != LABEL_SET}
    labels = None
    if self.frozen_labels:
      tokens = {k: batch.pop(k) for k in batch_lib.LABEL_TOKEN_FIELDS}
      with jax.set_mesh(self.mesh):
        labels = jax.eval_shape(self._label_jit, state.params, state.rest, tokens)
      labels = jax.ShapeDtypeStruct(labels.shape, labels.dtype, sharding=sharding.named(self.mesh))
    with jax.set_mesh(self.mesh):
      if not self.split_update:
        return LoweredStep(self._step_jit.lower(state, batch, labels), None, 0)
      grads = self._grads_jit.lower(state.params, state.rest, batch, labels)
      # The gradients' outputs: the loss, the rng state and the gradients.
      loss = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.named(self.mesh))
      abstract = self.abstract_state
      update = self._update_jit.lower(state, loss, abstract.rest, abstract.params)
    optimizer = device_bytes((state.step, state.opt_state, state.metrics))
    return LoweredStep(grads, update, optimizer)

  def _label_states(self, params, rest, tokens):
    model = nnx.merge(self.eval_graphdef, params, rest)
    return model.token_rep_layer.encode_label_tokens(tokens)

  def _loss(self, params, rest, batch, label_states):
    model = self._model(params, rest)
    output = model(batch, self._label_vectors(model, batch, label_states))
    return self._relation_loss(output, batch), _rng_state(model)

  def _relation_loss(self, output, batch):
    cfg = self.train_cfg
    return losses.relation_loss(output, batch, cfg.loss, alpha=cfg.focal_alpha,
                                gamma=cfg.focal_gamma)

  def _grads(self, params, rest, batch, label_states):
    """(loss, updated rest, gradients) of a micro-batch: per batch shape."""
    self.num_traces += 1  # runs at trace time only
    (loss, rest), grads = jax.value_and_grad(self._loss, has_aux=True)(
        params, rest, batch, label_states)
    # Back to the parameters' own shardings (FSDP: a reduce-scatter).
    return loss, rest, jax.lax.with_sharding_constraint(grads, self.state_sharding.params)

  def _staged_grads(self, params, rest, batch, label_states):
    """`_grads` in three executables: the encoders' forward and backward are
    compiled per encoder input shape (subwords, words, labels), only the pair
    scoring per batch shape. The encoders are ~90 % of the gradient step's
    kernels (same-work model: 1 843 of 2 035), which XLA:CPU keeps resident
    for every shape compiled. The cost: the forward's residuals cross an
    executable boundary, so they are saved at matmul outputs only (the rest
    recomputed in the backward) and all live until the encoders' backward
    (the same-work step 1.80 -> 1.92 s, the default's 0.79 -> 0.97 s)."""
    encoder_params, head_params = split_encoder_params(params)
    text = {k: batch[k] for k in batch_lib.TEXT_FIELDS + batch_lib.LABEL_TOKEN_FIELDS
            if k in batch}
    outputs, pullback, rest = self._encode_jit(encoder_params, head_params, rest, text,
                                               label_states)
    loss, rest, head_grads, d_outputs = self._score_jit(encoder_params, head_params, rest,
                                                        batch, outputs)
    encoder_grads = self._encoder_grads_jit(pullback, d_outputs)
    return loss, rest, nnx.merge_state(encoder_grads, head_grads)

  def _model(self, params, rest) -> nnx.Module:
    # ZeRO-3: whole parameters for this step (a no-op when replicated).
    params = sharding.gather(params)
    # Fresh Variables at this trace level: dropout updates its rng counter.
    return nnx.merge(self.train_graphdef, params, jax.tree.map(lambda x: x, rest))

  def _label_vectors(self, model, batch, label_states):
    if label_states is None:  # the label encoder trains: run it here
      return model.encode_labels(batch)
    # frozen: the encoder's pooled states came in, no gradient into them
    return model.label_vectors(jax.lax.stop_gradient(label_states))

  def _encode(self, encoder_params, head_params, rest, text, label_states):
    """(word vectors, word attention, label vectors), their VJP (a pytree of
    the forward's residuals: jit returns it) and the rng state after."""
    self.encoder_traces += 1  # runs at trace time only
    def forward(params):
      model = self._model(nnx.merge_state(params, head_params), rest)
      label_vectors = self._label_vectors(model, text, label_states)  # as `_loss` orders them
      return (*model.encode_words(text), label_vectors), _rng_state(model)
    forward = jax.checkpoint(forward, policy=jax.checkpoint_policies.dots_saveable)
    outputs, pullback, rest = jax.vjp(forward, encoder_params, has_aux=True)
    return outputs, pullback, rest

  def _score_grads(self, encoder_params, head_params, rest, batch, outputs):
    """(loss, rng state, gradients of the pair-scoring parameters, cotangents
    of the encoders' outputs): per batch shape."""
    self.num_traces += 1  # runs at trace time only
    def loss_fn(params, outputs):
      model = self._model(nnx.merge_state(encoder_params, params), rest)
      return self._relation_loss(model.score(batch, *outputs), batch), _rng_state(model)
    (loss, rest), (grads, d_outputs) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        head_params, outputs)
    _, head_sharding = split_encoder_params(self.state_sharding.params)
    return loss, rest, jax.lax.with_sharding_constraint(grads, head_sharding), d_outputs

  def _encoder_grads(self, pullback, d_outputs):
    (grads,) = pullback(d_outputs)
    encoder_sharding, _ = split_encoder_params(self.state_sharding.params)
    return jax.lax.with_sharding_constraint(grads, encoder_sharding)

  def _step(self, state: TrainState, batch, label_states) -> TrainState:
    """The whole step in one executable (split_update off)."""
    loss, rest, grads = self._grads(state.params, state.rest, batch, label_states)
    return self._update(state, loss, rest, grads)

  def _update(self, state: TrainState, loss, rest, grads) -> TrainState:
    """The optimizer update and metric sums: the same for every batch shape."""
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

"""Orbax checkpoints of a run: the latest train state with the grain iterator
state (for exact resume), and the best-on-dev parameters."""
from __future__ import annotations

import pathlib

import grain
import jax
import orbax.checkpoint as ocp


def _keys_to_data(tree):
  """Typed PRNG keys -> raw uint32 data (what orbax can store)."""
  def to_data(x):
    if not _is_key(x):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.eval_shape(jax.random.key_data, x)
    return jax.random.key_data(x)
  return jax.tree.map(to_data, tree)


def _data_to_keys(tree, like):
  return jax.tree.map(lambda x, ref: jax.random.wrap_key_data(x) if _is_key(ref) else x,
                      tree, like)


def _is_key(x) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(
      x, "sharding", None)), _keys_to_data(tree))


class RunCheckpoints:
  """`workdir/checkpoints` (latest state + data iterator) and `workdir/best`."""

  def __init__(self, workdir: str | pathlib.Path, save_every: int):
    workdir = pathlib.Path(workdir).absolute()
    self.latest = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=1, save_interval_steps=save_every,
                                             create=True),
        item_names=("state", "data"))
    self.best = ocp.CheckpointManager(
        workdir / "best",
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        item_names=("params", "scores"))

  def save_latest(self, step: int, state, data_iterator, force: bool = False) -> bool:
    return self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_keys_to_data(state)),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)

  def restore_latest(self, state_like, data_iterator):
    """(step, state) from the latest checkpoint, the iterator restored in place;
    None when there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like)),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return step, _data_to_keys(restored.state, state_like)

  def save_best(self, step: int, params, scores: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), scores=ocp.args.JsonSave(scores)), force=True)

  def best_scores(self) -> dict | None:
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(
        scores=ocp.args.JsonRestore())).scores

  def restore_params(self, which: str, state_like):
    """Parameters of the 'best' or 'latest' checkpoint (`state_like`: a
    TrainState of the run, abstract is enough)."""
    if which == "best":
      step = self.best.latest_step()
      if step is None:
        raise FileNotFoundError("this run has no best checkpoint yet (no evaluation ran)")
      return self.best.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(_abstract(state_like.params)))).params
    if which != "latest":
      raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}")
    step = self.latest.latest_step()
    if step is None:
      raise FileNotFoundError("this run has no checkpoint")
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like))))
    return restored.state.params

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


def selected_threshold(workdir, which: str, default: float) -> float:
  """The τ a run's `which` checkpoint is used with: for 'best', the one it was
  selected at (`selected_threshold` in the scores saved with its parameters,
  glidre_jax.train); `default` for 'latest' (never selected) and for runs
  that stored none (written before thresholds were stored)."""
  if which != "best":
    return default
  checkpoints = RunCheckpoints(workdir, save_every=1)
  try:
    scores = checkpoints.best_scores()
  finally:
    checkpoints.close()
  if scores is None or scores.get("selected_threshold") is None:
    return default
  return float(scores["selected_threshold"])

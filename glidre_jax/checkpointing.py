"""Orbax checkpoints of a run: the latest train state with the grain iterator
state (for exact resume), and the best-on-dev parameters.

Saves are atomic (orbax writes a temporary directory and renames it when
complete), so a run killed mid-save leaves its previous checkpoints whole.
The KEEP_LATEST newest are kept: when the newest cannot be read (a truncated
or corrupt file), the run resumes from the one before, with a warning.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from glidre_jax import distributed

log = logging.getLogger(__name__)

KEEP_LATEST = 2  # a broken newest checkpoint falls back to the previous one
BROKEN_DIR = "broken_checkpoints"  # where unreadable checkpoints are moved


_LATEST_HELP = ("If they are damaged (a full disk, a copy cut short), delete those "
                "directories, or use a new --workdir, to train again from step 0.")
_BEST_HELP = ("If it is damaged, delete it (the next evaluation of a training run writes "
              "it again) or use the 'latest' checkpoint.")


class BrokenCheckpointError(RuntimeError):
  """No checkpoint of a run can be read; the message names them and what to do."""


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
    self.workdir = workdir = pathlib.Path(workdir).absolute()
    self.latest = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=KEEP_LATEST,
                                             save_interval_steps=save_every, create=True,
                                             cleanup_tmp_directories=True),
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
    """(step, state) from the newest checkpoint that can be read, the iterator
    restored in place; None when there is none.

    An unreadable newer checkpoint is reported (a warning naming it) and moved
    to `workdir/broken_checkpoints` once an older one restored; when none can
    be read, BrokenCheckpointError. Never silently starts from step 0.
    """
    args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(state_like)),
                              data=grain.checkpoint.CheckpointRestore(data_iterator))
    step, restored = self._newest_readable(self.latest, args, _LATEST_HELP, set_aside=True)
    if step is None:
      return None
    return step, _data_to_keys(restored.state, state_like)

  def _newest_readable(self, manager, args, what_to_do: str, set_aside: bool = False):
    """(step, restored) of the newest checkpoint of `manager` that restores
    on every process, or (None, None) when it has none. `set_aside`: move
    the newer unreadable ones away once an older one restored."""
    broken = []
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        with _reads_finish_before_their_loop_closes():
          restored, error = manager.restore(step, args=args), None
      except Exception as e:  # noqa: BLE001 - any failure to read makes the checkpoint unusable
        restored, error = None, e
      if _on_every_process(error is None):
        if set_aside:
          self._set_aside(manager, [s for s, _, _ in broken])
        return step, restored
      path = _step_dir(manager, step)
      reason = _reason(error) if error is not None else "unreadable on another process"
      broken.append((step, path, reason))
      log.warning("checkpoint %s cannot be read (%s)%s", path, reason,
                  "; trying the previous one" if step != min(manager.all_steps()) else "")
    if broken:
      raise BrokenCheckpointError(
          f"no checkpoint of {manager.directory} can be read: "
          + "; ".join(f"{path} ({reason})" for _, path, reason in broken)
          + ". If the run's config changed since they were written (model sizes, encoders, "
          f"optimizer), use the config that wrote them. {what_to_do} Nothing was changed.")
    return None, None

  def _set_aside(self, manager, steps) -> None:
    """Moves unreadable checkpoints out of the manager's directory (kept for
    inspection), so that the resumed run can save those steps again."""
    if not steps:
      return
    if jax.process_index() == 0:
      target = self.workdir / BROKEN_DIR
      target.mkdir(parents=True, exist_ok=True)
      for step in steps:
        dest = target / f"{pathlib.Path(manager.directory).name}_{step}"
        n = 1
        while dest.exists():
          dest, n = target / f"{pathlib.Path(manager.directory).name}_{step}.{n}", n + 1
        _step_dir(manager, step).rename(dest)
        log.warning("moved the unreadable checkpoint of step %d to %s", step, dest)
    distributed.barrier("glidre_broken_checkpoints_moved")
    manager.reload()

  def save_best(self, step: int, params, scores: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), scores=ocp.args.JsonSave(scores)), force=True)

  def best_scores(self) -> dict | None:
    step, restored = self._newest_readable(
        self.best, ocp.args.Composite(scores=ocp.args.JsonRestore()), _BEST_HELP)
    return None if step is None else restored.scores

  def restore_params(self, which: str, params_like):
    """Parameters of the 'best' or 'latest' checkpoint (`params_like`: the
    model's parameters, abstract is enough); from 'latest' only the
    parameters of the train state are read, so no optimizer is needed.
    'latest' is the newest one that can be read (see restore_latest)."""
    if which == "best":
      manager, args = self.best, ocp.args.Composite(
          params=ocp.args.StandardRestore(_abstract(params_like)))
    elif which == "latest":
      manager, args = self.latest, ocp.args.Composite(state=ocp.args.PyTreeRestore(
          {"params": _abstract(params_like)}, partial_restore=True))
    else:
      raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}")
    if manager.latest_step() is None:
      raise FileNotFoundError(f"{self.workdir}: this run has no {which} checkpoint"
                              + (" yet (no evaluation ran)" if which == "best" else ""))
    _, restored = self._newest_readable(manager, args,
                                        _BEST_HELP if which == "best" else _LATEST_HELP)
    return restored.params if which == "best" else restored.state["params"]

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


def _step_dir(manager, step: int):
  return manager.directory / str(step)  # an epath.Path (local or gs://)


class _FinishingEventLoop(asyncio.SelectorEventLoop):
  """An event loop that outlives the reads it started.

  Orbax reads a checkpoint's arrays in a fresh loop (`asyncio.gather` of
  TensorStore reads) and closes it as soon as one read fails. The reads still
  in flight complete later on TensorStore's threads, whose callback into the
  closed loop raised "RuntimeError: Event loop is closed", printed as a
  traceback per read (more of them the slower the machine). Here the pending
  tasks are cancelled and run to their end before the loop closes (as
  asyncio.run does), and a read that completes after that (cancelling the
  task does not stop a read already running) has its result dropped: nobody
  waits for it any more.
  """

  def close(self) -> None:
    if not self.is_running() and not self.is_closed():
      pending = asyncio.all_tasks(self)
      for task in pending:
        task.cancel()
      if pending:
        self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    super().close()

  def call_soon_threadsafe(self, callback, *args, context=None):
    try:
      return super().call_soon_threadsafe(callback, *args, context=context)
    except RuntimeError:
      if self.is_closed():  # a read that outlived its restore (see above)
        return None
      raise


class _FinishingPolicy(asyncio.DefaultEventLoopPolicy):
  def new_event_loop(self) -> asyncio.AbstractEventLoop:
    return _FinishingEventLoop()


@contextlib.contextmanager
def _reads_finish_before_their_loop_closes():
  """Event loops created meanwhile (orbax's, for a restore) finish their
  pending reads before they close; see _FinishingEventLoop."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_FinishingPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


def _reason(error: BaseException) -> str:
  """The first line of an error's root cause (orbax wraps TensorStore's
  errors), without the library's nested details."""
  seen = {id(error)}
  while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
    error = inner
    seen.add(id(error))
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _on_every_process(ok: bool) -> bool:
  """True when `ok` holds on every process: all restore the same step."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


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


"""Gradient accumulation (train.grad_accum) and freeze_label_encoder on real
train steps of a tiny GLiDRE; the exact resume of a run killed mid-window."""
from __future__ import annotations

import pathlib

import jax
import numpy as np
import optax
import pytest

import tiny_training
from glidre_jax import trainer as trainer_lib


def _flat(params) -> dict[str, np.ndarray]:
  return {".".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}


def _changed(before: dict, after: dict) -> set[str]:
  return {k for k in before if not np.array_equal(before[k], after[k])}


def _concat(a: dict, b: dict) -> dict:
  """Two collated batches as one (document fields stacked, labels shared);
  each one's packed pairs become a pair shard, padded to the longer one."""
  from glidre_jax.data import batch as batch_lib
  p = max(a["pair_mask"].shape[1], b["pair_mask"].shape[1])
  pad = lambda x: np.pad(x, [(0, 0), (0, p - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
  return {k: (np.concatenate([pad(a[k]), pad(b[k])]) if k in batch_lib.PAIR_FIELDS
              else np.concatenate([a[k], b[k]]) if k in batch_lib.DOC_FIELDS else a[k])
          for k in a}


def _adam_moments(opt_state) -> list[np.ndarray]:
  """Every AdamW first moment (mu) of an optimizer state, in tree order."""
  adams = [x for x in jax.tree.leaves(opt_state,
                                      is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(x, optax.ScaleByAdamState)]
  return [np.asarray(m) for adam in adams for m in jax.tree.leaves(jax.device_get(adam.mu))]


# warm-up of 1 update: update 0 has lr 0 (as official), update 1 the peak; no
# clipping, so the gradients' scale reaches AdamW unchanged.
CFG = dict(steps=4, warmup_fraction=0.25, clip_norm=1e9)


@pytest.fixture(scope="module")
def big_batches():
  b = tiny_training.batches()  # 4 batches of 2 documents
  return [_concat(b[0], b[1]), _concat(b[2], b[3])]


@pytest.fixture(scope="module")
def plain_run(big_batches):
  """grad_accum=1 (label encoder frozen, the default) on batches of 4:
  parameters and AdamW moments before and after each update."""
  t = trainer_lib.Trainer(tiny_training.tiny_model(), tiny_training.train_config(**CFG))
  state = t.initial_state
  params, moments = [_flat(state.params)], []
  for batch in big_batches:
    state = t.train_step(state, t.place(batch))
    params.append(_flat(state.params))
    moments.append(_adam_moments(state.opt_state))
  return params, moments


def test_accumulation_updates_once_per_window_with_the_mean_gradient(plain_run):
  """grad_accum=2: nothing moves on a window's first micro-step, one update
  per two micro-steps (counted by MultiSteps and AdamW), and the update uses
  the mean of the two micro-batches' gradients: AdamW's first moment after
  one window of 2 × 2 documents is half that of one batch of the same 4
  (the loss sums over documents)."""
  accum = trainer_lib.Trainer(tiny_training.tiny_model(),
                              tiny_training.train_config(grad_accum=2, **CFG))
  init = _flat(accum.initial_state.params)
  state = accum.initial_state
  seen, moments = [], []
  for batch in tiny_training.batches():
    state = accum.train_step(state, accum.place(batch))
    seen.append(_flat(state.params))
    moments.append(_adam_moments(state.opt_state))
  assert _changed(init, seen[0]) == set()  # first micro-step: accumulated only
  assert not any(m.any() for m in moments[0])  # ... AdamW not run yet
  assert _changed(init, seen[1]) == set()  # update 0: lr 0
  assert _changed(seen[1], seen[2]) == set()  # first micro-step of window 2
  trained = set(init) - {k for k in init if k.startswith("token_rep_layer.labels_encoder.")}
  assert _changed(seen[2], seen[3]) == trained  # update 1 (label encoder frozen by default)
  assert int(state.opt_state.gradient_step) == 2 and int(state.step) == 4
  counts = {int(x.count) for x in jax.tree.leaves(
      state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(x, optax.ScaleByAdamState)}
  assert counts == {2}

  theirs_all = plain_run[1][0]
  # Summation order differs between the two batchings: compare against the
  # moments' overall scale (some gradients, e.g. of key biases, are ~0 noise).
  scale = max(float(np.abs(m).max()) for m in theirs_all)
  for mine, theirs in zip(moments[1], theirs_all, strict=True):
    np.testing.assert_allclose(2 * mine, theirs, rtol=1e-4, atol=1e-5 * scale)


def test_freeze_label_encoder(plain_run, big_batches):
  """Frozen (the default): the label encoder's own weights never change (its
  projection still trains); not frozen: they change with everything else."""
  frozen_params = plain_run[0]
  label_encoder = {k for k in frozen_params[0]
                   if k.startswith("token_rep_layer.labels_encoder.")}
  changed = _changed(frozen_params[0], frozen_params[-1])
  assert label_encoder and "token_rep_layer.labels_projection.kernel" in changed
  assert changed == set(frozen_params[0]) - label_encoder
  t = trainer_lib.Trainer(tiny_training.tiny_model(),
                          tiny_training.train_config(freeze_label_encoder=False, **CFG))
  state = t.initial_state
  for batch in big_batches:
    state = t.train_step(state, t.place(batch))
  assert _changed(frozen_params[0], _flat(state.params)) == set(frozen_params[0])


@pytest.mark.slow
def test_run_killed_mid_window_resumes_the_same_curve(tmp_path, monkeypatch):
  """grad_accum=2, checkpoint every 2 updates: killed (an exception, whose
  `finally` lets the in-flight step-2 save land) on the second micro-batch
  of update 3, the rerun restarts from update 2 and logs the uninterrupted
  run's losses."""
  from glidre_jax import train as train_lib
  from glidre_jax.data import pipeline
  from test_train import small_config

  def config(path):
    c = small_config(path, steps=4)
    c.data.tfds_dir = str(tmp_path / "tfds")  # built once for the three runs
    c.data.batch_size = 1
    c.train.grad_accum = 2
    return c

  full = train_lib.train(config(tmp_path / "a"), pathlib.Path(tmp_path / "a"))
  assert full["micro_steps"] == 8 and full["steps"] == 4
  calls = {"n": 0}
  real_to_device = pipeline.to_device

  def dying_to_device(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 6:  # update 3's second micro-batch; its first was trained on
      raise KeyboardInterrupt("killed")
    return real_to_device(*args, **kwargs)

  monkeypatch.setattr(pipeline, "to_device", dying_to_device)
  with pytest.raises(KeyboardInterrupt):
    train_lib.train(config(tmp_path / "b"), pathlib.Path(tmp_path / "b"))
  monkeypatch.setattr(pipeline, "to_device", real_to_device)
  resumed = train_lib.train(config(tmp_path / "b"), pathlib.Path(tmp_path / "b"))
  full_losses, resumed_losses = dict(full["logged_losses"]), dict(resumed["logged_losses"])
  assert sorted(resumed_losses) == [3, 4]
  assert resumed["micro_steps"] == 8
  for step, loss in resumed_losses.items():
    np.testing.assert_allclose(loss, full_losses[step], rtol=1e-6, err_msg=f"update {step}")

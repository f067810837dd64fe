"""Multi-process data and training: every process builds the same global
batch shapes, and two processes (gloo) train like one."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from glidre_jax.data import windows
from glidre_jax.data.featurize import Buckets
from glidre_jax.data.pipeline import build_dataset, make_iterator

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _shapes(batch):
  return {k: v.shape for k, v in batch.items() if k != "meta"}


def _local_bucket(batch, docs, tok, schema, buckets, max_length, stride):
  """The shape this process's rows alone would pick (the old behaviour)."""
  index = {n: k for k, n in enumerate(schema.names)}
  feats = [windows.featurize_long(docs[i], tok, index, max_length, stride)
           for i in batch["meta"]["doc_index"] if i >= 0]
  if any(windows.is_windowed(f) for f in feats):
    return ("windows",) + tuple(np.max([windows.window_shape(windows.as_windowed(f))
                                        for f in feats], axis=0))
  return buckets.pick(*np.max([(len(f["input_ids"]), len(f["word_index"]),
                                len(f["entity_mask"])) for f in feats], axis=0))


@pytest.mark.parametrize("stride", [0, 128])
def test_every_process_builds_the_shapes_of_the_global_batch(tok, schema, dev_docs, stride):
  """Two processes' halves of each global batch have one shape, the shape of
  the one-process batch, although their own rows would pick different
  buckets (the cause of a gloo 'collective mismatch' crash)."""
  docs, max_length = dev_docs[:48], 256 if stride else 512
  buckets = Buckets((128, 256, 512), (64, 128, 256, 512), (16, 32, 48))
  kw = dict(tokenizer=tok, label_names=schema.names, buckets=buckets, max_length=max_length,
            train=True, seed=0, sort_window=4, num_epochs=1, window_stride=stride)
  run = lambda b, p, n: list(make_iterator(build_dataset(docs, batch_size=b, shard_index=p,
                                                         num_shards=n, **kw), num_threads=1))
  single, halves = run(4, 0, 1), [run(2, p, 2) for p in range(2)]
  assert len(single) == len(halves[0]) == len(halves[1]) == 12
  differ = 0
  for whole, a, b in zip(single, *halves):
    assert _shapes(a) == _shapes(b), (_shapes(a), _shapes(b))
    assert {k: (4,) + v[1:] for k, v in _shapes(a).items() if v and v[0] == 2} == {
        k: v for k, v in _shapes(whole).items() if v and v[0] == 4}
    assert list(a["meta"]["doc_index"]) + list(b["meta"]["doc_index"]) == list(
        whole["meta"]["doc_index"])
    for name in ("input_ids", "labels", "entity_word_weights"):
      np.testing.assert_array_equal(np.concatenate([a[name], b[name]]), whole[name])
    local = [_local_bucket(h, docs, tok, schema, buckets, max_length, stride) for h in (a, b)]
    differ += local[0] != local[1]
  assert len({str(_shapes(w)) for w in single}) > 1  # several buckets crossed
  assert differ > 0  # rows alone would have disagreed on some batches
  if stride:
    assert {w["input_ids"].ndim for w in single} == {2, 3}  # windowed and single-pass batches


def _args(tmp_path, workdir, batch_size, extra=()):
  return ["--config=configs/default.py:tiny", f"--workdir={workdir}",
          "--config.mesh.data=2", "--config.mesh.model=2",
          f"--config.data.batch_size={batch_size}", "--config.data.eval_batch_size=2",
          "--config.data.max_length=128", "--config.data.seq_buckets=(128,)",
          "--config.data.word_buckets=(128,)", "--config.data.train_split=dev[:8]",
          "--config.data.eval_split=dev[400:402]", f"--config.data.tfds_dir={tmp_path / 'tfds'}",
          "--config.train.steps=4", "--config.train.log_every=1",
          "--config.train.eval_every=4", "--config.train.checkpoint_every=2", *extra]


def _losses(workdir):
  return {int(s): loss for s, loss in json.loads((workdir / "summary.json").read_text())[
      "logged_losses"]}


@pytest.mark.slow
def test_two_processes_match_one_and_resume_across_processes(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  single = tmp_path / "single"
  out = subprocess.run([sys.executable, "-m", "glidre_jax.train", *_args(tmp_path, single, 2)],
                       cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                            "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]

  multi = tmp_path / "multi"
  launcher = ["bash", "launch/local_multiprocess.sh"]
  menv = {**env, "NUM_PROCESSES": "2", "DEVICES_PER_PROCESS": "2", "PYTHON": sys.executable}
  # First half, stopping after the step-2 checkpoint (as if the job was cut).
  out = subprocess.run(launcher + _args(tmp_path, multi, 1, ["--config.train.stop_after_step=2"]),
                       cwd=REPO, capture_output=True, text=True, timeout=900, env=menv)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  first = _losses(multi)
  # Second half: both processes restore the checkpoint and continue.
  out = subprocess.run(launcher + _args(tmp_path, multi, 1), cwd=REPO, capture_output=True,
                       text=True, timeout=900, env=menv)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  second = _losses(multi)

  expected = _losses(single)
  assert sorted(first) == [1, 2] and sorted(second) == [3, 4]
  for step, loss in {**first, **second}.items():
    assert loss == pytest.approx(expected[step], rel=1e-5), (step, loss, expected[step])

"""Multi-process data and training: every process builds the same global
batch shapes, and two processes (gloo) train and resume like one."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from glidre_jax.data import batch as batch_lib
from glidre_jax.data import batching, windows
from glidre_jax.data.featurize import Buckets
from glidre_jax.data.pipeline import build_dataset, make_iterator

import tiny_run

REPO = pathlib.Path(__file__).resolve().parents[1]


def _shapes(batch):
  return {k: v.shape for k, v in batch.items() if k != "meta"}


def _local_bucket(batch, docs, tok, schema, buckets, max_length, stride):
  """The shape this process's rows alone would pick (the old behaviour)."""
  index = {n: k for k, n in enumerate(schema.names)}
  feats = [batching.featurize_long(docs[i], tok, index, max_length, stride)
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
  # One process with two data devices packs two pair shards; each of two
  # processes packs its own (one shard each): the same global pair arrays.
  run = lambda b, p, n, s: list(make_iterator(build_dataset(
      docs, batch_size=b, shard_index=p, num_shards=n, pair_shards=s, **kw), num_threads=1))
  single, halves = run(4, 0, 1, 2), [run(2, p, 2, 1) for p in range(2)]
  assert len(single) == len(halves[0]) == len(halves[1]) == 12
  differ = 0
  pair_fields = set(batch_lib.PAIR_FIELDS)
  for whole, a, b in zip(single, *halves):
    assert _shapes(a) == _shapes(b), (_shapes(a), _shapes(b))
    assert {k: (4,) + v[1:] for k, v in _shapes(a).items() if v and v[0] == 2} == {
        k: v for k, v in _shapes(whole).items() if v and v[0] == 4}
    assert {k: (2,) + v[1:] for k, v in _shapes(a).items() if k in pair_fields} == {
        k: v for k, v in _shapes(whole).items() if k in pair_fields}
    assert list(a["meta"]["doc_index"]) + list(b["meta"]["doc_index"]) == list(
        whole["meta"]["doc_index"])
    for name in ("input_ids", "entity_word_weights") + batch_lib.PAIR_FIELDS:
      np.testing.assert_array_equal(np.concatenate([a[name], b[name]]), whole[name])
    local = [_local_bucket(h, docs, tok, schema, buckets, max_length, stride) for h in (a, b)]
    differ += local[0] != local[1]
  assert len({str(_shapes(w)) for w in single}) > 1  # several buckets crossed
  assert differ > 0  # rows alone would have disagreed on some batches
  if stride:
    assert {w["input_ids"].ndim for w in single} == {2, 3}  # windowed and single-pass batches


def _free_port() -> str:
  """A port no other process listens on now: the launcher's random default
  could collide with another test's coordinator under pytest-xdist."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return str(s.getsockname()[1])


def _run_all(argv, env, timeout=600):
  """Runs a command and all its children; on timeout (a hung collective) the
  whole process group is killed and the test fails."""
  proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    log, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    log, _ = proc.communicate()
    pytest.fail(f"timed out after {timeout} s (a collective mismatch hangs):\n{log[-3000:]}")
  assert proc.returncode == 0, log[-5000:]
  return log


@pytest.mark.slow
def test_two_processes_cross_buckets_and_windows_and_resume_like_one(tmp_path):
  """2 processes × 2 devices on a (2, 2) mesh train like 1 process × 4 over
  global batches that take several of the embedded default's buckets,
  single-pass and windowed (documents over max_length subwords), and resume
  together from a checkpoint both wrote. Each process used to pick the
  bucket of its own rows and the run died in gloo ('Received data size
  doesn't match expected size')."""
  from glidre_jax.data.tokenize import load_tokenizer, minilm_path, tokenize_words
  encoder = tiny_run.tiny_bert(tmp_path / "bert")
  # Sorted by length, the global batches are [dev 8, dev 6] and [dev 7, dev 5]
  # (single-pass and 3 windows); each process holds one document of each (one
  # data device per process), whose own rows would pick other buckets.
  split, max_length, stride, steps = "dev[5:9]", 256, 128, 4
  # The embedded default's buckets; documents over 256 subwords come in windows.
  args = lambda workdir, batch_size, **extra: ["--config=configs/default.py", *tiny_run.train_args(
      encoder, workdir, tmp_path / "tfds", mesh__data=2, mesh__model=2,
      data__train_split=split, data__max_length=max_length, data__window_stride=stride,
      data__batch_size=batch_size, train__steps=steps, train__checkpoint_every=2, **extra)]
  from configs import default
  from glidre_jax.data import assets, readers, relations
  d = default.get_config().data
  assert (d.seq_buckets, d.word_buckets) == ((256, 512), (128, 256, 512))
  docs = readers.read_docred(assets.asset_path("redocred", "dev_revised.json"),
                             relations.RelationSchema.from_file(
                                 assets.asset_path("docred", "rel_info.json")))[5:9]
  tok = load_tokenizer(minilm_path())
  long_docs = [x.title for x in docs if len(tokenize_words(tok, x.words, 10**9).input_ids)
               > max_length]
  assert 0 < len(long_docs) < len(docs)  # every step is a whole epoch's half: both kinds

  single = tmp_path / "single"
  _run_all([sys.executable, "-m", "glidre_jax.train", *args(single, 2)],
           tiny_run.env(tmp_path / "cache_single", devices=4))
  multi = tmp_path / "multi"
  launcher = ["bash", "launch/local_multiprocess.sh"]
  menv = {**tiny_run.env(tmp_path / "cache_multi", devices=2), "NUM_PROCESSES": "2",
          "DEVICES_PER_PROCESS": "2", "PYTHON": sys.executable}
  # First half, stopping after the step-2 checkpoint (as if the job was cut).
  _run_all(launcher + args(multi, 1, train__stop_after_step=2),
           {**menv, "COORDINATOR_PORT": _free_port()})
  first = tiny_run.logged_losses(multi)
  # Second half: both processes restore the checkpoint and continue.
  log = _run_all(launcher + args(multi, 1), {**menv, "COORDINATOR_PORT": _free_port()})
  assert "resumed from step 2" in log
  one, two = (json.loads((w / "summary.json").read_text()) for w in (single, multi))
  # A compilation per global batch shape: both buckets were crossed in each half.
  assert one["train_step_compilations"] == two["train_step_compilations"] == 2
  expected, got = tiny_run.logged_losses(single), {**first, **tiny_run.logged_losses(multi)}
  print("1 process × 4 devices:", expected, "\n2 processes × 2 devices:", got)
  assert sorted(first) == [1, 2] and sorted(got) == sorted(expected) == list(range(1, steps + 1))
  for step, loss in got.items():
    assert loss == pytest.approx(expected[step], rel=1e-5), (step, loss, expected[step])

"""Preemption: a training process killed with a real SIGKILL (no `finally`
runs) at a random point after a checkpoint began, then restarted with the
same command, continues with the uninterrupted run's losses; a damaged
newest checkpoint falls back to the previous one; damaged run files stop
with an error that names them."""
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import tiny_run

REPO = tiny_run.REPO
STEPS, EVERY = 6, 2  # checkpoints at 2, 4, 6; the two newest are kept
TIMEOUT = 300


@pytest.fixture(scope="module")
def command(tmp_path_factory):
  """(argv builder, env) of one tiny single-bucket training command."""
  root = tmp_path_factory.mktemp("preempt")
  encoder = tiny_run.tiny_bert(root / "bert")

  def argv(workdir):
    return [sys.executable, "-m", "glidre_jax.train", "--config=configs/default.py",
            *tiny_run.train_args(encoder, workdir, root / "tfds",
                                 data__train_split="dev[:8]", data__batch_size=2,
                                 data__max_length=128, data__seq_buckets="(128,)",
                                 data__word_buckets="(128,)", data__entity_buckets="(48,)",
                                 data__pair_buckets=tiny_run.ONE_PAIR_BUCKET,
                                 train__steps=STEPS, train__checkpoint_every=EVERY)]
  return argv, tiny_run.env(root / "jax_cache", devices=1)


def _run(command, workdir):
  argv, env = command
  out = subprocess.run(argv(workdir), cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
  return out, out.stdout + out.stderr


@pytest.fixture(scope="module")
def reference(command, tmp_path_factory):
  """An uninterrupted run: its workdir and per-step losses."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  out, log = _run(command, workdir)
  assert out.returncode == 0, log[-4000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]  # max_to_keep=2
  losses = tiny_run.logged_losses(workdir)
  assert sorted(losses) == list(range(1, STEPS + 1))
  return workdir, losses


def _resumed_step(log: str) -> int | None:
  marker = "resumed from step "
  return int(log.split(marker, 1)[1].split()[0]) if marker in log else None


def _assert_same_curve(workdir, reference_losses, first_step):
  losses = tiny_run.logged_losses(workdir)
  assert sorted(losses) == list(range(first_step, STEPS + 1))
  for step, loss in losses.items():
    assert loss == pytest.approx(reference_losses[step], rel=1e-6), (step, loss)


def _save_step(name: str) -> int:
  """The step of a checkpoint directory ('4' or '4.orbax-checkpoint-tmp...')."""
  step = name.split(".")[0]
  return int(step) if step.isdigit() else -1


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_began_then_restart_resumes_exactly(command, reference,
                                                                       tmp_path):
  seed = int(os.environ.get("GLIDRE_KILL_SEED", time.time_ns() % 10**6))
  target = 2 * EVERY  # the second save: the first one is complete by then
  # Seconds after the save's directory appeared: mid-write, or just after it
  # was committed while training goes on.
  delay = random.Random(seed).uniform(0.0, 1.5)
  workdir = tmp_path / "run"
  argv, env = command
  proc = subprocess.Popen(argv(workdir), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpts = workdir / "checkpoints"
  deadline = time.time() + TIMEOUT
  try:
    while not (ckpts.is_dir() and any(_save_step(n) == target for n in os.listdir(ckpts))):
      assert proc.poll() is None, f"training ended before the step-{target} checkpoint"
      assert time.time() < deadline, "no checkpoint appeared"
      time.sleep(0.005)
    began = sorted(os.listdir(ckpts))
    # After `delay`, or as soon as the next save begins: training must still be
    # going on at the kill (a few short steps reach the next save within 1.5 s).
    stop = time.time() + delay
    while time.time() < stop and max(map(_save_step, os.listdir(ckpts))) <= target:
      time.sleep(0.005)
    at_kill = sorted(os.listdir(ckpts))
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  point = (f"seed {seed}: killed {delay:.3f} s after the step-{target} save began "
           f"(saw {began}; at the kill {at_kill})")
  print(point)
  assert proc.returncode == -signal.SIGKILL, point
  assert not (workdir / "summary.json").exists(), point  # it really died mid-run

  out, log = _run(command, workdir)
  assert out.returncode == 0, point + log[-4000:]
  resumed = _resumed_step(log)
  complete = [int(n) for n in at_kill if n.isdigit()]
  # Resumes from the newest complete checkpoint, never from scratch: the one
  # being written if it was committed, else the one before.
  assert resumed == max(complete) and resumed in (target - EVERY, target), (point, resumed)
  print(f"{point}; resumed from step {resumed}")
  _assert_same_curve(workdir, reference[1], resumed + 1)


def _damage(step_dir: pathlib.Path) -> pathlib.Path:
  """Truncates the largest file of a checkpoint to half its size."""
  victim = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with open(victim, "r+b") as f:
    f.truncate(victim.stat().st_size // 2)
  return victim


def test_a_failed_read_leaves_no_read_in_flight(tmp_path, monkeypatch):
  """Orbax reads a checkpoint's arrays concurrently and closes its event loop
  when the first read fails; reads still in flight used to call back into the
  closed loop from TensorStore's threads ("RuntimeError: Event loop is
  closed", a traceback each). Several MB-sized arrays behind the cut keep
  reads in flight when the first one fails."""
  import jax
  from glidre_jax import checkpointing
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  params = {f"w{i}": jax.random.normal(jax.random.key(i), (1_000_000,)) for i in range(8)}
  checkpoints = checkpointing.RunCheckpoints(tmp_path, save_every=1)
  try:
    checkpoints.save_best(1, params, {"f1": 0.5})
    checkpoints.wait()
    _damage(tmp_path / "best" / "1")
    with pytest.raises(checkpointing.BrokenCheckpointError, match=re.escape(
        f"{tmp_path / 'best' / '1'} (ValueError: OUT_OF_RANGE")):
      checkpoints.restore_params("best", params)
    time.sleep(1.0)  # the reads that were in flight have ended by now
  finally:
    checkpoints.close()
  assert [repr(u.exc_value) for u in unraisable] == []


def test_a_read_that_outlives_its_restore_is_dropped_quietly(monkeypatch):
  """The race behind the test above, made certain: a read that was already
  running when orbax closed its loop (cancelling the task does not stop it)
  completes on another thread and calls back into the closed loop, as
  TensorStore does (loop.call_soon_threadsafe). Its result is dropped; other
  misuse of a closed loop still raises."""
  import asyncio
  import threading
  from glidre_jax import checkpointing
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  with checkpointing._reads_finish_before_their_loop_closes():
    loop = asyncio.new_event_loop()
  waiter = loop.create_future()
  loop.close()
  errors = []

  def late_read():
    try:
      loop.call_soon_threadsafe(waiter.set_result, "bytes")
    except Exception as e:  # noqa: BLE001 - what TensorStore's thread would print
      errors.append(e)
  thread = threading.Thread(target=late_read)
  thread.start()
  thread.join()
  assert errors == [] and unraisable == [] and not waiter.done()
  with pytest.raises(RuntimeError, match="closed"):
    loop.call_soon(print)


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(command, reference,
                                                                    tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  (workdir / "summary.json").unlink()
  _damage(workdir / "checkpoints" / "6")
  out, log = _run(command, workdir)
  assert out.returncode == 0, log[-4000:]
  assert f"checkpoint {workdir / 'checkpoints' / '6'} cannot be read" in log, log[-4000:]
  assert "Traceback" not in log
  assert _resumed_step(log) == 4
  assert (workdir / "broken_checkpoints" / "checkpoints_6").is_dir()  # kept for inspection
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]  # step 6 written again
  _assert_same_curve(workdir, reference[1], 5)


@pytest.mark.slow
def test_no_readable_checkpoint_stops_with_an_error_naming_them(command, reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  (workdir / "summary.json").unlink()
  for step in ("4", "6"):
    _damage(workdir / "checkpoints" / step)
  out, log = _run(command, workdir)
  assert out.returncode == 1, log[-4000:]
  error = out.stderr.strip().splitlines()[-1]
  assert error.startswith("error: no checkpoint of"), out.stderr[-4000:]
  for step in ("4", "6"):
    assert str(workdir / "checkpoints" / step) in error
  assert "delete those directories" in error
  # The error paragraph is the only output besides log records: no traceback.
  assert "Traceback" not in log
  assert [line for line in out.stderr.splitlines() if not re.match(r"[IWE]\d{4} ", line)] == [
      error], out.stderr[-4000:]
  assert _resumed_step(log) is None and not (workdir / "summary.json").exists()  # no step ran
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]  # left as they were


def _cut_short(path: pathlib.Path) -> None:
  text = path.read_text()
  path.write_text(text[:len(text) // 2])


def test_damaged_run_config_is_an_error_naming_it(tmp_path):
  from configs import default
  from glidre_jax import GLiDRE, run_dir
  run_dir.save_config(default.get_config(), tmp_path)
  assert run_dir.load_config(tmp_path).data.batch_size == default.get_config().data.batch_size
  assert sorted(os.listdir(tmp_path)) == ["config.json"]  # written via a renamed temporary
  _cut_short(tmp_path / "config.json")
  for load in (run_dir.load_config, GLiDRE.from_pretrained):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "config.json"))
                       + r": the run's config is not valid JSON .*rerun the training command"):
      load(tmp_path)
  (tmp_path / "config.json").write_text('{"data": {}}')
  with pytest.raises(ValueError, match=r"not a glidre_jax.train run config \(missing "
                                       r"text_encoder, label_encoder, model, train\)"):
    run_dir.load_config(tmp_path)


def test_damaged_official_config_is_an_error_naming_it(tmp_path):
  from converters import official
  from glidre_jax import GLiDRE
  official_dir = tmp_path / "glidre_pt"
  official_dir.mkdir()
  (official_dir / official.CONFIG_FILE).write_text('{"max_len": 384, "hidden_si')
  path = re.escape(str(official_dir / official.CONFIG_FILE))
  with pytest.raises(ValueError, match=path + r": invalid JSON .*damaged or was cut short"):
    GLiDRE.from_pretrained(official_dir)
  (official_dir / official.CONFIG_FILE).write_text("[1, 2]")
  with pytest.raises(ValueError, match=path + r": a JSON list, not an object"):
    official.read_config(official_dir)

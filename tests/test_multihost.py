"""Two processes × two CPU devices (gloo) train like one process × four."""
import json
import os
import subprocess
import sys

import pytest

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


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

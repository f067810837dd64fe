"""Sharding on a CPU device mesh (subprocesses with 4 forced host devices)."""
import json
import os
import subprocess
import sys

import pytest

from glidre_jax import sharding

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _env(devices: int) -> dict:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


def test_logical_rules_map_pairs_to_model_axis():
  assert sharding.spec("batch", "pairs", "labels") == sharding.PartitionSpec("data", "model", None)
  with pytest.raises(KeyError, match="paris"):
    sharding.spec("batch", "paris")


def test_mesh_shape_errors_are_clear():
  import jax
  with pytest.raises(ValueError, match="model=3"):
    sharding.make_mesh(-1, 3, jax.devices()[:1] * 2)


def test_train_step_on_2x2_mesh_matches_one_device():
  out = subprocess.run([sys.executable, "tests/scripts/mesh_check.py"], cwd=REPO, env=_env(4),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  print(result)
  assert abs(result["loss_1"] - result["loss_4"]) <= 1e-5 * max(1.0, abs(result["loss_1"]))
  assert result["param_delta"] <= 1e-5
  # [S=2, P=32, K=5] packed logits (2 shards of 2 documents × 16 pairs):
  # shards over 'data' (2), pairs over 'model' (2).
  assert result["logits_spec"] == "P('data', 'model')"
  assert result["logits_shard_shape"] == [1, 16, 5]
  assert result["hlo_has_sharding"]

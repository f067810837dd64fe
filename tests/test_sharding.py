"""Sharding on a CPU device mesh (subprocesses with 4 forced host devices)."""
import json
import os
import subprocess
import sys

import pytest

from glidre_jax import sharding

import tiny_run

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _env(devices: int) -> dict:
  return {**os.environ, "XLA_FLAGS": tiny_run.with_device_count(devices),
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
  # FSDP on a (4, 1) mesh: the same loss and updated parameters as one device
  # (float reassociation of the sharded reductions only: 1e-5).
  assert abs(result["loss_1"] - result["loss_fsdp"]) <= 1e-5 * max(1.0, abs(result["loss_1"]))
  assert result["fsdp_param_delta"] <= 1e-5
  # The staged gradients (train.stage_encoders) on the 2x2 mesh and with FSDP.
  for name in ("staged", "fsdp_staged"):
    assert abs(result["loss_1"] - result[f"loss_{name}"]) <= 1e-5 * max(1.0, abs(result["loss_1"]))
    assert result[f"{name}_param_delta"] <= 1e-5
  # span_rep_layer.projection.dense_in.kernel [48, 96]: its 96 split in 4.
  assert result["fsdp_kernel_spec"] == "P(None, 'data')"
  assert result["fsdp_kernel_shard_shape"] == [48, 24]
  # XLA's per-device memory of the compiled step falls with the shard count:
  # the state (arguments) is split, gathered parameters are temporaries.
  one, four = (result["fsdp_memory"][str(n)]["argument"] for n in (1, 4))
  assert one > 3.2 * four, (one, four)


def test_fsdp_axes_pick_the_largest_divisible_axis():
  assert sharding.fsdp_axes((1024, 4096), 8) == (None, "fsdp")
  assert sharding.fsdp_axes((128100, 1024), 8) == (None, "fsdp")  # 128100 % 8 != 0
  assert sharding.fsdp_axes((128100, 1024), 4) == ("fsdp", None)
  assert sharding.fsdp_axes((4096,), 8, min_size=2**16) == (None,)  # small: replicated
  assert sharding.fsdp_axes((1000, 1000), 3) == (None, None)  # nothing divides
  assert sharding.fsdp_axes((512, 512), 1) == (None, None)
  assert sharding.spec(*sharding.fsdp_axes((1024, 4096), 8)) == sharding.PartitionSpec(None, "data")


def test_dry_run_reports_per_device_memory_on_shapes_alone(tmp_path):
  """`--dry_run`'s table for encoders given by a config.json alone (no
  weights, nothing allocated): the paper model's path, at a tiny size."""
  from configs import default
  from glidre_jax import train
  enc = tmp_path / "enc"
  enc.mkdir()
  (enc / "config.json").write_text(json.dumps({
      "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
      "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 100}))
  c = default.get_config()
  c.text_encoder = c.label_encoder = str(enc)
  c.model.hidden_size = 24
  c.data.update(batch_size=2, seq_buckets=(32,), word_buckets=(32,), entity_buckets=(8,))
  m = train.memory_analysis(c)
  # One pair shard holding both documents' every pair, in its pair bucket.
  from glidre_jax.data import pairs
  assert m["batch"] == {"input_ids": (2, 32),
                        "pair_labels": (1, pairs.pick(c.data.pair_buckets, 2 * 8 * 8), 96)}
  assert m["params_bytes"] == 4 * m["parameters"] and m["peak_bytes"] > m["params_bytes"]
  report = train.format_memory(m)
  assert "fsdp False" in report and "peak estimate" in report, report

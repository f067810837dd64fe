"""Benchmark CLIs (throughput, few-shot curve) at tiny sizes, and their helpers."""
import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

import tiny_run
from glidre_jax.bench import common, few_shot, throughput

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
# Short documents in one bucket: one shape, so one compilation per step function.
SMALL = ["--set", "data.max_length=128", "--set", "data.seq_buckets=(128,)",
         "--set", "data.word_buckets=(128,)", "--set", "data.entity_buckets=(48,)"]


def tiny_encoders(path) -> list[str]:
  """A tiny random BERT as both encoders, and one pair bucket: training runs
  of seconds, one compile per step function."""
  encoder = tiny_run.tiny_bert(path)
  return ["--set", f"text_encoder={encoder}", "--set", f"label_encoder={encoder}",
          "--set", f"data.pair_buckets={tiny_run.ONE_PAIR_BUCKET}"]


def test_throughput_cli_measures_one_shape(tmp_path):
  out = tmp_path / "tp"
  throughput.main(["--batch_sizes", "1", "--steps", "2", "--infer_docs", "2", "--passes", "1",
                   "--gemm_n", "512", "--pairs", "largest", "--out", str(out),
                   "--set", f"data.tfds_dir={tmp_path / 'tfds'}", *SMALL])
  for name in ("throughput.json", "throughput.csv", "throughput.png"):
    assert (out / name).stat().st_size > 0, name
  result = json.loads((out / "throughput.json").read_text())
  assert result["meta"]["cpu_count"] >= 1 and result["meta"]["jax"]
  assert result["setup"]["bucket"] == [128, 128, 48]
  assert result["setup"]["bucket_documents"] == 400  # dev[:400] all fit once truncated
  (row,) = result["rows"]
  assert row["batch_size"] == 1 and row["infer_docs"] == 2
  assert row["train_compilations"] == 1 and row["predict_compilations"] == 1
  assert 0 < row["train_step_s"] < row["train_first_call_s"]  # the first call compiles
  assert row["train_docs_per_s"] == pytest.approx(1 / row["train_step_s"], rel=1e-2)
  assert row["glidre_docs_per_s"] > 0 and row["encoder_docs_per_s"] > 0
  assert row["glidre_over_encoder"] > 1  # the GLiDRE forward contains the encoder
  assert row["peak_rss_mb"] > 100
  # XLA's memory analysis (the CPU backend reports it): at least MiniLM's
  # parameters and Adam moments.
  assert row["xla_train_mib"] > 50
  # FLOPs and utilisation: the real work is a part of what is executed (the
  # entity bucket 48 pads the pairs), and utilisation is a fraction.
  assert result["setup"]["gemm_flops_per_s"] > 1e8
  assert 0 < row["train_pairs_real"] < row["train_pairs_executed"]
  assert 0 < row["train_gflop_real"] < row["train_gflop_executed"]
  assert 0 < row["train_mfu_real"] < row["train_mfu_executed"] < 1.5
  assert 0 < row["infer_mfu_real"] < row["infer_mfu_executed"] < 1.5
  assert row["train_floor_s"] < row["train_step_s"]
  assert 100 < row["train_peak_rss_mb"] <= row["peak_rss_mb"]


def test_throughput_pads_each_batch_to_its_own_pair_bucket(tmp_path):
  # As the training and prediction pipelines: a compilation per pair bucket
  # reached, fewer padded pairs than with every batch at the largest bucket.
  buckets = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
  rows = {}
  for mode in ("own", "largest"):
    out = tmp_path / mode
    throughput.main(["--batch_sizes", "1", "--steps", "6", "--infer_docs", "6", "--passes", "1",
                     "--gemm_n", "256", "--pairs", mode, "--out", str(out),
                     "--set", f"data.tfds_dir={tmp_path / 'tfds'}",
                     *SMALL, *tiny_encoders(tmp_path), "--set", f"data.pair_buckets={buckets}"])
    (rows[mode],) = json.loads((out / "throughput.json").read_text())["rows"]
  own, largest = rows["own"], rows["largest"]
  assert own["train_pairs_real"] == largest["train_pairs_real"]  # the same documents
  assert len(own["train_pair_buckets"]) > 1 and len(largest["train_pair_buckets"]) == 1
  assert own["train_compilations"] == len(own["train_pair_buckets"])
  assert largest["train_pair_buckets"] == [max(own["train_pair_buckets"])]
  assert own["train_pairs_real"] <= own["train_pairs_executed"] < largest["train_pairs_executed"]
  # Inference: the same 6 documents, less work executed at their own buckets,
  # every shape compiled before the timed pass.
  assert own["infer_gflop_real"] == pytest.approx(largest["infer_gflop_real"])
  assert own["infer_gflop_executed"] < largest["infer_gflop_executed"]
  assert own["predict_compilations"] > 1 == largest["predict_compilations"]


def test_same_work_preset_sets_the_official_work():
  from configs import default
  c = common.apply_overrides(default.get_config(), throughput.SAME_WORK)
  assert (c.model.hidden_size, c.train.freeze_label_encoder, c.encoder_attention_dropout,
          c.model.lop, c.data.batch_size) == (768, False, 0.1, True, 4)


def test_throughput_rejects_an_empty_bucket(tmp_path):
  with pytest.raises(ValueError, match="no document"):
    throughput.main(["--bucket", "256,512,16", "--out", str(tmp_path),
                     "--set", f"data.tfds_dir={tmp_path / 'tfds'}"])


@pytest.mark.slow
def test_few_shot_cli_trains_scores_and_reuses(tmp_path, redocred_dev_path):
  test_file = tmp_path / "test.json"
  test_file.write_text(json.dumps(json.loads(redocred_dev_path.read_text())[450:452]))
  out = tmp_path / "fs"
  cmd = [sys.executable, "-m", "glidre_jax.bench.few_shot", "--sizes", "1,2", "--seeds", "0",
         "--steps", "2", "--max_docs", "2", "--test_file", str(test_file), "--out", str(out),
         "--set", "data.batch_size=2", "--set", "data.eval_batch_size=2",
         "--set", f"data.tfds_dir={tmp_path / 'tfds'}", *SMALL,
         *tiny_encoders(tmp_path / "bert")]
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  for name in ("few_shot.json", "few_shot.csv", "few_shot_curve.csv", "few_shot.png"):
    assert (out / name).stat().st_size > 0, name
  result = json.loads((out / "few_shot.json").read_text())
  rows = result["rows"]
  assert [(r["n"], r["seed"], r["steps"]) for r in rows] == [(1, 0, 2), (2, 0, 2)]
  for r in rows:
    assert r["train_step_compilations"] >= 1 and r["test_docs"] == 2
    for key in few_shot.SCORES:
      assert 0.0 <= r[key] <= 1.0, key
    assert 0 < r["best_tau"] < 1 and r["fixed_tau"] == 0.5
  assert result["setup"]["curve"][0]["published_test_f1"] == 24.45
  run_dir = out / "runs" / "n1_s0"
  assert (run_dir / "best").is_dir() and not (run_dir / "checkpoints").exists()
  summary = run_dir / "summary.json"
  stamp = summary.stat().st_mtime_ns

  # Same config again, no test file: the finished runs are reused, not retrained.
  again = subprocess.run([c for c in cmd if c not in ("--test_file", str(test_file))],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert summary.stat().st_mtime_ns == stamp
  reused = json.loads((out / "few_shot.json").read_text())["rows"]
  assert [r["dev_f1"] for r in reused] == [r["dev_f1"] for r in rows]


def test_finished_runs_are_reused_and_changed_ones_restarted(tmp_path, monkeypatch):
  calls = []

  def fake_train(config, workdir):
    calls.append(config.train.steps)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    summary = {"steps": config.train.steps}
    (workdir / "summary.json").write_text(json.dumps(summary))
    return summary

  monkeypatch.setattr(few_shot.train_lib, "train", fake_train)
  args = argparse.Namespace(config_variant="", set=[], steps=3, max_docs=2)
  workdir, marker = tmp_path / "run", tmp_path / "run" / "marker"
  run = lambda n, fresh=False: few_shot.train_or_reuse(few_shot.run_config(args, n, 0),
                                                      workdir, fresh)["steps"]
  assert run(1) == 3 and run(1) == 3
  assert calls == [3]  # the second call read summary.json
  marker.write_text("kept while the config is the same")
  args.steps = 4
  assert run(1) == 4 and calls == [3, 4] and not marker.exists()  # config changed: wiped
  marker.write_text("")
  run(1, fresh=True)
  assert calls == [3, 4, 4] and not marker.exists()
  marker.write_text("")
  run(2)  # another N
  assert calls == [3, 4, 4, 4] and not marker.exists()


def test_curve_mean_and_std_over_seeds():
  rows = [{"n": 5, "seed": s, "dev_f1": f, "dev_ign_f1": f / 2} for s, f in enumerate((0.2, 0.4))]
  rows.append({"n": 1, "seed": 0, "dev_f1": 0.1, "dev_ign_f1": 0.05})
  points = few_shot.curve(rows)
  assert [p["n"] for p in points] == [1, 5]
  assert points[0]["dev_f1_std"] == 0.0 and points[0]["published_test_f1"] == 24.45
  assert points[1]["dev_f1_mean"] == pytest.approx(0.3)
  assert points[1]["dev_f1_std"] == pytest.approx(0.1414, abs=1e-4)  # sample std
  assert points[1]["dev_f1_text"] == "30.00 ± 14.14"
  assert "test_f1_mean" not in points[1]


def test_overrides_parse_literals_and_reject_unknown_keys():
  from configs import default
  c = common.apply_overrides(default.get_config(), ["train.lr_head=1e-3",
                                                    "data.seq_buckets=(128,)",
                                                    "data.train_split=dev[:8]"])
  assert c.train.lr_head == 1e-3 and tuple(c.data.seq_buckets) == (128,)
  assert c.data.train_split == "dev[:8]"
  with pytest.raises(KeyError, match="lr_haed"):
    common.apply_overrides(c, ["train.lr_haed=1"])
  with pytest.raises(ValueError, match="key=value"):
    common.apply_overrides(c, ["train.lr_head"])


def test_format_table_aligns_and_marks_missing_values():
  text = common.format_table([{"a": 1, "b": 0.5}, {"a": 10}], [("A", "a", "d"), ("B", "b", ".2f")])
  lines = text.splitlines()
  assert lines[0].split() == ["A", "B"] and lines[2].split() == ["1", "0.50"]
  assert lines[3].split() == ["10", "-"]
  assert len({len(line) for line in lines}) == 1


def test_predict_api_bench_counts_label_encoder_calls(tmp_path):
  from glidre_jax.bench import predict_api
  out = tmp_path / "pa"
  predict_api.main(["--docs", "3", "--batch_sizes", "2", "--out", str(out)])
  (row,) = json.loads((out / "predict_api.json").read_text())["rows"]
  assert row["docs"] == 3 and row["docs_per_s_cached"] > 0 and row["docs_per_s_uncached"] > 0
  # One per batch without the cache (2 or 3: batches hold one bucket each).
  assert row["label_encoder_calls_uncached"] == row["batches"] in (2, 3)
  assert row["predict_compilations"] >= 1
  assert 0 < row["mfu_real"] < row["mfu_executed"] and row["executed_over_real"] > 1
  assert row["gflop_real_per_doc"] > 1  # MiniLM over a dev document: a few GFLOP
  assert (out / "predict_api.csv").stat().st_size > 0


def test_predict_api_bench_times_synthetic_entity_dense_documents(tmp_path):
  from glidre_jax.bench import predict_api
  doc = predict_api.synthetic_document(5, np.random.default_rng(0))
  words = doc["text"].split(" ")
  assert len(words) == predict_api.WORDS and len(doc["entities"]) == 5
  for entity in doc["entities"]:  # two distinct one-word mentions
    spans = [doc["text"][a:b] for a, b in entity["mentions"]]
    assert len(set(spans)) == 2 and all(s in words for s in spans)
  out = tmp_path / "pe"
  predict_api.main(["--entities", "4,6", "--out", str(out)])
  rows = json.loads((out / "predict_entities.json").read_text())["rows"]
  assert [(r["entities"], r["pairs"]) for r in rows] == [(4, 12), (6, 30)]
  assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in rows)


def test_quick_steps_grow_with_the_number_of_documents():
  assert [few_shot.quick_steps(n) for n in (1, 10, 30, 50, 400)] == [40, 40, 60, 100, 100]
  args = argparse.Namespace(config_variant="", set=[], steps=None, max_docs=48, quick=True)
  assert few_shot.run_config(args, 50, 0).train.steps == 100
  args.steps = 7  # an explicit --steps wins
  assert few_shot.run_config(args, 50, 0).train.steps == 7


@pytest.mark.parametrize("lop", [True, False])
def test_analytic_flops_match_xla_cost_analysis(lop):
  """The analytic forward count (matmuls only) is 90-100 % of what XLA counts
  for the compiled GLiDRE forward (XLA adds the element-wise work)."""
  import jax
  from flax import nnx
  import tiny_training
  from glidre_jax import encoders, inference
  from glidre_jax.bench import flops
  from glidre_jax.data.tokenize import minilm_path
  from glidre_jax.model.config import GLiDREConfig
  from glidre_jax.model.glidre import build_glidre
  hf = encoders.common.read_hf_config(minilm_path())
  enc = encoders.config_from_hf(dict(hf, hidden_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=512))
  model = build_glidre(GLiDREConfig(hidden_size=96, dropout=0.0, lop=lop), enc, enc)
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  batch = {k: v for k, v in tiny_training.batches(1, 2)[0].items() if k != "meta"}
  predictor = inference.Predictor(graphdef)
  with jax.set_mesh(predictor.mesh):
    xla = predictor._predict_jit.lower(params, rest, batch, None).compile().cost_analysis()
  shape = flops.batch_shape(batch)
  assert (shape.pairs_real, shape.pairs_executed) == flops.batch_pair_counts(batch)
  # The packed list: its slots (real + bucket padding), fewer than the dense 2 × 48².
  assert batch["pair_mask"].size == shape.pairs_executed > shape.pairs_real
  assert shape.pairs_executed < 2 * 48 * 48
  ours = flops.step_flops(model, shape, train=False, label_encoder_in_step=True,
                          label_encoder_trained=False)
  assert 0.9 < ours["executed"] / xla["flops"] <= 1.0, (ours, xla["flops"])
  assert ours["real"] < ours["executed"] and ours["pairs_padding"] > 0
  # Two documents in one shard: the LOP context runs 2·W·D a pair more.
  assert ours.get("lop_spread", 0) == (shape.pairs_executed * 2 * shape.words * 96 if lop else 0)
  train = flops.step_flops(model, shape, train=True, label_encoder_in_step=False,
                           label_encoder_trained=False)
  assert train["label_encoder"] == 0 and train["pairs_real"] == 3 * ours["pairs_real"]


def test_deberta_flops_match_xla_cost_analysis():
  import jax
  import numpy as np
  from glidre_jax import encoders
  from glidre_jax.bench import flops
  hf = encoders.common.read_hf_config(REPO / "configs/encoders/deberta-v3-large/config.json")
  cfg = encoders.config_from_hf(dict(hf, hidden_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=512,
                                     vocab_size=1000, position_buckets=32))
  model = encoders.new_encoder(cfg)
  model.eval()
  ids = np.ones((2, 128), np.int32)
  xla = jax.jit(lambda i, m: model(i, m).last_hidden_state).lower(ids, ids).compile()
  ratio = flops.encoder_flops(cfg, 2 * 128, 128) / xla.cost_analysis()["flops"]
  assert 0.85 < ratio <= 1.0, ratio


def test_gemm_probe_measures_a_positive_rate():
  from glidre_jax.bench import flops
  rate = flops.gemm_flops_per_s(256, repeats=2)
  assert 1e8 < rate < 1e16

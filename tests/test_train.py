"""Training: one compilation per bucket shape, end-to-end CLIs. (Exact resume:
after a real SIGKILL in tests/test_preemption.py; after an exception, whose
`finally` lets the in-flight save land, mid accumulation window in
tests/test_accumulation.py.)"""
import json
import subprocess
import sys

import numpy as np
import pytest

import tiny_run
from configs import default
from glidre_jax import checkpointing, evaluate
from glidre_jax import train as train_lib

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def small_config(tmp_path, steps=4):
  """A run that takes seconds per step: short documents, one small bucket,
  a tiny random BERT (MiniLM's tokenizer) as both encoders."""
  c = default.get_config("tiny")
  c.text_encoder = c.label_encoder = str(tiny_run.tiny_bert(tmp_path / "bert"))
  c.workdir = str(tmp_path / "run")
  c.data.tfds_dir = str(tmp_path / "tfds")
  c.data.train_split = "dev[:6]"
  c.data.eval_split = "dev[400:402]"
  c.data.max_length = 128
  c.data.seq_buckets, c.data.word_buckets, c.data.entity_buckets = (128,), (128,), (48,)
  c.data.pair_buckets = (1024,)  # <= 684 real pairs per batch of 2 at 128 subwords
  c.data.batch_size = 2
  c.data.eval_batch_size = 2
  c.train.steps = steps
  c.train.log_every = 1
  c.train.eval_every = 100  # only at the last step
  c.train.checkpoint_every = 2
  return c


def test_train_step_compiles_once_per_bucket_shape(tmp_path):
  import pathlib
  config = small_config(tmp_path)
  config.train.profile_steps = 1  # and trace step 3 with the JAX profiler
  summary = train_lib.train(config, pathlib.Path(tmp_path / "run"))
  assert list((tmp_path / "run" / "profile").glob("plugins/profile/*/*.xplane.pb"))
  assert summary["train_step_compilations"] == 1  # 4 steps, one bucket shape
  assert summary["predict_compilations"] == 1
  assert len(summary["logged_losses"]) == 4
  assert all(np.isfinite(loss) for _, loss in summary["logged_losses"])
  assert summary["micro_steps"] == 4  # grad_accum 1: one micro-batch per update
  # The best checkpoint stores the τ it was selected at (default: the sweep's best).
  best = summary["best_dev"]
  assert best["selected_threshold"] == best["best_threshold"] in config.eval.sweep
  assert best["selected_f1"] == best["best_f1"]
  run = pathlib.Path(tmp_path / "run")
  assert checkpointing.selected_threshold(run, "best", -1.0) == best["selected_threshold"]
  assert checkpointing.selected_threshold(run, "latest", -1.0) == -1.0  # never selected


@pytest.mark.slow
def test_train_and_evaluate_clis(tmp_path, redocred_dev_path):
  workdir = tmp_path / "run"
  encoder = tiny_run.tiny_bert(tmp_path / "bert")
  cmd = [sys.executable, "-m", "glidre_jax.train", "--config=configs/default.py:tiny",
         f"--workdir={workdir}", "--config.train.steps=1", "--config.train.eval_every=1",
         f"--config.text_encoder={encoder}", f"--config.label_encoder={encoder}",
         "--config.data.max_length=128", "--config.data.seq_buckets=(128,)",
         "--config.data.word_buckets=(128,)", "--config.data.train_split=dev[:4]",
         "--config.data.eval_split=dev[400:402]", f"--config.data.tfds_dir={tmp_path / 'tfds'}"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "best dev" in out.stdout and "Ign F1" in out.stdout
  preds = tmp_path / "preds.json"
  out = subprocess.run([sys.executable, "-m", "glidre_jax.evaluate", f"--workdir={workdir}",
                        f"--output={preds}", "--threshold=0.05"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "dev[400:402] (2 documents)" in out.stdout
  records = json.loads(preds.read_text())
  # One update, at lr 0 (warm-up starts at 0, as official): the model is its
  # random start, whose scores (~0.5) put candidates in every document.
  assert f"wrote {len(records)} predictions" in out.stdout
  assert f"(pred {len(records)}, gold" in out.stdout
  assert {r["title"] for r in records} == {
      d["title"] for d in json.loads(redocred_dev_path.read_text())[400:402]}
  assert all(set(r) >= {"title", "h_idx", "t_idx", "r"} and r["score"] > 0.05 for r in records)
  # Without --threshold: the τ stored with the best checkpoint.
  stored = json.loads((workdir / "summary.json").read_text())["best_dev"]["selected_threshold"]
  out = subprocess.run([sys.executable, "-m", "glidre_jax.evaluate", f"--workdir={workdir}"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert f"τ={stored}: the run's best checkpoint's" in out.stdout
  assert f"τ={stored:.2f}  P" in out.stdout


def test_model_selection_uses_the_threshold_it_stores():
  scores = {"threshold": 0.5, "f1": 0.30, "ign_f1": 0.29, "best_threshold": 0.6,
            "best_f1": 0.45, "best_ign_f1": 0.44}
  swept, fixed = (evaluate.with_selection(scores, s) for s in ("sweep", "fixed"))
  assert (swept["selected_threshold"], swept["selected_f1"]) == (0.6, 0.45)
  assert (fixed["selected_threshold"], fixed["selected_f1"], fixed["selected_ign_f1"]) == (
      0.5, 0.30, 0.29)
  # Ranked by the F1 at the stored τ, not by the sweep's F1.
  best = dict(fixed, best_f1=0.2, selected_f1=0.35)
  assert not evaluate.improves(fixed, best) and evaluate.improves(swept, best)
  assert evaluate.improves(fixed, None)
  with pytest.raises(ValueError, match="threshold_selection must be one of"):
    evaluate.check_selection(_with(default.get_config().eval, threshold_selection="best"))
  with pytest.raises(ValueError, match="needs thresholds in eval.sweep"):
    evaluate.check_selection(_with(default.get_config().eval, sweep=()))


def _with(section, **values):
  for key, value in values.items():
    section[key] = value
  return section


def test_config_typo_is_a_clear_error(tmp_path):
  out = subprocess.run([sys.executable, "-m", "glidre_jax.train", "--config=configs/default.py",
                        "--config.train.stpes=3"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode != 0
  assert "stpes" in out.stderr


def test_training_on_windowed_long_documents(tmp_path):
  """data.window_stride: documents over max_length train and evaluate in windows."""
  import pathlib
  config = small_config(tmp_path, steps=2)
  config.data.window_stride = 64  # dev[:6] and dev[400:402] all exceed 128 subwords
  config.data.word_buckets = (128, 512)
  summary = train_lib.train(config, pathlib.Path(tmp_path / "run"))
  assert all(np.isfinite(loss) for _, loss in summary["logged_losses"])
  assert summary["best_dev"]["num_gold"] > 0

"""A seconds-long training command for subprocess tests (multi-process,
preemption): a tiny random BERT with MiniLM's tokenizer as both encoders."""
from __future__ import annotations

import json
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_bert(path: pathlib.Path) -> pathlib.Path:
  """A random 2-layer, 32-wide HF BERT directory (weights + tokenizer), once per path."""
  import torch
  import transformers

  from converters import official
  from glidre_jax.data.tokenize import minilm_path
  if not (path / "model.safetensors").exists():
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=512)).save_pretrained(path)
    official.copy_tokenizer(minilm_path(), path)
  return path


# A pair bucket holding every pair of a batch of 2 documents (2 × 48 × 47 at
# the tests' entity bucket 48): one shape, one compile per step function.
ONE_PAIR_BUCKET = "(4512,)"


def train_args(encoder: pathlib.Path, workdir: pathlib.Path, tfds_dir: pathlib.Path,
               **overrides) -> list[str]:
  """`glidre_jax.train` flags of a tiny run; `overrides` are config.* fields
  (dots as `__`, e.g. data__batch_size=1)."""
  settings = {
      "text_encoder": str(encoder), "label_encoder": str(encoder), "model.hidden_size": 32,
      "data.tfds_dir": str(tfds_dir), "data.eval_split": "dev[400:402]",
      "data.eval_batch_size": 2, "train.log_every": 1, "train.eval_every": 1000,
      "train.lr_encoder": 1e-3, "train.lr_head": 1e-3,
  }
  settings.update({k.replace("__", "."): v for k, v in overrides.items()})
  return [f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in settings.items()]


def logged_losses(workdir: pathlib.Path) -> dict[int, float]:
  """Step -> loss of the last (resumed) run in `workdir`."""
  summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
  return {int(step): loss for step, loss in summary["logged_losses"]}


def with_device_count(devices: int) -> str:
  """XLA_FLAGS for `devices` CPU devices, keeping the other inherited flags."""
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def env(cache_dir: pathlib.Path, devices: int) -> dict[str, str]:
  """Environment of a CPU training process with `devices` devices; compiled
  steps are cached (in the test session's cache, tests/conftest.py, else in
  `cache_dir`), so a restarted command does not compile again (the same
  executables: results are unchanged)."""
  return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": with_device_count(devices),
          "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                      str(cache_dir)),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

"""Documents/s of `GLiDRE.predict` on the shipped dev split, with and without
the label-embedding cache.

    python -m glidre_jax.bench.predict_api [--quick] [--checkpoint RUN_DIR] \
        [--batch_sizes 1,8] [--docs 500] [--out results/predict_api]

The model is a trained run directory (--checkpoint) or the embedded default
with its encoders' pretrained weights and a fresh head (the speed is the
same; the predictions are not meaningful). Labels: the 96 Re-DocRED relation
names. For each batch size, one untimed pass compiles every bucket shape the
documents reach; then `predict` is timed over all documents with the label
cache (the label encoder runs once) and without it (the label encoder runs
for every batch, as the reference does). Writes predict_api.{json,csv}.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

from glidre_jax import allocator, run_dir, shipped
from glidre_jax.data import registry
from glidre_jax.api import GLiDREPredictor
from glidre_jax.bench import common
from glidre_jax.data import assets
from glidre_jax.train import peak_rss_mb

COLUMNS = [("B", "batch_size", "d"), ("docs", "docs", "d"),
           ("doc/s cached", "docs_per_s_cached", ".2f"),
           ("doc/s uncached", "docs_per_s_uncached", ".2f"),
           ("label encoder calls (uncached)", "label_encoder_calls_uncached", "d"),
           ("compilations", "predict_compilations", "d"), ("peak RSS MB", "peak_rss_mb", ".0f")]


def load_model(checkpoint: str | None) -> GLiDREPredictor:
  if checkpoint:
    return GLiDREPredictor.from_pretrained(checkpoint)
  config = shipped.config_module("default").get_config()
  return GLiDREPredictor.from_model(run_dir.build_model(config), config)


def timed_predict(model: GLiDREPredictor, docs, labels, batch_size: int, cache: bool) -> float:
  model.clear_label_cache()
  start = time.perf_counter()
  model.predict(docs, labels, batch_size=batch_size, cache_labels=cache)
  return time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", default=None, help="a glidre_jax.train run directory")
  parser.add_argument("--batch_sizes", default="1,8")
  parser.add_argument("--docs", type=int, default=500, help="first N documents of the dev split")
  parser.add_argument("--quick", action="store_true", help="64 documents")
  parser.add_argument("--out", default="results/predict_api")
  args = parser.parse_args(argv)

  model = load_model(args.checkpoint)
  raw = json.loads(assets.asset_path("redocred", "dev_revised.json").read_text())
  docs = raw[:64 if args.quick else args.docs]
  labels = list(registry.load_schema(shipped.config_module("default").get_config()).names)
  rows = []
  for batch_size in common.parse_ints(args.batch_sizes):
    model.predict(docs, labels, batch_size=batch_size)  # compiles every shape reached
    cached = timed_predict(model, docs, labels, batch_size, cache=True)
    calls = model.label_encoder_calls
    uncached = timed_predict(model, docs, labels, batch_size, cache=False)
    rows.append({"batch_size": batch_size, "docs": len(docs),
                 "docs_per_s_cached": len(docs) / cached,
                 "docs_per_s_uncached": len(docs) / uncached,
                 "label_encoder_calls_uncached": model.label_encoder_calls - calls,
                 "predict_compilations": model.predictor.num_traces,
                 "peak_rss_mb": peak_rss_mb()})  # of the process so far (only grows)
    print(common.format_table(rows[-1:], COLUMNS), flush=True)
  out = pathlib.Path(args.out)
  common.write_results(out, "predict_api", rows, checkpoint=args.checkpoint,
                       num_labels=len(labels))
  print(common.format_table(rows, COLUMNS))
  print(f"wrote {out}/predict_api.{{json,csv}}")


if __name__ == "__main__":
  allocator.relaunch()  # XLA:CPU's buffers under mimalloc, as the CLIs run
  main()

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
for every batch, as the reference does), with the analytic FLOPs of the
batches `predict` runs (`bench.flops`: real subwords and pairs against the
padded ones executed), the machine's measured fp32 GEMM rate and the
utilisation (MFU) of the cached pass. Writes predict_api.{json,csv}.

`--entities 100,200` times instead one synthetic 400-word document (words
`w0` ... `w399`, E entities of two one-word mentions each, the same labels):
the median of 3 `predict` calls after a compiling one, and the process's
peak RSS (it only grows: one value per process for a row's own). Writes
predict_entities.{json,csv}.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from glidre_jax import allocator, run_dir, shipped
from glidre_jax.data import registry
from glidre_jax.api import GLiDREPredictor
from glidre_jax.bench import common, flops
from glidre_jax.bench.entity_scaling import WORDS  # the same 400-word document
from glidre_jax.data import assets, batching, inputs
from glidre_jax.train import peak_rss_mb

COLUMNS = [("B", "batch_size", "d"), ("docs", "docs", "d"),
           ("doc/s cached", "docs_per_s_cached", ".2f"),
           ("doc/s uncached", "docs_per_s_uncached", ".2f"),
           ("label encoder calls (uncached)", "label_encoder_calls_uncached", "d"),
           ("compilations", "predict_compilations", "d"),
           ("GFLOP real / doc", "gflop_real_per_doc", ".2f"),
           ("executed / real", "executed_over_real", ".3f"), ("MFU real", "mfu_real", ".2f"),
           ("MFU exec", "mfu_executed", ".2f"), ("peak RSS MB", "peak_rss_mb", ".0f")]


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


def planned_work(model: GLiDREPredictor, docs, labels, batch_size: int) -> dict:
  """Real and executed FLOPs of the batches `predict` runs on `docs` (the
  same featurization and batch plan, label vectors cached) and their count."""
  feats = model.featurize(inputs.to_documents(docs))
  label_batch, _ = model.label_vectors(labels)
  module = model.predictor.model(model.params, model.rest)
  plan = batching.plan_batches(feats, model.buckets, batch_size, model.max_length)
  work = {"real": 0.0, "executed": 0.0, "batches": len(plan)}
  for chunk, collate in plan:
    shape = flops.batch_shape(collate([feats[i] for i in chunk], label_batch))
    step = flops.step_flops(module, shape, train=False, label_encoder_in_step=False,
                            label_encoder_trained=False, label_vectors_given=True)
    work.update(real=work["real"] + step["real"], executed=work["executed"] + step["executed"])
  return work


ENTITY_COLUMNS = [("E", "entities", "d"), ("pairs", "pairs", "d"), ("s / doc", "seconds", ".3f"),
                  ("relations", "relations", "d"), ("peak RSS MB", "peak_rss_mb", ".0f")]


def synthetic_document(num_entities: int, rng: np.random.Generator) -> dict:
  """Raw text of WORDS words `w0 w1 ...`; each entity two one-word mentions."""
  words = [f"w{i}" for i in range(WORDS)]
  starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
  mention = lambda i: [int(starts[i]), int(starts[i]) + len(words[i])]
  return {"text": " ".join(words), "entities": [
      {"mentions": [mention(i) for i in rng.choice(WORDS, 2, replace=False)]}
      for _ in range(num_entities)]}


def measure_entities(model: GLiDREPredictor, labels, counts, repeats: int = 3) -> list[dict]:
  rows = []
  for e in counts:
    doc = [synthetic_document(e, np.random.default_rng(e))]
    relations = len(model.predict(doc, labels)[0])  # the compiling call
    seconds = common.median_time(lambda: model.predict(doc, labels), repeats, warmup=0)
    rows.append({"entities": e, "pairs": e * (e - 1), "seconds": seconds,
                 "relations": relations, "peak_rss_mb": peak_rss_mb()})
    print(common.format_table(rows[-1:], ENTITY_COLUMNS), flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", default=None, help="a glidre_jax.train run directory")
  parser.add_argument("--batch_sizes", default="1,8")
  parser.add_argument("--docs", type=int, default=500, help="first N documents of the dev split")
  parser.add_argument("--quick", action="store_true", help="64 documents")
  parser.add_argument("--entities", default=None,
                      help="E,...: one synthetic 400-word document per value instead (see above)")
  parser.add_argument("--out", default="results/predict_api")
  args = parser.parse_args(argv)

  model = load_model(args.checkpoint)
  labels = list(registry.load_schema(shipped.config_module("default").get_config()).names)
  out = pathlib.Path(args.out)
  if args.entities:
    rows = measure_entities(model, labels, common.parse_ints(args.entities))
    common.write_results(out, "predict_entities", rows, checkpoint=args.checkpoint,
                         num_labels=len(labels), words=WORDS)
    print(f"wrote {out}/predict_entities.{{json,csv}}")
    return
  raw = json.loads(assets.asset_path("redocred", "dev_revised.json").read_text())
  docs = raw[:64 if args.quick else args.docs]
  peak = flops.gemm_flops_per_s()
  print(f"fp32 GEMM probe (2048³): {peak / 1e9:.1f} GFLOP/s", flush=True)
  rows = []
  for batch_size in common.parse_ints(args.batch_sizes):
    model.predict(docs, labels, batch_size=batch_size)  # compiles every shape reached
    cached = timed_predict(model, docs, labels, batch_size, cache=True)
    calls_before = model.label_encoder_calls
    uncached = timed_predict(model, docs, labels, batch_size, cache=False)
    calls = model.label_encoder_calls - calls_before  # before planned_work's own call
    work = planned_work(model, docs, labels, batch_size)
    use = flops.utilisation(work, cached, peak)
    rows.append({"batch_size": batch_size, "docs": len(docs), "batches": work["batches"],
                 "gflop_real_per_doc": use["gflop_real"] / len(docs),
                 "executed_over_real": work["executed"] / work["real"],
                 **{k: use[k] for k in ("mfu_real", "mfu_executed", "floor_s")},
                 "docs_per_s_cached": len(docs) / cached,
                 "docs_per_s_uncached": len(docs) / uncached,
                 "label_encoder_calls_uncached": calls,
                 "predict_compilations": model.predictor.num_traces,
                 "peak_rss_mb": peak_rss_mb()})  # of the process so far (only grows)
    print(common.format_table(rows[-1:], COLUMNS), flush=True)
  common.write_results(out, "predict_api", rows, checkpoint=args.checkpoint,
                       num_labels=len(labels), gemm_flops_per_s=peak)
  print(common.format_table(rows, COLUMNS))
  print(f"wrote {out}/predict_api.{{json,csv}}")


if __name__ == "__main__":
  allocator.relaunch()  # XLA:CPU's buffers under mimalloc, as the CLIs run
  main()

"""Time and peak memory against entity count, chunked vs unchunked pairs.

    python -m glidre_jax.bench.entity_scaling [--quick] [--out results/entity_scaling]

Synthetic 400-word documents with E entities (2 one-word mentions each) and
96 labels, MiniLM encoders, batch 1. For inference and a training step it
reports the median wall time over a few runs after compiling, and XLA's
per-device memory estimate of the compiled step (arguments + temporaries),
which is what bounds the entity count on an accelerator; the analytic FLOPs
(`glidre_jax.bench.flops`) and the utilisation against the machine's measured
fp32 GEMM rate; the process's peak RSS after the row (it only grows: run one
--entities value per process for a row's own). Writes a table (JSON + CSV)
and a PNG plot into --out.
"""
from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np

from glidre_jax import allocator, run_dir, sharding, shipped, trainer as trainer_lib
from glidre_jax.bench import common, flops
from glidre_jax.data.relations import RelationSchema
from glidre_jax.data import assets, pairs
from glidre_jax.data.featurize import label_batch
from glidre_jax.data.tokenize import load_tokenizer, minilm_path
from glidre_jax.train import peak_rss_mb

WORDS, LABELS = 400, 96


def synthetic_batch(num_entities: int, seq_len: int, rng: np.random.Generator, labels) -> dict:
  """One document: WORDS one-subword words, entities with 2 mentions each."""
  e = num_entities
  weights = np.zeros((1, e, WORDS), np.float32)
  for i in range(e):
    weights[0, i, rng.choice(WORDS, 2, replace=False)] = 1
  gold = np.zeros((1, e, e, LABELS), np.int32)
  gold[0, rng.integers(0, e, 3 * e), rng.integers(0, e, 3 * e), rng.integers(0, LABELS, 3 * e)] = 1
  ids = rng.integers(1000, 20000, (1, seq_len)).astype(np.int32)
  return {"input_ids": ids, "attention_mask": np.ones_like(ids),
          "word_index": np.arange(1, WORDS + 1, dtype=np.int32)[None],
          "word_mask": np.ones((1, WORDS), np.int32), "entity_word_weights": weights,
          "entity_mask": np.ones((1, e), np.int32), **pairs.from_dense(np.ones((1, e, e)), gold),
          "doc_mask": np.ones((1,), np.int32), **labels}


def measure(num_entities: int, chunk: int, train: bool, repeats: int, peak: float,
            overrides=()) -> dict:
  config = common.apply_overrides(shipped.config_module("default").get_config(), overrides)
  config.model.pair_chunk_size = chunk
  schema = RelationSchema.from_file(assets.asset_path("docred", "rel_info.json"))
  labels = label_batch(load_tokenizer(minilm_path()), list(schema.names))
  batch = synthetic_batch(num_entities, 512, np.random.default_rng(num_entities), labels)
  model = run_dir.build_model(config)
  trainer = trainer_lib.Trainer(model, config.train, sharding.make_mesh(1, 1, jax.devices()[:1]))
  state = trainer.initial_state
  model = run_dir.abstract_model(config)  # shapes for the FLOPs; its arrays would stay resident
  if train:
    placed = trainer.place(batch)
    compiled = trainer.lower(trainer.abstract_state, placed).compile()  # for its memory
    box = {"state": state}

    def step():
      box["state"] = trainer.train_step(box["state"], placed)
      return box["state"].step
    seconds = common.median_time(step, repeats)
  else:
    p = trainer.predictor
    vectors = p.label_step(state.params, state.rest, labels)
    with jax.set_mesh(p.mesh):
      compiled = p._predict_jit.lower(state.params, state.rest, sharding.replicate(
          batch, p.mesh), vectors).compile()
    seconds = common.median_time(
        lambda: p.predict_step(state.params, state.rest, batch, vectors), repeats)
  frozen = trainer.frozen_labels
  work = flops.step_flops(model, flops.batch_shape(batch), train=train,
                          label_encoder_in_step=train and not frozen,
                          label_encoder_trained=not frozen, label_vectors_given=not train)
  use = flops.utilisation(work, seconds, peak)
  return {"entities": num_entities, "pairs": num_entities ** 2, "mode": "train" if train else
          "inference", "pair_chunk_size": chunk, "seconds_per_doc": round(seconds, 3),
          "peak_gib": round(common.peak_gib(compiled), 3),
          "gflop_real": round(use["gflop_real"], 2), "floor_s": round(use["floor_s"], 3),
          "mfu_real": round(use["mfu_real"], 3), "mfu_executed": round(use["mfu_executed"], 3),
          "peak_rss_mb": round(peak_rss_mb(), 1)}


def plot(rows: list[dict], path: pathlib.Path) -> None:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for (mode, chunk) in sorted({(r["mode"], r["pair_chunk_size"]) for r in rows}):
    sel = [r for r in rows if r["mode"] == mode and r["pair_chunk_size"] == chunk]
    label = f"{mode}, " + (f"chunk {chunk}" if chunk else "unchunked")
    axes[0].plot([r["entities"] for r in sel], [r["seconds_per_doc"] for r in sel], "o-", label=label)
    axes[1].plot([r["entities"] for r in sel], [r["peak_gib"] for r in sel], "o-", label=label)
  axes[0].set(xlabel="entities per document", ylabel="seconds per document", xscale="log", yscale="log")
  axes[1].set(xlabel="entities per document", ylabel="peak memory (GiB, XLA estimate)", xscale="log")
  axes[0].legend(fontsize=8)
  fig.suptitle(f"GLiDRE-MiniLM, {WORDS}-word documents, {LABELS} labels, {jax.devices()[0].platform}")
  common.save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--entities", default="10,25,50,100,200")
  parser.add_argument("--chunk", type=int, default=1024, help="pairs per block in chunked mode")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true",
                      help="CPU-sized: training only up to 50 entities, 1 timed repeat")
  parser.add_argument("--modes", default="inference,train", help="inference,train or one")
  parser.add_argument("--chunks", default=None,
                      help="pair_chunk_size values (default: 0 and --chunk)")
  parser.add_argument("--gemm_n", type=int, default=2048, help="size of the GEMM probe")
  common.add_override_arg(parser)
  parser.add_argument("--out", default="results/entity_scaling")
  args = parser.parse_args(argv)
  peak = flops.gemm_flops_per_s(args.gemm_n)
  print(f"fp32 GEMM probe ({args.gemm_n}³): {peak / 1e9:.1f} GFLOP/s", flush=True)
  modes = [m.strip() for m in args.modes.split(",")]
  chunks = common.parse_ints(args.chunks) if args.chunks else [0, args.chunk]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  repeats = 1 if args.quick else args.repeats
  rows = []
  for e in common.parse_ints(args.entities):
    for train in (False, True):
      if ("train" if train else "inference") not in modes or (train and args.quick and e > 50):
        continue
      for chunk in chunks:
        row = measure(e, chunk, train, repeats, peak, args.set)
        rows.append(row)
        print(f"E={row['entities']:>4} {row['mode']:>9} chunk={chunk:>5}: "
              f"{row['seconds_per_doc']:8.3f} s/doc  XLA peak {row['peak_gib']:7.3f} GiB  "
              f"MFU {row['mfu_real']:.2f}  RSS {row['peak_rss_mb']:.0f} MB", flush=True)
  common.write_results(out, "entity_scaling", rows, gemm_flops_per_s=peak, overrides=args.set)
  plot(rows, out / "entity_scaling.png")
  print(f"wrote {out}/entity_scaling.{{json,csv,png}}")


if __name__ == "__main__":
  allocator.relaunch()  # XLA:CPU's buffers under mimalloc, as the CLIs run
  main()

"""Training and inference throughput against batch size, on real documents.

    python -m glidre_jax.bench.throughput [--quick] [--out results/throughput] \
        [--batch_sizes 1,4,8] [--steps 20]

The embedded default (configs/default.py: MiniLM encoders, the shipped
Re-DocRED dev[:400], featurized and padded with the training buckets by
featurize.collate, as the training pipeline does). So that each batch size
compiles one shape only, only the documents whose own bucket is the most
common one (or --bucket L,W,E) are used: every batch pads to that shape. For
each batch size B (ascending) it reports
- training on --steps batches, each padded to its own pair bucket as the
  training pipeline pads it (`--pairs largest`: all to the largest, one
  shape): the first call (trace + compile + one step), the number of
  compilations (Trainer.num_traces: one per pair bucket reached), the median
  step time over the batches once every shape has compiled, documents/s, and
  XLA's memory analysis of the largest compiled step;
- inference on a fixed set of documents, each batch at its own pair bucket
  as prediction pads it (`--pairs largest`: all at the largest), every
  shape compiled before the timed passes: documents/s of the GLiDRE forward
  (Predictor.predict_step with cached label vectors) and of the bare text
  encoder on the same padded batches, and their time ratio;
- the analytic FLOPs of each (`glidre_jax.bench.flops`: encoders, head per
  real pair, padded pairs), the machine's measured fp32 GEMM rate, and the
  utilisation (MFU) against the real work (the FLOP floor) and against the
  work executed;
- the process's peak RSS after training (before XLA's memory analysis, which
  may compile a step of its own) and after inference (ru_maxrss only
  grows: `--mode predict` measures inference alone), and the 1-minute load
  average (other processes on the machine inflate the times).
`--same_work` reproduces the official code's work (head width 768, label
encoder trained, attention dropout 0.1, LOP on, batch 4). Writes
throughput.{json,csv,png} into --out.
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import pathlib

import jax
import numpy as np
from flax import nnx

from glidre_jax import allocator, run_dir, sharding, shipped, trainer as trainer_lib
from glidre_jax.data import pairs, registry
from glidre_jax.bench import common, flops
from glidre_jax.data.featurize import collate, feature_shape
from glidre_jax.train import peak_rss_mb

COLUMNS = [("B", "batch_size", "d"), ("step s", "train_step_s", ".3f"),
           ("train doc/s", "train_docs_per_s", ".2f"), ("1st call s", "train_first_call_s", ".1f"),
           ("compiles", "train_compilations", "d"), ("infer doc/s", "glidre_docs_per_s", ".2f"),
           ("encoder doc/s", "encoder_docs_per_s", ".2f"),
           ("GLiDRE/enc", "glidre_over_encoder", ".2f"),
           ("train MFU real", "train_mfu_real", ".2f"), ("train MFU exec", "train_mfu_executed", ".2f"),
           ("infer MFU real", "infer_mfu_real", ".2f"),
           ("XLA arg+temp MiB", "xla_train_mib", ".0f"),
           ("train RSS MB", "train_peak_rss_mb", ".0f"), ("peak RSS MB", "peak_rss_mb", ".0f"),
           ("load", "load_avg_1m", ".1f")]
# The official code's work (issue 16): what `--same_work` sets.
SAME_WORK = ["model.hidden_size=768", "train.freeze_label_encoder=False",
             "encoder_attention_dropout=0.1", "model.lop=True", "data.batch_size=4"]


def mean_flops(model, batches: list[dict], **kw) -> dict:
  """Mean step FLOPs (flops.step_flops) over collated numpy batches."""
  counts = [flops.step_flops(model, flops.batch_shape(b), **kw) for b in batches]
  return {k: float(np.mean([c[k] for c in counts])) for k in counts[0]}


def bench_features(data: registry.DataSetup, split: str, bucket: tuple | None):
  """Featurized documents of `split` whose bucket is `bucket` (default: the
  most common one), that bucket, and the count of documents per bucket."""
  feats = data.features(data.read_split(split))
  own = [data.buckets.pick(*feature_shape(f), title=f["title"]) for f in feats]
  counts = collections.Counter(own)
  bucket = tuple(bucket) if bucket else counts.most_common(1)[0][0]
  chosen = [f for f, b in zip(feats, own) if b == bucket]
  if not chosen:
    raise ValueError(f"no document of {split} falls in bucket {bucket}; "
                     f"buckets hit: {dict(counts)}")
  return chosen, bucket, counts


def train_batches(feats, batch_size: int, count: int, data, labels: dict, seed: int = 0,
                  own_pairs: bool = True):
  """`count` batches of documents drawn epoch by epoch in a seeded order;
  own_pairs: each at its own pair bucket, as the training pipeline pads
  them (a compilation per bucket reached), else all at the largest one."""
  rng = np.random.default_rng(seed)
  epochs = -(-count * batch_size // len(feats))
  order = np.concatenate([rng.permutation(len(feats)) for _ in range(epochs)])
  chunks = [[feats[i] for i in order[k * batch_size:(k + 1) * batch_size]]
            for k in range(count)]
  return collate_chunks(chunks, data, labels, batch_size, own_pairs)


def collate_chunks(chunks, data, labels: dict, batch_size: int, own_pairs: bool) -> list[dict]:
  """The chunks collated to the (L, W, E) they all fit in, each at its own
  pair bucket (own_pairs, as the pipelines pad them) or all at the largest."""
  if not own_pairs:
    return one_shape(chunks, data, labels, batch_size)
  shape = shared_shape(chunks)
  return [collate(c, data.buckets, labels, batch_size, need=shape + (n,))
          for c, n in zip(chunks, pair_needs(chunks, batch_size))]


def pair_needs(chunks, batch_size: int) -> list[int]:
  """The pairs each chunk's one shard holds (data.pairs.shard_need)."""
  return [pairs.shard_need([pairs.num_pairs(f) for f in c], batch_size, 1) for c in chunks]


def shared_shape(chunks) -> tuple[int, int, int]:
  """The (subwords, words, entities) every chunk's documents fit in."""
  return tuple(int(n) for n in np.max([feature_shape(f) for c in chunks for f in c], axis=0))


def one_shape(chunks, data, labels: dict, batch_size: int) -> list[dict]:
  """The chunks collated to one shape (one compilation): the largest pair
  bucket any of them needs (data.pairs), the bucket's (L, W, E)."""
  need = shared_shape(chunks) + (max(pair_needs(chunks, batch_size)),)
  return [collate(c, data.buckets, labels, batch_size, need=need) for c in chunks]


def measure_train(trainer, state, batches: list[dict], model, peak: float
                  ) -> tuple[dict, object]:
  """Times a train step on each batch, after one untimed step on the first
  batch of each shape (its compilation). Utilisation is the batches' total
  work over their total time (their shapes may differ)."""
  traces = trainer.num_traces
  placed = [trainer.place(b) for b in batches]
  firsts = {}
  for batch in placed:
    pair_slots = batch["pair_mask"].size
    if pair_slots not in firsts:
      firsts[pair_slots], state = common.timed(
          functools.partial(trainer.train_step, state, batch))
  times = []
  for batch in placed:
    seconds, state = common.timed(functools.partial(trainer.train_step, state, batch))
    times.append(seconds)
  compilations = trainer.num_traces - traces
  rss = peak_rss_mb()  # before the analysis below, which may compile a step of its own
  largest = placed[int(np.argmax([b["pair_mask"].size for b in placed]))]
  mem = common.xla_memory(trainer.lower(state, largest).compile())
  step = float(np.median(times))
  b = len(batches[0]["doc_mask"])
  mib = (mem["argument_bytes"] + mem["temp_bytes"]) / 2**20 if mem else None
  frozen = trainer.frozen_labels  # frozen: cached outside the step
  work = mean_flops(model, batches, train=True, label_encoder_in_step=not frozen,
                    label_encoder_trained=not frozen)
  use = flops.utilisation(work, float(np.mean(times)), peak)
  counts = [flops.batch_pair_counts(x) for x in batches]
  first = next(iter(firsts.values()))
  return {"train_step_s": step, "train_step_mean_s": float(np.mean(times)),
          **{f"train_{k}": v for k, v in use.items()},
          "train_pairs_real": float(np.mean([c[0] for c in counts])),
          "train_pairs_executed": float(np.mean([c[1] for c in counts])),
          "train_pair_buckets": sorted(firsts), "train_step_min_s": min(times),
          "train_step_max_s": max(times), "train_docs_per_s": b / step,
          "train_first_call_s": first, "train_compile_s": first - step,
          "train_compilations": compilations, "xla_train_mib": mib,
          "train_peak_rss_mb": rss}, state


def encoder_forward(graphdef):
  """The bare text encoder of an eval-mode GLiDRE, jitted (on the default
  device; the benchmark's mesh is that one device)."""
  @jax.jit
  def forward(params, rest, input_ids, attention_mask):
    model = nnx.merge(graphdef, params, rest)
    return model.token_rep_layer.bert_layer.model(input_ids, attention_mask)
  return forward


def pass_seconds(fn, batches: list[dict], passes: int) -> float:
  """Median over `passes` of the time to run fn over all batches."""
  return float(np.median([sum(common.timed(functools.partial(fn, b))[0] for b in batches)
                          for _ in range(passes)]))


def measure_inference(trainer, state, data, batches: list[dict], passes: int, model,
                      peak: float) -> dict:
  predictor, params, rest = trainer.predictor, state.params, state.rest
  vectors = predictor.label_step(params, rest, data.label_batch())
  glidre = lambda b: predictor.predict_step(params, rest, b, vectors)
  forward = encoder_forward(trainer.eval_graphdef)
  encoder = lambda b: forward(params, rest, b["input_ids"], b["attention_mask"])
  traces = predictor.num_traces
  compile_s = common.timed(lambda: glidre(batches[0]))[0]
  encoder_compile_s = common.timed(lambda: encoder(batches[0]))[0]
  for b in batches[1:]:  # every other pair bucket compiles before the timed passes
    glidre(b)
  docs = int(sum(b["doc_mask"].sum() for b in batches))
  t_glidre = pass_seconds(glidre, batches, passes)
  t_encoder = pass_seconds(encoder, batches, passes)
  work = {k: sum(c[k] for c in (flops.step_flops(
      model, flops.batch_shape(b), train=False, label_encoder_in_step=False,
      label_encoder_trained=False, label_vectors_given=True) for b in batches))
          for k in ("real", "executed")}
  use = flops.utilisation(work, t_glidre, peak)
  return {"infer_docs": docs, **{f"infer_{k}": v for k, v in use.items()},
          "predict_first_call_s": compile_s,
          "predict_compilations": predictor.num_traces - traces,
          "encoder_first_call_s": encoder_compile_s, "glidre_docs_per_s": docs / t_glidre,
          "encoder_docs_per_s": docs / t_encoder, "glidre_over_encoder": t_glidre / t_encoder}


def plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  x = np.arange(len(rows))
  names = [str(r["batch_size"]) for r in rows]
  axes[0].bar(x, [r["train_step_s"] for r in rows], color="tab:blue")
  axes[0].set(xticks=x, xticklabels=names, xlabel="batch size",
              ylabel="train step (s, median)")
  series = [("train", "train_docs_per_s"), ("GLiDRE inference", "glidre_docs_per_s"),
            ("text encoder forward", "encoder_docs_per_s")]
  for k, (label, key) in enumerate(series):
    axes[1].bar(x + (k - 1) * 0.27, [r[key] for r in rows], 0.27, label=label)
  axes[1].set(xticks=x, xticklabels=names, xlabel="batch size", ylabel="documents / s")
  axes[1].legend(fontsize=8)
  fig.suptitle(title)
  common.save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch_sizes", default="1,4,8")
  parser.add_argument("--steps", type=int, default=None,
                      help="timed train steps, after each shape's first call (default 20; --quick 5)")
  parser.add_argument("--infer_docs", type=int, default=None,
                      help="documents of the inference passes (default 32; --quick 16)")
  parser.add_argument("--passes", type=int, default=None,
                      help="timed inference passes, median taken (default 3; --quick 1)")
  parser.add_argument("--split", default=None, help="default: the config's train split")
  parser.add_argument("--bucket", default=None, help="L,W,E (default: the most common)")
  common.add_override_arg(parser)
  parser.add_argument("--quick", action="store_true", help="CPU-sized: fewer steps and documents")
  parser.add_argument("--same_work", action="store_true",
                      help="the official code's work: " + " ".join(SAME_WORK)
                      + " (before --set; use --batch_sizes 4)")
  parser.add_argument("--mode", choices=("both", "train", "predict"), default="both",
                      help="predict: inference alone (its own peak RSS)")
  parser.add_argument("--pairs", choices=("own", "largest"), default="own",
                      help="batches padded to their own pair bucket, as the training and "
                      "prediction pipelines pad them (one compilation per bucket reached), "
                      "or all to the largest one (one compilation)")
  parser.add_argument("--gemm_n", type=int, default=2048,
                      help="size of the square fp32 matmul probe of the machine's GEMM rate")
  parser.add_argument("--out", default="results/throughput")
  args = parser.parse_args(argv)
  steps = args.steps or (5 if args.quick else 20)
  infer_docs = args.infer_docs or (16 if args.quick else 32)
  passes = args.passes or (1 if args.quick else 3)

  overrides = (SAME_WORK if args.same_work else []) + args.set
  config = common.apply_overrides(shipped.config_module("default").get_config(), overrides)
  data = registry.data_setup(config)
  split = args.split or config.data.train_split
  feats, bucket, counts = bench_features(
      data, split, common.parse_ints(args.bucket) if args.bucket else None)
  print(f"{split}: {sum(counts.values())} documents, buckets (L, W, E) hit: "
        f"{dict(counts.most_common())}; benchmarking the {len(feats)} in {bucket}", flush=True)
  labels = data.label_batch()
  peak = flops.gemm_flops_per_s(args.gemm_n)
  print(f"fp32 GEMM probe ({args.gemm_n}³): {peak / 1e9:.1f} GFLOP/s", flush=True)
  model = run_dir.build_model(config)
  trainer = trainer_lib.Trainer(model, config.train, sharding.make_mesh(1, 1, jax.devices()[:1]))
  if args.mode == "predict":  # no optimizer state allocated: inference's own RSS
    _, params, rest = nnx.split(model, nnx.Param, ...)
    state = trainer_lib.TrainState(None, nnx.as_pure(params), nnx.as_pure(rest), None, {})
  else:
    state = trainer.initial_state
  # The FLOP counts need shapes only: the built model's arrays would stay
  # resident beside the state's (peak RSS).
  model = run_dir.abstract_model(config)
  rows = []
  for b in sorted(common.parse_ints(args.batch_sizes)):
    row = {"batch_size": b, "bucket": "x".join(map(str, bucket)), "timed_steps": steps}
    if args.mode != "predict":
      train_row, state = measure_train(trainer, state, train_batches(
          feats, b, steps, data, labels, own_pairs=args.pairs == "own"), model, peak)
      row.update(train_row)
      print(f"B={b}: train step {row['train_step_s']:.3f} s (median of {steps}), MFU "
            f"{row['train_mfu_real']:.2f} of the real work", flush=True)
    if args.mode != "train":
      chunks = [feats[s:s + b] for s in range(0, min(infer_docs, len(feats)), b)]
      batches = collate_chunks(chunks, data, labels, b, own_pairs=args.pairs == "own")
      row.update(measure_inference(trainer, state, data, batches, passes, model, peak))
      print(f"B={b}: inference {row['glidre_docs_per_s']:.2f} docs/s, MFU "
            f"{row['infer_mfu_real']:.2f} of the real work", flush=True)
    row.update(peak_rss_mb=peak_rss_mb(), load_avg_1m=os.getloadavg()[0])
    rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
  out = pathlib.Path(args.out)
  setup = {"config": "configs/default.py", "overrides": overrides, "mode": args.mode,
           "gemm_flops_per_s": peak, "gemm_probe_n": args.gemm_n, "split": split,
           "bucket": list(bucket), "bucket_documents": len(feats),
           "documents_per_bucket": {"x".join(map(str, k)): v for k, v in counts.items()},
           "padding": "featurize.collate with the training buckets (as the training pipeline)",
           "train_pairs": args.pairs}
  common.write_results(out, "throughput", rows, setup=setup)
  if args.mode == "both":
    plot(rows, out / "throughput.png", f"GLiDRE-MiniLM throughput, bucket {bucket}, "
         f"{jax.devices()[0].platform}")
  print("\n" + common.format_table(rows, COLUMNS))
  print(f"wrote {out}/throughput.{{json,csv,png}}")


if __name__ == "__main__":
  allocator.relaunch()  # XLA:CPU's buffers under mimalloc, as the CLIs run
  main()

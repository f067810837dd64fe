"""Few-shot learning curve: F1 against the number of training documents N.

    python -m glidre_jax.bench.few_shot [--quick] [--sizes 1,5,10,50,100,400] \
        [--seeds 0,1,2] [--steps N] [--test_file PATH] [--out results/few_shot]

For each N and seed, `glidre_jax.train.train` runs configs/default.py with
data.subset_size=N documents drawn with data.subset_seed=seed from its train
split (dev[:400]), selecting on its eval split (dev[400:]), in
out/runs/n{N}_s{seed}. Reported per run: the best dev F1 / Ign F1 at the
swept threshold and at the fixed eval.threshold (τ=0.5) of the same
evaluation; with --test_file (DocRED format), the best checkpoint scored on it
at the dev-selected threshold and at τ=0.5. Then mean ± std over seeds per N,
and a PNG of F1 against N with the published GLiDRE few-shot test F1.

Run directories are reused deliberately: one whose config.json equals the
requested config keeps its summary.json when finished, or resumes from its
latest checkpoint (train() resumes exactly); one with another config, or any
with --fresh, is deleted and trained afresh. Finished runs keep best/ (the
parameters scored on --test_file) but not their latest train state (optimizer
moments: 2/3 of the space) unless --keep_latest. The runs share a JAX
persistent compilation cache (OUT/jax_cache): a bucket shape compiles once
for the whole sweep.

--quick is CPU-sized (~15 min on 2 cores): N in 1,5,10,50, one seed,
quick_steps(N) steps (40 up to N=20, then 2 per document, at most 100: each
document seen a few times), evaluation on the first 48 eval documents. The full sizes and the
default 200 steps are meant for a GPU/TPU.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil

import jax
import numpy as np

from glidre_jax import allocator, evaluate, metrics, shipped, train as train_lib
from glidre_jax.bench import common
from glidre_jax.data import readers

# GLiDRE paper, few-shot Re-DocRED test F1 (DeBERTa-v3-large + BGE-large).
PUBLISHED_TEST_F1 = {1: 24.45, 5: 33.71, 10: 41.73, 50: 54.54, 100: 60.04, 500: 69.26,
                     1000: 72.09}
SCORES = ("dev_f1", "dev_ign_f1", "dev_f1_fixed", "dev_ign_f1_fixed",
          "test_f1", "test_ign_f1", "test_f1_fixed", "test_ign_f1_fixed")
COLUMNS = [("N", "n", "d"), ("seeds", "seeds", "d")] + [
    (f"{key} %", f"{key}_text", "s") for key in SCORES[:4] + SCORES[4:6]]


def quick_steps(n: int) -> int:
  """Steps of a --quick run with N documents: enough epochs for larger N."""
  return min(100, max(40, 2 * n))


def run_config(args, n: int, seed: int):
  """configs/default.py (+ variant and --set overrides) for one (N, seed) run."""
  c = common.apply_overrides(
      shipped.config_module("default").get_config(args.config_variant), args.set)
  if c.data.held_out_relations:
    raise ValueError("few_shot scores all relations; data.held_out_relations must be empty")
  c.data.subset_size, c.data.subset_seed = n, seed
  quick = getattr(args, "quick", False)
  c.train.steps = args.steps or (quick_steps(n) if quick else c.train.steps)
  c.train.eval_every = c.train.steps  # evaluate (and keep best) at the end only
  c.train.log_every = min(c.train.log_every, c.train.steps)
  if args.max_docs is not None:
    c.eval.max_docs = args.max_docs
  return c


def train_or_reuse(config, workdir: pathlib.Path, fresh: bool) -> dict:
  """summary.json of a finished run with this config, else train (resuming a
  run with the same config, restarting one with another)."""
  saved = workdir / "config.json"
  if workdir.exists() and (fresh or not saved.exists()
                           or saved.read_text() != config.to_json_best_effort(indent=2)):
    shutil.rmtree(workdir)
  if (workdir / "summary.json").exists():
    return json.loads((workdir / "summary.json").read_text())
  return train_lib.train(config, workdir)


def score_test_file(workdir: pathlib.Path, path: str, best: dict, max_docs: int) -> dict:
  """The best checkpoint on a DocRED-format file, at the dev-selected τ and at
  the fixed τ; Ign F1 against the run's own training documents."""
  run = evaluate.load_run(workdir)
  docs = readers.read_docred(path, run.schema)[:max_docs or None]
  candidates = run.score(docs)
  train = metrics.train_facts(run.train_docs(), run.schema)
  # A one-threshold sweep: best_* are the scores at the dev-selected τ.
  r = evaluate.evaluate_candidates(candidates, docs, run.schema, train, best["threshold"],
                                   (best["best_threshold"],))
  return {"test_docs": len(docs), "test_f1": r["best_f1"], "test_ign_f1": r["best_ign_f1"],
          "test_f1_fixed": r["f1"], "test_ign_f1_fixed": r["ign_f1"]}


def run_row(args, n: int, seed: int, out: pathlib.Path) -> dict:
  workdir = out / "runs" / f"n{n}_s{seed}"
  config = run_config(args, n, seed)
  config.workdir = str(workdir)
  summary = train_or_reuse(config, workdir, args.fresh)
  best = summary["best_dev"]
  row = {"n": n, "seed": seed, "steps": config.train.steps, "eval_docs": config.eval.max_docs,
         "dev_f1": best["best_f1"], "dev_ign_f1": best["best_ign_f1"],
         "best_tau": best["best_threshold"], "dev_f1_fixed": best["f1"],
         "dev_ign_f1_fixed": best["ign_f1"], "fixed_tau": best["threshold"],
         "train_step_compilations": summary["train_step_compilations"],
         "wall_seconds": summary["wall_seconds"],
         # ru_maxrss: the peak of this process so far (the runs share it).
         "process_peak_rss_mb": summary["peak_rss_mb"]}
  if args.test_file:
    row.update(score_test_file(workdir, args.test_file, best, args.test_max_docs))
  if not args.keep_latest:  # finished: summary.json and best/ are all a rerun reads
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
  jax.clear_caches()  # the next run builds its own model and jitted steps
  return row


def curve(rows: list[dict]) -> list[dict]:
  """Mean and std (over seeds, ddof=1; 0 for one seed) of each score per N."""
  points = []
  for n in sorted({r["n"] for r in rows}):
    sel = [r for r in rows if r["n"] == n]
    point = {"n": n, "seeds": len(sel), "fixed_tau": sel[0].get("fixed_tau"),
             "published_test_f1": PUBLISHED_TEST_F1.get(n)}
    for key in SCORES:
      if key in sel[0]:
        values = np.asarray([r[key] for r in sel], float)
        mean = values.mean()
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        point.update({f"{key}_mean": float(mean), f"{key}_std": float(std),
                      f"{key}_text": f"{100 * mean:.2f} ± {100 * std:.2f}"})
    points.append(point)
  return points


def plot(points: list[dict], path: pathlib.Path, title: str) -> None:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  fixed = points[0]["fixed_tau"]
  series = [("dev_f1", "dev F1 (swept τ)"), ("dev_f1_fixed", f"dev F1 (τ={fixed})"),
            ("test_f1", "test F1 (dev-selected τ)")]
  for key, label in series:
    if f"{key}_mean" in points[0]:
      ax.errorbar([p["n"] for p in points], [100 * p[f"{key}_mean"] for p in points],
                  [100 * p[f"{key}_std"] for p in points], marker="o", capsize=3, label=label)
  ns = sorted(PUBLISHED_TEST_F1)
  ax.plot(ns, [PUBLISHED_TEST_F1[n] for n in ns], "k--s", alpha=0.6,
          label="published, Re-DocRED test, large encoders")
  ax.set(xscale="log", xlabel="training documents N", ylabel="F1 (%)", title=title)
  ax.legend(fontsize=8)
  common.save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default=None, help="default 1,5,10,50,100,400; --quick 1,5,10,50")
  parser.add_argument("--seeds", default=None, help="default 0,1,2; --quick 0")
  parser.add_argument("--steps", type=int, default=None,
                      help="train.steps (default: the config's; --quick quick_steps(N))")
  parser.add_argument("--max_docs", type=int, default=None,
                      help="eval.max_docs: dev documents scored (--quick 48; 0: all)")
  parser.add_argument("--test_file", default=None, help="DocRED-format JSON scored at the end")
  parser.add_argument("--test_max_docs", type=int, default=0, help="first N test documents only")
  parser.add_argument("--config_variant", default="", help="configs/default.py variant")
  common.add_override_arg(parser)
  parser.add_argument("--fresh", action="store_true", help="retrain even finished runs")
  parser.add_argument("--keep_latest", action="store_true",
                      help="keep finished runs' latest train state (default: only best/)")
  parser.add_argument("--compile_cache", default=None,
                      help="JAX persistent compilation cache (default: OUT/jax_cache; "
                           "'' disables): the runs share their train/predict shapes")
  parser.add_argument("--quick", action="store_true", help="CPU-sized, see the module doc")
  parser.add_argument("--out", default="results/few_shot")
  args = parser.parse_args(argv)
  if args.quick:
    args.max_docs = 48 if args.max_docs is None else args.max_docs
  sizes = common.parse_ints(args.sizes or ("1,5,10,50" if args.quick else "1,5,10,50,100,400"))
  seeds = common.parse_ints(args.seeds or ("0" if args.quick else "0,1,2"))
  out = pathlib.Path(args.out)
  cache = out / "jax_cache" if args.compile_cache is None else args.compile_cache
  if cache:
    jax.config.update("jax_compilation_cache_dir", str(cache))

  rows = []
  for n in sizes:
    for seed in seeds:
      row = run_row(args, n, seed, out)
      rows.append(row)
      test = f"; test F1 {100 * row['test_f1']:.2f}" if args.test_file else ""
      print(f"N={n} seed={seed}: dev F1 {100 * row['dev_f1']:.2f} at τ={row['best_tau']}, "
            f"{100 * row['dev_f1_fixed']:.2f} at τ={row['fixed_tau']}{test}", flush=True)
  points = curve(rows)
  config = run_config(args, sizes[0], seeds[0])
  steps = {n: run_config(args, n, seeds[0]).train.steps for n in sizes}
  variant = f":{args.config_variant}" if args.config_variant else ""
  setup = {"config": f"configs/default.py{variant}",
           "overrides": args.set, "steps_per_n": steps,
           "train_split": config.data.train_split, "eval_split": config.data.eval_split,
           "eval_max_docs": config.eval.max_docs, "test_file": args.test_file,
           "published_test_f1": PUBLISHED_TEST_F1, "curve": points}
  common.write_results(out, "few_shot", rows, setup=setup)
  common.write_csv(out / "few_shot_curve.csv", [{k: v for k, v in p.items() if not
                                                 k.endswith("_text")} for p in points])
  low, high = min(steps.values()), max(steps.values())
  plot(points, out / "few_shot.png",
       f"GLiDRE-MiniLM few-shot, {low if low == high else f'{low}-{high}'} steps")
  print("\n" + common.format_table(points, [c for c in COLUMNS if c[1] in points[0]]))
  print(f"wrote {out}/few_shot.{{json,csv,png}} and few_shot_curve.csv")


if __name__ == "__main__":
  allocator.relaunch()  # XLA:CPU's buffers under mimalloc, as the CLIs run
  main()

"""Scoring documents, the dev evaluation of training, and the evaluation CLI.

    python -m glidre_jax.evaluate --workdir=runs/default --split='dev[400:]' \
        --output=predictions.json [--which latest]

loads the best (or latest) checkpoint of a run (--workdir, or --checkpoint as
in the other tools), predicts the split, writes the official result format
(a list of {title, h_idx, t_idx, r}) and prints P / R / F1 / Ign F1 with the
Re-DocRED semantics, at τ and over a sweep. τ is the one stored with the best
checkpoint (see `with_selection`) unless --threshold gives one.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from absl import flags

from glidre_jax import allocator, checkpointing, cli, decoding, inference, metrics, run_dir
from glidre_jax.decoding import MIN_CANDIDATE_SCORE, Candidates, to_predictions  # noqa: F401
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data import registry
from glidre_jax.data.documents import Document
from glidre_jax.data.relations import RelationSchema

# eval.threshold_selection: "sweep" uses a checkpoint with the best τ of
# eval.sweep on dev; "fixed" with eval.threshold (the paper's protocol, τ=0.5).
THRESHOLD_SELECTIONS = ("sweep", "fixed")


def score_documents(predict: Callable[[dict], np.ndarray], features: Sequence[dict],
                    buckets: featurize_lib.Buckets, label_batch: dict,
                    batch_size: int, progress: Callable | None = None,
                    window: int = 512) -> Candidates:
  """Runs `predict` (padded batch -> probabilities [B, E, E, K]) over documents.

  Each batch holds documents of one bucket (`data/batching.plan_batches`;
  windowed features, see `data.windows`, batch apart in windows of `window`
  subwords); results keyed by original index.
  """
  num_labels = int(np.sum(label_batch["label_mask"]))
  rows = []
  for chunk, _, probs in inference.predict_batches(predict, features, buckets, label_batch,
                                                   batch_size, window, progress):
    rows += [decoding.candidates_of(probs[row], features[i], i, num_labels)
             for row, i in enumerate(chunk)]
  return Candidates.concatenate(rows)


def score_split(predictor, params, rest, data, features: Sequence[dict],
                progress: Callable | None = None) -> Candidates:
  """Candidates of featurized documents under (params, rest); labels encoded once."""
  label_batch = data.label_batch()
  label_vectors = predictor.label_step(params, rest, label_batch)
  predict = lambda batch: predictor.predict_step(params, rest, batch, label_vectors)
  return score_documents(predict, features, data.buckets, label_batch,
                         data.config.data.eval_batch_size, progress=progress,
                         window=data.config.data.max_length)


def evaluate_candidates(candidates: Candidates, docs: Sequence[Document],
                        schema: RelationSchema, train=None, threshold: float = 0.5,
                        sweep: Sequence[float] = ()) -> dict:
  """Scores at `threshold` and the best threshold of `sweep` (dev selection).

  `train`: `metrics.train_facts` of the training documents (for Ign F1).
  """
  gold = metrics.gold_facts(docs, schema)
  at = lambda tau: metrics.score(to_predictions(candidates, docs, schema, tau), gold,
                                 train=train)
  fixed = at(threshold)
  result = {"threshold": threshold, **{k: v for k, v in fixed.as_dict().items()}}
  if sweep:
    swept = {tau: at(tau) for tau in sweep}
    best_tau = max(swept, key=lambda tau: swept[tau].f1)
    result.update(best_threshold=best_tau, best_f1=swept[best_tau].f1,
                  best_ign_f1=swept[best_tau].ign_f1)
  return result


def check_selection(eval_cfg) -> None:
  """eval.threshold_selection is known, and "sweep" has thresholds to sweep."""
  selection = eval_cfg.threshold_selection
  if selection not in THRESHOLD_SELECTIONS:
    raise ValueError(f"eval.threshold_selection must be one of {THRESHOLD_SELECTIONS}, "
                     f"got {selection!r}")
  if selection == "sweep" and not eval_cfg.sweep:
    raise ValueError("eval.threshold_selection='sweep' needs thresholds in eval.sweep")


def with_selection(result: dict, selection: str) -> dict:
  """`result` (of `evaluate_candidates`) plus the τ a checkpoint scored so is
  used with and its scores: selected_threshold, selected_f1, selected_ign_f1."""
  if selection == "sweep":
    picked = (result["best_threshold"], result["best_f1"], result["best_ign_f1"])
  elif selection == "fixed":
    picked = (result["threshold"], result["f1"], result["ign_f1"])
  else:
    raise ValueError(f"threshold selection must be one of {THRESHOLD_SELECTIONS}, "
                     f"got {selection!r}")
  return {**result, **dict(zip(("selected_threshold", "selected_f1", "selected_ign_f1"),
                               picked))}


def improves(scores: dict, best: dict | None) -> bool:
  """Model selection: `scores` (of `with_selection`) beat the best so far by
  the F1 at the τ each checkpoint is used with (`best`: None or a run's
  stored best scores, which before stored thresholds had no selected_f1)."""
  return best is None or scores["selected_f1"] > best.get("selected_f1", -1.0)


def format_scores(result: dict) -> str:
  line = (f"τ={result['threshold']:.2f}  P {100 * result['precision']:.2f}  "
          f"R {100 * result['recall']:.2f}  F1 {100 * result['f1']:.2f}  "
          f"Ign F1 {100 * result['ign_f1']:.2f}  (pred {result['num_pred']}, "
          f"gold {result['num_gold']})")
  if "best_threshold" in result:
    line += (f" | best τ={result['best_threshold']:.2f}: F1 {100 * result['best_f1']:.2f}"
             f"  Ign F1 {100 * result['best_ign_f1']:.2f}")
  return line


class Evaluator:
  """Dev-set scoring during training; documents are featurized once for the run."""

  def __init__(self, predictor: inference.Predictor, data: registry.DataSetup, docs,
               train_facts):
    self.predictor, self.data, self.docs, self.train_facts = predictor, data, docs, train_facts
    self.features = data.features(docs)

  def __call__(self, state) -> dict:
    """Scores at eval.threshold, over the sweep, and at the τ the checkpoint
    would be used with (`selected_threshold`, `selected_f1`)."""
    cfg = self.data.config
    candidates = score_split(self.predictor, state.params, state.rest, self.data, self.features)
    scores = evaluate_candidates(candidates, self.docs, self.data.schema, self.train_facts,
                                 cfg.eval.threshold, tuple(cfg.eval.sweep))
    return with_selection(scores, cfg.eval.threshold_selection)


@dataclasses.dataclass
class LoadedRun:
  """A trained run rebuilt from its directory: config, data, weights, predictor."""
  config: ml_collections.ConfigDict
  data: registry.DataSetup  # evaluation view (held-out or eval-file labels)
  params: object
  rest: object
  predictor: inference.Predictor
  train_data: registry.DataSetup | None = None  # training view (default: `data`)

  @property
  def schema(self) -> RelationSchema:
    return self.data.schema

  def read_split(self, split: str) -> list[Document]:
    return self.data.read_split(split)

  def train_docs(self) -> list[Document]:
    """The documents the run trained on (their facts define Ign F1)."""
    return (self.train_data or self.data).train_docs()

  def train_facts(self):
    """Training facts for Ign F1, named as the training label set names them."""
    return metrics.train_facts(self.train_docs(), (self.train_data or self.data).schema)

  def score(self, docs: Sequence[Document], progress=None) -> Candidates:
    return score_split(self.predictor, self.params, self.rest, self.data,
                       self.data.features(docs), progress=progress)


def load_run(workdir, which: str = "best", *, data_dir: str | None = None) -> LoadedRun:
  """Rebuilds a `glidre_jax.train` run from `workdir` with its best/latest weights."""
  config = run_dir.load_config(pathlib.Path(workdir))
  if data_dir is not None:
    config.data.data_dir = data_dir
  config, graphdef, params, rest = run_dir.restore_weights(workdir, which, config)
  # held-out relations, if any
  train_data, eval_data = registry.zero_shot_split(registry.data_setup(config))
  return LoadedRun(config, eval_data, params, rest, inference.Predictor(graphdef), train_data)


FLAGS = flags.FlagValues()  # this tool's own (see glidre_jax.cli)
flags.DEFINE_string("workdir", None, "a glidre_jax.train run directory (or --checkpoint)",
                    flag_values=FLAGS)
cli.define_checkpoint(FLAGS, "the run directory, as --workdir; the old spelling "
                      "--checkpoint best|latest still means --which", required=False)
cli.define_which(FLAGS)
flags.DEFINE_string("split", None, "split expression, e.g. 'dev[400:]' (default: the run's "
                    "eval split)", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "override the run's data directory", flag_values=FLAGS)
flags.DEFINE_float("threshold", None, "default: the τ stored with the best checkpoint "
                   "(eval.threshold for --which latest or runs that stored none)",
                   flag_values=FLAGS)
flags.DEFINE_string("output", None, "write predictions here (JSON list)", flag_values=FLAGS)


def run_and_weights(args) -> tuple[str, str]:
  """(run directory, best|latest) from --workdir/--checkpoint and --which.

  --checkpoint names the run as in the other tools; before, here, it was the
  spelling of --which, and `--checkpoint best|latest` still means that (a
  run directory of that name is `--checkpoint ./best`).
  """
  workdir, checkpoint, which = args.workdir, args.checkpoint, args.which
  if checkpoint in cli.WHICH:
    if args["which"].present and which != checkpoint:
      cli.usage_error(f"--checkpoint {checkpoint} (the old spelling of --which) contradicts "
                      f"--which {which}")
    checkpoint, which = None, checkpoint
  if workdir and checkpoint and workdir != checkpoint:
    cli.usage_error(f"--workdir {workdir} and --checkpoint {checkpoint} name two runs")
  if not (workdir or checkpoint):
    cli.usage_error("--workdir (or --checkpoint) must name a glidre_jax.train run directory")
  return workdir or checkpoint, which


def main(argv=None):
  cli.parse(FLAGS, argv, __doc__)
  workdir, which = run_and_weights(FLAGS)
  run = load_run(workdir, which, data_dir=FLAGS.data_dir)
  split = FLAGS.split or run.config.data.eval_split
  docs = run.read_split(split)
  if FLAGS.threshold is None:
    threshold = checkpointing.selected_threshold(workdir, which, run.config.eval.threshold)
    print(f"τ={threshold}: the run's {which} checkpoint's "
          f"(eval.threshold_selection={run.config.eval.threshold_selection!r})")
  else:
    threshold = FLAGS.threshold
  candidates = run.score(docs, progress=cli.progress_bar(f"predict {split}"))
  train = run.train_facts()
  result = evaluate_candidates(candidates, docs, run.schema, train,
                               threshold, tuple(run.config.eval.sweep))
  print(f"{split} ({len(docs)} documents): {format_scores(result)}")
  if FLAGS.output:
    preds = to_predictions(candidates, docs, run.schema, threshold)
    with open(FLAGS.output, "w") as f:
      json.dump(preds, f)
    print(f"wrote {len(preds)} predictions to {FLAGS.output}")


console_main = allocator.console(main)  # the `glidre-evaluate` console script

if __name__ == "__main__":
  console_main()

"""Train and evaluate GLiDRE.

    python -m glidre_jax.train --config=configs/default.py [--config.train.steps=200]

A step is one optimizer update (train.grad_accum micro-batches). Logs the
loss every `train.log_every` steps (fetched from the device only then),
evaluates on the dev split every `train.eval_every` steps with a threshold
sweep, keeps the latest checkpoint (with the data iterator, so a killed run
resumes exactly) and the best-on-dev parameters under `workdir`, with the
threshold τ they were selected at (`eval.threshold_selection`).
"""
from __future__ import annotations

import json
import logging
import pathlib
import resource
import sys
import time

import jax
import numpy as np
from absl import app, flags

from glidre_jax import (checkpointing, cli, cli_config, distributed, evaluate, metrics, run_dir,
                        sharding, shipped, trainer as trainer_lib)
from glidre_jax.data import batch as batch_lib
from glidre_jax.data import pipeline, registry

log = logging.getLogger("glidre_jax.train")

_CONFIG = shipped.define_config_flag(
    "config", "default", "a shipped config (default, cdr, ...) or a config file, [:variant]")
_WORKDIR = flags.DEFINE_string("workdir", None, "overrides config.workdir")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "compile the train step for the largest "
                             "bucket, print its memory analysis and exit")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process runs)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the run")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
_DISTRIBUTED_AUTO = flags.DEFINE_bool("distributed_auto", False,
                                      "let JAX find the cluster (Cloud TPU pods, SLURM)")


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _eval_note(config, own_labels: bool) -> str:
  if not own_labels:
    return ""
  if config.data.held_out_relations:
    return " (held out of training: zero-shot)"
  return " (the eval file's relation names)"


def train(config, workdir: pathlib.Path) -> dict:
  """Runs the whole training; returns the summary it prints at the end."""
  t_start = time.time()
  evaluate.check_selection(config.eval)  # before anything is built
  is_main = jax.process_index() == 0
  run_dir.save_config(config, workdir) if is_main else None
  data, eval_data = registry.zero_shot_split(registry.data_setup(config))
  d, tc = config.data, config.train

  train_source = data.source(d.train_split)
  train_docs = data.train_docs()
  eval_docs = eval_data.read_split(d.eval_split)
  if config.eval.max_docs:
    eval_docs = eval_docs[:config.eval.max_docs]
  log.info("train %s: %d documents, %d relation labels%s; eval %s: %d documents, %d labels%s",
           d.train_split, len(train_docs), data.schema.num_labels,
           " (open: per-batch label sets)" if data.open_labels else "", d.eval_split,
           len(eval_docs), eval_data.schema.num_labels,
           _eval_note(config, eval_data is not data))

  dataset = pipeline.build_dataset(
      train_source, tokenizer=data.tokenizer, label_tokenizer=data.label_tokenizer,
      label_names=data.schema.names, batch_size=d.batch_size, buckets=data.buckets,
      max_length=d.max_length, label_max_length=config.model.label_max_length,
      decode=data.decode, train=True, seed=d.shuffle_seed, sort_window=d.sort_window,
      subset_size=d.subset_size or None, subset_seed=d.subset_seed,
      pair_filter=data.pair_filter, open_labels=data.open_labels,
      window_stride=d.window_stride)
  iterator = pipeline.make_iterator(dataset)

  model = run_dir.build_model(config)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  trainer = trainer_lib.Trainer(model, tc, mesh)
  del model
  state = trainer.initial_state
  checkpoints = checkpointing.RunCheckpoints(workdir, tc.checkpoint_every)
  start_step = 0
  if tc.resume:
    try:
      restored = checkpoints.restore_latest(state, iterator)
    except checkpointing.BrokenCheckpointError:
      checkpoints.close()
      raise
    if restored is not None:
      start_step, state = restored
      log.info("resumed from step %d", start_step)
  best = checkpoints.best_scores()  # None before the first evaluation
  evaluator = evaluate.Evaluator(trainer.predictor, eval_data, eval_docs,
                        metrics.train_facts(train_docs, data.schema))
  writer = _summary_writer(workdir) if is_main else None
  losses_logged = []

  bar = cli.progress_bar("train")(total=tc.steps, initial=start_step,
                                        disable=not is_main)
  say = bar.write if is_main else (lambda *_: None)
  t_steps, steps_timed = time.time(), 0
  profiler = _StepProfiler(workdir / "profile", start_step, tc.profile_steps)
  try:
    for step in range(start_step + 1, tc.steps + 1):  # one optimizer update each
      profiler.before(step)
      for _ in range(tc.grad_accum):  # the update lands on the last micro-step
        state = trainer.train_step(state, trainer.place(next(iterator)))
      if profiler.after(step, state):
        say(f"wrote a profiler trace of {tc.profile_steps} steps to {workdir / 'profile'} "
            f"(tensorboard --logdir {workdir / 'profile'})")
      steps_timed += 1
      bar.update(1)
      if step % tc.log_every == 0 or step == tc.steps:
        logged, state = trainer.fetch_metrics(state)
        rate = steps_timed / (time.time() - t_steps)
        t_steps, steps_timed = time.time(), 0
        losses_logged.append((step, logged["loss"]))
        bar.set_postfix(loss=f"{logged['loss']:.4f}", steps_s=f"{rate:.2f}")
        if writer:
          writer.add_scalar("train/loss", logged["loss"], step)
          writer.add_scalar("train/grad_norm", logged["grad_norm"], step)
          writer.add_scalar("train/steps_per_second", rate, step)
      if step % tc.eval_every == 0 or step == tc.steps:
        scores = evaluator(state)
        say(f"step {step} dev: {evaluate.format_scores(scores)}")
        if writer:
          for key in ("f1", "ign_f1", "precision", "recall", "best_f1", "best_threshold",
                      "selected_f1", "selected_threshold"):
            writer.add_scalar(f"dev/{key}", scores[key], step)
        if evaluate.improves(scores, best):  # by the F1 at the τ it will be used with
          best = {**scores, "step": step}
          checkpoints.save_best(step, state.params, best)
      stopping = step == tc.stop_after_step
      if step % tc.checkpoint_every == 0 or step == tc.steps or stopping:
        checkpoints.save_latest(step, state, iterator, force=step == tc.steps or stopping)
      if stopping:
        say(f"stopping after step {step} (train.stop_after_step); run again to resume")
        break
  finally:
    # Saves are asynchronous: let the last one land even if the loop failed.
    profiler.close()
    bar.close()
    checkpoints.wait()
    checkpoints.close()
    if writer:
      writer.close()
  summary = {
      "best_dev": best or {},  # empty when no evaluation ran (stop_after_step)
      "steps": tc.steps,  # optimizer updates
      "micro_steps": int(jax.device_get(state.step)),
      "train_step_compilations": trainer.num_traces,
      "predict_compilations": trainer.predictor.num_traces,
      "peak_rss_mb": round(peak_rss_mb(), 1),
      "wall_seconds": round(time.time() - t_start, 1),
      "logged_losses": losses_logged,
  }
  if is_main:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
  return summary


def abstract_batch(config, num_labels: int) -> dict:
  """Shapes of a global batch in the largest bucket (for AOT compilation)."""
  d = config.data
  b = d.batch_size * jax.process_count()
  l, w, e = max(d.seq_buckets), max(d.word_buckets), max(d.entity_buckets)
  k, t = num_labels, config.model.label_max_length
  shapes = {"input_ids": (b, l), "attention_mask": (b, l), "word_index": (b, w),
            "word_mask": (b, w), "entity_word_weights": (b, e, w), "entity_mask": (b, e),
            "pair_mask": (b, e, e), "labels": (b, e, e, k), "doc_mask": (b,),
            "label_input_ids": (k, t), "label_attention_mask": (k, t), "label_mask": (k,)}
  return {name: jax.ShapeDtypeStruct(shape, np.float32 if name == "entity_word_weights"
                                     else np.int32) for name, shape in shapes.items()}


def memory_report(config) -> str:
  """Compiles the train step for the largest bucket and reports its memory."""
  num_labels = (max(config.data.label_buckets) if config.data.open_labels
                else registry.load_schema(config).num_labels)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  trainer = trainer_lib.Trainer(run_dir.build_model(config), config.train, mesh)
  batch = abstract_batch(config, num_labels)
  placed = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=(
      trainer.batch_sharding if len(v.shape) and k in batch_lib.DOC_FIELDS
      else sharding.named(mesh))) for k, v in batch.items()}
  t0 = time.time()
  compiled = trainer.lower(trainer.initial_state, placed).compile()
  mem = compiled.memory_analysis()
  gib = lambda n: f"{n / 2**30:.2f} GiB"
  shape = {k: v.shape for k, v in batch.items() if k in ("input_ids", "labels")}
  lines = [f"train step, largest bucket {shape}, mesh {dict(mesh.shape)}, "
           f"compiled in {time.time() - t0:.1f} s; per device:"]
  if mem is None:
    lines.append("  (this backend reports no memory analysis)")
  else:
    for field in ("argument_size_in_bytes", "output_size_in_bytes",
                  "temp_size_in_bytes", "generated_code_size_in_bytes"):
      lines.append(f"  {field.replace('_in_bytes', '')}: {gib(getattr(mem, field, 0))}")
    lines.append("  peak estimate (arguments + temporaries): "
                 + gib(mem.argument_size_in_bytes + mem.temp_size_in_bytes))
  return "\n".join(lines)


class _StepProfiler:
  """A JAX profiler trace (TensorBoard's profile plugin) of `num_steps` train
  steps, started two steps in so that the first compilation stays out."""

  def __init__(self, logdir: pathlib.Path, start_step: int, num_steps: int):
    self.logdir, self.num_steps = logdir, num_steps
    self.first = start_step + 3
    self.last = self.first + num_steps - 1
    self.active = False

  def before(self, step: int) -> None:
    if self.num_steps and step == self.first:
      jax.profiler.start_trace(str(self.logdir))
      self.active = True

  def after(self, step: int, state) -> bool:
    """True when the trace was just written."""
    if not self.active or step != self.last:
      return False
    jax.block_until_ready(state)  # the traced steps have really run
    self.close()
    return True

  def close(self) -> None:
    if self.active:  # also when the run ends or fails mid-trace
      jax.profiler.stop_trace()
      self.active = False


def _summary_writer(workdir: pathlib.Path):
  from tensorboardX import SummaryWriter
  return SummaryWriter(str(workdir / "tensorboard"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                      format="%(asctime)s %(name)s: %(message)s")
  for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         auto=_DISTRIBUTED_AUTO.value)
  if jax.process_index() != 0:  # one log for the whole run: process 0's
    logging.getLogger().setLevel(logging.WARNING)
  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value or config.workdir)
  if _DRY_RUN.value:
    print(memory_report(config))
    return
  try:
    summary = train(config, workdir)
  except checkpointing.BrokenCheckpointError as e:  # the message says what to do
    sys.exit(f"error: {e}")
  best = summary["best_dev"]
  if jax.process_index() != 0:
    return
  print(f"\ndone: {summary['steps']} steps in {summary['wall_seconds']} s; best dev "
        f"(step {best.get('step')}): F1 {100 * best.get('f1', 0):.2f} / Ign F1 "
        f"{100 * best.get('ign_f1', 0):.2f} at τ={best.get('threshold')}, "
        f"F1 {100 * best.get('best_f1', 0):.2f} at best τ={best.get('best_threshold')}; "
        f"stored τ={best.get('selected_threshold')} ({config.eval.threshold_selection}); "
        f"train-step compilations {summary['train_step_compilations']}, peak RSS "
        f"{summary['peak_rss_mb']:.0f} MB; checkpoints in {workdir}")


def run() -> None:
  """The `glidre-train` console script."""
  app.run(main, flags_parser=cli_config.parse_flags)  # --config.x=None sets x to None


if __name__ == "__main__":
  run()

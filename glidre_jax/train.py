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

import dataclasses
import json
import logging
import pathlib
import resource
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags

from glidre_jax import (allocator, checkpointing, cli, cli_config, distributed, evaluate, metrics,
                        run_dir, sharding, shipped, trainer as trainer_lib)
from glidre_jax.data import batch as batch_lib
from glidre_jax.data import pairs as pairs_lib
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


@dataclasses.dataclass
class Run:
  """The parts of a training run, built once from its config."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  trainer: trainer_lib.Trainer
  iterator: object  # the checkpointable grain iterator of training batches
  checkpoints: checkpointing.RunCheckpoints
  evaluator: evaluate.Evaluator
  writer: object | None  # TensorBoard, on process 0 only
  is_main: bool

  def close(self) -> None:
    # Saves are asynchronous: let the last one land even if the loop failed.
    self.checkpoints.wait()
    self.checkpoints.close()
    if self.writer:
      self.writer.close()


def setup(config, workdir: pathlib.Path) -> Run:
  """Saves the config, reads the data, builds the model, trainer and evaluator."""
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
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  dataset = pipeline.build_dataset(
      train_source, tokenizer=data.tokenizer, label_tokenizer=data.label_tokenizer,
      label_names=data.schema.names, batch_size=d.batch_size, buckets=data.buckets,
      max_length=d.max_length, label_max_length=config.model.label_max_length,
      decode=data.decode, train=True, seed=d.shuffle_seed, sort_window=d.sort_window,
      subset_size=d.subset_size or None, subset_seed=d.subset_seed,
      pair_filter=data.pair_filter, open_labels=data.open_labels,
      window_stride=d.window_stride, pair_shards=pair_shards(mesh))
  trainer = trainer_lib.Trainer(run_dir.build_model(config), tc, mesh, fsdp=config.mesh.fsdp)
  evaluator = evaluate.Evaluator(trainer.predictor, eval_data, eval_docs,
                                 metrics.train_facts(train_docs, data.schema))
  return Run(config, workdir, trainer, pipeline.make_iterator(dataset),
             checkpointing.RunCheckpoints(workdir, tc.checkpoint_every), evaluator,
             _summary_writer(workdir) if is_main else None, is_main)


def restore(run: Run) -> tuple[int, trainer_lib.TrainState]:
  """(step, state) to continue from: the latest checkpoint (train.resume) or step 0."""
  state = run.trainer.initial_state
  if not run.config.train.resume:
    return 0, state
  try:
    restored = run.checkpoints.restore_latest(state, run.iterator)
  except checkpointing.BrokenCheckpointError:
    run.close()
    raise
  if restored is None:
    return 0, state
  log.info("resumed from step %d", restored[0])
  return restored


def train_step(run: Run, state: trainer_lib.TrainState) -> trainer_lib.TrainState:
  """One optimizer update: train.grad_accum micro-batches (the update lands
  on the last one)."""
  for _ in range(run.config.train.grad_accum):
    state = run.trainer.train_step(state, run.trainer.place(next(run.iterator)))
  return state


def eval_step(run: Run, state, step: int, best: dict | None, say) -> dict | None:
  """Scores dev; saves the best checkpoint when the scores improve. Returns
  the best scores so far."""
  scores = run.evaluator(state)
  say(f"step {step} dev: {evaluate.format_scores(scores)}")
  if run.writer:
    for key in ("f1", "ign_f1", "precision", "recall", "best_f1", "best_threshold",
                "selected_f1", "selected_threshold"):
      run.writer.add_scalar(f"dev/{key}", scores[key], step)
  if not evaluate.improves(scores, best):  # by the F1 at the τ it will be used with
    return best
  best = {**scores, "step": step}
  run.checkpoints.save_best(step, state.params, best)
  return best


class _LossLog:
  """The train loss every train.log_every steps (fetched from the device only then)."""

  def __init__(self, run: Run, bar):
    self.run, self.bar = run, bar
    self.t_steps, self.steps_timed, self.losses = time.time(), 0, []

  def __call__(self, state, step: int):
    logged, state = self.run.trainer.fetch_metrics(state)
    rate = self.steps_timed / (time.time() - self.t_steps)
    self.t_steps, self.steps_timed = time.time(), 0
    self.losses.append((step, logged["loss"]))
    self.bar.set_postfix(loss=f"{logged['loss']:.4f}", steps_s=f"{rate:.2f}")
    if self.run.writer:
      self.run.writer.add_scalar("train/loss", logged["loss"], step)
      self.run.writer.add_scalar("train/grad_norm", logged["grad_norm"], step)
      self.run.writer.add_scalar("train/steps_per_second", rate, step)
    return state


def train_and_evaluate(config, workdir: pathlib.Path) -> dict:
  """Runs the whole training; returns the summary it prints at the end."""
  t_start = time.time()
  evaluate.check_selection(config.eval)  # before anything is built
  run = setup(config, workdir)
  start_step, state = restore(run)
  best = run.checkpoints.best_scores()  # None before the first evaluation
  tc = config.train
  bar = cli.progress_bar("train")(total=tc.steps, initial=start_step, disable=not run.is_main)
  say = bar.write if run.is_main else (lambda *_: None)
  losses = _LossLog(run, bar)
  profiler = _StepProfiler(workdir / "profile", start_step, tc.profile_steps)
  try:
    for step in range(start_step + 1, tc.steps + 1):  # one optimizer update each
      profiler.before(step)
      state = train_step(run, state)
      if profiler.after(step, state):
        say(f"wrote a profiler trace of {tc.profile_steps} steps to {workdir / 'profile'} "
            f"(tensorboard --logdir {workdir / 'profile'})")
      losses.steps_timed += 1
      bar.update(1)
      last = step == tc.steps
      if step % tc.log_every == 0 or last:
        state = losses(state, step)
      if step % tc.eval_every == 0 or last:
        best = eval_step(run, state, step, best, say)
      stopping = step == tc.stop_after_step
      if step % tc.checkpoint_every == 0 or last or stopping:
        run.checkpoints.save_latest(step, state, run.iterator, force=last or stopping)
      if stopping:
        say(f"stopping after step {step} (train.stop_after_step); run again to resume")
        break
  finally:
    profiler.close()
    bar.close()
    run.close()
  return _summary(run, state, best, losses.losses, t_start)


train = train_and_evaluate  # the name the benchmarks and tests call


def _summary(run: Run, state, best, losses_logged, t_start: float) -> dict:
  summary = {
      "best_dev": best or {},  # empty when no evaluation ran (stop_after_step)
      "steps": run.config.train.steps,  # optimizer updates
      "micro_steps": int(jax.device_get(state.step)),
      "train_step_compilations": run.trainer.num_traces,
      "predict_compilations": run.trainer.predictor.num_traces,
      "peak_rss_mb": round(peak_rss_mb(), 1),
      "wall_seconds": round(time.time() - t_start, 1),
      "logged_losses": losses_logged,
  }
  if run.is_main:
    (run.workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
  return summary


def pair_shards(mesh) -> int:
  """Pair shards of this process's batch: its devices along the 'data' axis."""
  return max(mesh.shape[sharding.DATA] // jax.process_count(), 1)


def abstract_batch(config, num_labels: int, shards: int = 1) -> dict:
  """Shapes of a global batch in the largest bucket (for AOT compilation);
  `shards` pair shards, each with its documents' every pair."""
  d = config.data
  b = d.batch_size * jax.process_count()
  l, w, e = max(d.seq_buckets), max(d.word_buckets), max(d.entity_buckets)
  k, t = num_labels, config.model.label_max_length
  p = pairs_lib.pick(d.pair_buckets, b // shards * e * e)
  shapes = batch_lib.shapes(dict(B=b, L=l, W=w, E=e, K=k, T=t, G=0, U=t, S=shards, P=p),
                            labels=True)
  return {name: jax.ShapeDtypeStruct(shape, batch_lib.dtype(name))
          for name, shape in shapes.items()}


def memory_analysis(config, split_update: bool | None = None) -> dict:
  """Compiles the train step for the largest bucket on shapes alone (random
  encoders of the configured architecture; nothing allocated, no weights
  read) and returns its per-device memory in bytes. `split_update`: as
  Trainer's (None: the step this platform runs)."""
  num_labels = (max(config.data.label_buckets) if config.data.open_labels
                else registry.load_schema(config).num_labels)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  trainer = trainer_lib.Trainer(run_dir.abstract_model(config), config.train, mesh,
                                fsdp=config.mesh.fsdp, split_update=split_update)
  batch = abstract_batch(config, num_labels, mesh.shape[sharding.DATA])
  placed = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=(
      trainer.batch_sharding if len(v.shape) and k in batch_lib.DOC_FIELDS
      else sharding.named(mesh))) for k, v in batch.items()}
  t0 = time.time()
  state = trainer.abstract_state
  compiled = trainer.lower(state, placed).compile()
  mem = compiled.memory_analysis()
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  out = {"mesh": dict(mesh.shape), "fsdp": bool(config.mesh.fsdp), "parameters": params,
         "batch": {k: v.shape for k, v in batch.items() if k in ("input_ids", "pair_labels")},
         "compile_s": round(time.time() - t0, 1), "params_bytes": trainer_lib.device_bytes(state.params),
         "opt_state_bytes": trainer_lib.device_bytes(state.opt_state)}
  if mem is not None:
    out.update(argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
               alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
               code_bytes=mem.generated_code_size_in_bytes,
               # Donated state: outputs alias arguments, so arguments + temporaries.
               peak_bytes=mem.argument_size_in_bytes + mem.temp_size_in_bytes)
  return out


MEMORY_ROWS = (("parameters (this device's shards)", "params_bytes"),
               ("optimizer state (shards)", "opt_state_bytes"),
               ("arguments (state + batch)", "argument_bytes"),
               ("outputs (alias the donated state)", "output_bytes"),
               ("temporaries (activations, gathered params, grads)", "temp_bytes"),
               ("generated code", "code_bytes"),
               ("peak estimate (arguments + temporaries)", "peak_bytes"))


def memory_report(config) -> str:
  """The per-device table `--dry_run` prints."""
  return format_memory(memory_analysis(config))


def format_memory(m: dict) -> str:
  """A `memory_analysis` result as a per-device table."""
  lines = [f"train step, largest bucket {m['batch']}, mesh {m['mesh']}, fsdp {m['fsdp']}, "
           f"{m['parameters'] / 1e6:.0f} M parameters, compiled in {m['compile_s']} s; "
           "per device:"]
  if "peak_bytes" not in m:
    lines.append("  (this backend reports no memory analysis)")
  width = max(len(name) for name, _ in MEMORY_ROWS)
  for name, key in MEMORY_ROWS:
    if key in m:
      lines.append(f"  {name:<{width}}  {m[key] / 2**30:8.2f} GiB")
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
    summary = train_and_evaluate(config, workdir)
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
  """The `glidre-train` console script (re-executed under mimalloc first)."""
  allocator.relaunch()
  app.run(main, flags_parser=cli_config.parse_flags)  # --config.x=None sets x to None


if __name__ == "__main__":
  run()

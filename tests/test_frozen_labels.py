"""A frozen label encoder runs once per label set, outside the train step
(issue 16), and the train loop reads nothing back from the device per step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import tiny_training
from glidre_jax import losses, trainer as trainer_lib
from glidre_jax.encoders.bert.modeling import BertModel
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import GLiDREModel


class CountingBert(BertModel):
  """The real BERT, counting how often it is called (traced)."""
  calls = 0

  def __call__(self, *args, **kwargs):
    type(self).calls += 1
    return super().__call__(*args, **kwargs)


def make_trainer(freeze: bool) -> trainer_lib.Trainer:
  enc = tiny_training.encoder_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = GLiDREModel(GLiDREConfig(hidden_size=40, dropout=0.0),
                      BertModel(enc, rngs=nnx.Rngs(0)), CountingBert(enc, rngs=nnx.Rngs(1)),
                      rngs=nnx.Rngs(2))
  cfg = tiny_training.train_config(freeze_label_encoder=freeze, warmup_fraction=0.0)
  return trainer_lib.Trainer(model, cfg)


def reference_steps(trainer, batches):
  """The previous train step: the label encoder re-run inside it every step,
  its output behind stop_gradient (dropout is 0: train mode = eval mode)."""
  cfg = trainer.train_cfg

  def loss_fn(params, rest, batch):
    model = nnx.merge(trainer.train_graphdef, params, rest)
    vectors = model.encode_labels(batch, freeze_encoder=True)
    return losses.relation_loss(model(batch, vectors), batch, cfg.loss,
                                alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)

  @jax.jit
  def step(params, opt_state, rest, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, rest, batch)
    updates, opt_state = trainer.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params, rest = trainer._params, trainer._rest
  opt_state, out = trainer.tx.init(params), []
  for batch in batches:
    params, opt_state, loss = step(params, opt_state, rest,
                                   {k: jnp.asarray(v) for k, v in batch.items() if k != "meta"})
    out.append(float(loss))
  return out, params


def test_frozen_label_states_match_the_old_step_and_leave_the_step():
  batches = tiny_training.batches(2, 2)
  CountingBert.calls = 0
  trainer = make_trainer(freeze=True)
  ref_losses, ref_params = reference_steps(trainer, batches)
  CountingBert.calls = 0
  state, got = trainer.initial_state, []
  init = jax.tree.leaves(jax.device_get(state.params))
  for batch in batches:
    state = trainer.train_step(state, trainer.place(batch))
    metrics, state = trainer.fetch_metrics(state)
    got.append(metrics["loss"])
  # Traced once, in the eval-mode label step; the train step has no label encoder.
  assert CountingBert.calls == 1 and trainer.label_encodes == 1 and trainer.num_traces == 1
  np.testing.assert_allclose(got, ref_losses, rtol=1e-5)
  ours = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
  moved = set()
  for (path, a), b, a0 in zip(ours, jax.tree.leaves(ref_params), init):
    name = jax.tree_util.keystr(path)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    if not np.array_equal(a, a0):
      moved.add(name)
  # The head and the labels projection train; the label encoder does not.
  assert any("prompt_rep_layer" in n for n in moved)
  assert any("labels_projection" in n for n in moved)  # widths 32 -> D = 40
  assert not any("labels_encoder" in n for n in moved)


def test_trained_label_encoder_still_runs_in_the_step():
  CountingBert.calls = 0
  trainer = make_trainer(freeze=False)
  state = trainer.initial_state
  for batch in tiny_training.batches(2, 2):
    state = trainer.train_step(state, trainer.place(batch))
  assert CountingBert.calls == 1 and trainer.label_encodes == 0 and trainer.num_traces == 1


def test_train_steps_read_nothing_back_from_the_device():
  trainer = make_trainer(freeze=True)
  batches = tiny_training.batches(2, 2)
  state = trainer.train_step(trainer.initial_state, trainer.place(batches[0]))  # compiles
  # On an accelerator any device-to-host copy (float(), np.asarray,
  # device_get) raises in here; on the CPU the guard does not apply, but a
  # step that waited for its own result (a host read of the loss) would
  # return a finished state: the dispatch must return before the work is done.
  pending = []
  with jax.transfer_guard_device_to_host("disallow_explicit"):
    for batch in batches * 2:
      state = trainer.train_step(state, trainer.place(batch))
      pending.append(not state.metrics["loss_sum"].is_ready())
  assert all(pending), pending
  assert trainer.label_encodes == 1
  metrics, _ = trainer.fetch_metrics(state)
  assert np.isfinite(metrics["loss"])

"""compute_dtype="bfloat16" end to end: training keeps float32 master
parameters and optimizer state with finite losses close to float32's, and
bf16 inference through the API stays within a documented tolerance of fp32.

Tolerance (measured on MiniLM, 2 shipped dev documents, 12 labels, random
head): bf16 keeps 8 mantissa bits, so the 6 encoder layers and the head give
logits within max |Δ| 0.08 of float32's for |logits| up to 2.8 (2.9 % of the
largest; mean |Δ| 0.013) and probabilities within 0.017. The bounds below are
5 % of the largest logit (max) and 1 % (mean), 0.03 on probabilities.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tiny_training
from glidre_jax import trainer as trainer_lib

MAX_LOGIT_REL, MEAN_LOGIT_REL, MAX_PROB = 0.05, 0.01, 0.03


def _float_dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree)
          if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.slow
def test_bf16_training_run_has_fp32_master_params_and_finite_losses():
  batches = tiny_training.batches()[:3]
  losses = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    t = trainer_lib.Trainer(tiny_training.tiny_model(dtype=dtype),
                            tiny_training.train_config(steps=3, warmup_fraction=0.34,
                                                       freeze_label_encoder=False))
    state, logged = t.initial_state, []
    for batch in batches:
      state = t.train_step(state, t.place(batch))
      metrics, state = t.fetch_metrics(state)
      logged.append(metrics["loss"])
      assert _float_dtypes(state.params) == {"float32"}  # master weights stay fp32
      assert _float_dtypes(state.opt_state) == {"float32"}
    assert np.all(np.isfinite(logged)) and logged[0] > 0
    losses[jnp.dtype(dtype).name] = logged
  # The same model and data: bf16 losses track fp32's to bf16 precision.
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.03)


@pytest.fixture(scope="module")
def fp32_model():
  from configs import default
  from glidre_jax import run_dir
  config = default.get_config()
  return run_dir.build_model(config), config


@pytest.mark.slow
def test_bf16_inference_through_the_api(fp32_model, tmp_path):
  """A run directory with compute_dtype="bfloat16" loads with from_pretrained
  (fp32 weights, bf16 compute) and predicts close to the fp32 model."""
  from glidre_jax import checkpointing, run_dir
  from glidre_jax.api import GLiDREPredictor
  model, config = fp32_model
  bf16 = config.copy_and_resolve_references()
  bf16.compute_dtype = "bfloat16"
  for c in (config, bf16):
    c.data.max_length = 128
    c.data.seq_buckets, c.data.word_buckets, c.data.entity_buckets = (128,), (128,), (48,)
  run_dir.save_config(bf16, tmp_path)
  checkpoints = checkpointing.RunCheckpoints(tmp_path, save_every=1)
  try:  # the fp32 model's weights as the run's best checkpoint
    checkpoints.save_best(0, nnx.as_pure(nnx.state(model, nnx.Param)), {"f1": 0.0})
    checkpoints.wait()
  finally:
    checkpoints.close()
  loaded = GLiDREPredictor.from_pretrained(tmp_path)
  assert _float_dtypes(loaded.params) == {"float32"}
  reference = GLiDREPredictor.from_model(model, config)

  batch = tiny_training.batches()[0]
  logits = {name: np.asarray(p.predictor.model(p.params, p.rest)(batch).logits, np.float32)
            for name, p in (("bf16", loaded), ("fp32", reference))}
  valid = np.broadcast_to(batch["pair_mask"][..., None].astype(bool), logits["fp32"].shape)
  diff, scale = np.abs(logits["bf16"] - logits["fp32"])[valid], np.abs(logits["fp32"][valid]).max()
  assert 0 < diff.max() <= MAX_LOGIT_REL * scale  # bf16 really ran, and stayed close
  assert diff.mean() <= MEAN_LOGIT_REL * scale

  doc = {"text": "Marie Curie was born in Warsaw, Poland.",
         "entities": [{"mentions": [[0, 11]]}, {"mentions": [[24, 30]]}, {"mentions": [[32, 38]]}]}
  labels = ["country", "place of birth"]
  np.testing.assert_allclose(loaded.scores([doc], labels)[0], reference.scores([doc], labels)[0],
                             atol=MAX_PROB)
  assert loaded.predict([doc], labels, threshold=0.0)[0]  # decodes (every pair at τ=0)

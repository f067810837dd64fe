"""The optimizer of every shipped config: train.steps optimizer updates, the
learning rate at known updates, the official parameter groups and the
weight-decay mask."""
from __future__ import annotations

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from glidre_jax import optimizer
from test_configs import VARIANTS

GRAD = 1e-3  # constant gradient: Adam's step is then lr × g / (|g| + eps) ≈ lr


def toy_params():
  """One parameter per kind of leaf, at the official state-dict paths; kernels
  at 1 (weight decay shows), the others at 0."""
  one, zero = jnp.ones((2,), jnp.float32), jnp.zeros((2,), jnp.float32)
  return {"token_rep_layer": {"bert_layer": {"dense": {"kernel": one, "bias": zero}},
                              "labels_encoder": {"dense": {"kernel": one, "bias": zero}},
                              "projection": {"kernel": one, "bias": zero}},
          "span_rep_layer": {"projection": {"dense_in": {"kernel": one, "bias": zero}},
                             "LayerNorm": {"scale": zero}}}


def expected_lr(peak: float, k: int, steps: int, warmup: int) -> float:
  """transformers.get_cosine_schedule_with_warmup (the official scheduler) at update k."""
  if k < warmup:
    return peak * k / warmup
  return peak * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (steps - warmup)))


def run_optimizer(train_cfg):
  """Runs steps × grad_accum micro-steps of a constant gradient; per
  micro-step, the update of every parameter (scanned: 200 000 steps in ~s)."""
  params = toy_params()
  tx = optimizer.make_optimizer(train_cfg, params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, GRAD), params)

  def micro(carry, _):
    p, state = carry
    updates, state = tx.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), jax.tree.map(lambda u: u[0], updates)

  n = train_cfg.steps * train_cfg.grad_accum
  (_, state), deltas = jax.jit(lambda p: jax.lax.scan(
      micro, (p, tx.init(p)), None, length=n))(params)
  return jax.device_get(state), jax.device_get(deltas)


CONFIGS = [(n, v) for n, vs in VARIANTS.items() for v in vs]


@pytest.mark.parametrize("name,variant", CONFIGS)
def test_updates_and_learning_rates_of_shipped_configs(name, variant):
  tc = importlib.import_module(f"configs.{name}").get_config(variant).train
  steps, accum = tc.steps, tc.grad_accum
  warmup = max(int(tc.warmup_fraction * steps), 1)
  state, deltas = run_optimizer(tc)
  enc_bias = -deltas["token_rep_layer"]["bert_layer"]["dense"]["bias"]
  head_bias = -deltas["span_rep_layer"]["projection"]["dense_in"]["bias"]
  # Parameters move on the last micro-step of each window only: train.steps updates.
  moved = np.nonzero(head_bias)[0]
  update_at = np.arange(accum - 1, steps * accum, accum)
  # (update 0 has lr 0, and the cosine's last values round to 0 in float32)
  assert set(moved) <= set(update_at) and update_at[1] in moved
  inner = state.inner_opt_state if accum > 1 else state
  counts = [int(x.count) for x in jax.tree.leaves(
      inner, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(x, optax.ScaleByAdamState)]
  assert counts == [steps, steps]  # encoder and head AdamW: one count per update
  if accum > 1:
    assert int(state.gradient_step) == steps
  # The learning rate each update applied, at known updates.
  scale = GRAD / (GRAD + 1e-8)  # Adam's normalised step for a constant gradient
  for k in (0, warmup, steps // 2, steps - 1):
    for got, peak in ((enc_bias, tc.lr_encoder), (head_bias, tc.lr_head)):
      # optax evaluates the cosine in float32: ~1e-7 × peak absolute error.
      np.testing.assert_allclose(got[update_at[k]], expected_lr(peak, k, steps, warmup) * scale,
                                 rtol=1e-4, atol=1e-6 * peak, err_msg=f"update {k}")
  # No decay on biases / LayerNorm; decay (lr × wd × p) on kernels.
  head_kernel = -deltas["span_rep_layer"]["projection"]["dense_in"]["kernel"]
  norm_scale = -deltas["span_rep_layer"]["LayerNorm"]["scale"]
  np.testing.assert_allclose(norm_scale, head_bias, rtol=1e-6, atol=1e-12)
  k = update_at[warmup]
  kernel_then = 1.0 - head_kernel[:k].sum()  # its value before that update
  np.testing.assert_allclose(head_kernel[k] - head_bias[k],
                             tc.lr_head * tc.weight_decay * kernel_then, rtol=1e-3)
  # The encoders' projections train at the encoder rate (official groups).
  proj = -deltas["token_rep_layer"]["projection"]["bias"]
  np.testing.assert_allclose(proj, enc_bias, rtol=1e-6, atol=1e-12)
  label_bias = -deltas["token_rep_layer"]["labels_encoder"]["dense"]["bias"]
  if tc.freeze_label_encoder:
    assert not label_bias.any()
  else:
    np.testing.assert_allclose(label_bias, enc_bias, rtol=1e-6, atol=1e-12)


def test_paper_configs_count_optimizer_updates_of_16_documents():
  from configs import pretrain, redocred
  for config, steps in ((redocred.get_config(), 10_000), (redocred.get_config("accum"), 10_000),
                        (pretrain.get_config("files"), 50_000)):
    assert config.train.steps == steps
    assert config.data.batch_size * config.train.grad_accum == 16
    assert config.eval.threshold_selection == ("fixed" if config.workdir == "runs/redocred"
                                               else "sweep")


def _groups_of(model, freeze: bool) -> dict[str, str]:
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  groups = optimizer.param_groups(params, freeze)
  decay = optimizer.decay_mask(params)
  flat = lambda tree: {".".join(str(getattr(k, "key", k)) for k in path): v
                       for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  return flat(groups), flat(decay)


@pytest.mark.parametrize("family", ["bert", "deberta-v2"])
def test_groups_and_decay_mask_follow_the_official_rules(family):
  """Official create_optimizer: `token_rep_layer` in the name -> encoder lr;
  no decay for biases and parameters of LayerNorm modules (checked here
  against the modules themselves, for BERT and DeBERTa encoders)."""
  import tiny_training
  from glidre_jax.model.config import GLiDREConfig
  from glidre_jax.model.glidre import build_glidre
  cfg = tiny_training.encoder_config()
  if family == "deberta-v2":
    from glidre_jax import encoders
    cfg = encoders.config_from_hf(dict(
        model_type="deberta-v2", vocab_size=128, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
        relative_attention=True, position_buckets=16, norm_rel_ebd="layer_norm",
        pos_att_type=["p2c", "c2p"], position_biased_input=False, conv_kernel_size=3,
        hidden_act="gelu", layer_norm_eps=1e-7, type_vocab_size=0))
  model = build_glidre(GLiDREConfig(hidden_size=40), cfg, cfg)
  groups, decay = _groups_of(model, freeze=False)
  layer_norm = {".".join(str(k) for k in path) for path, node in nnx.iter_graph(model)
                if isinstance(node, nnx.LayerNorm)}
  assert layer_norm, "no LayerNorm found"
  for path, group in groups.items():
    module, leaf = path.rsplit(".", 1)
    assert group == ("encoder" if path.startswith("token_rep_layer.") else "head"), path
    assert decay[path] == (leaf != "bias" and module not in layer_norm), path
  assert groups["token_rep_layer.projection.kernel"] == "encoder"
  assert groups["token_rep_layer.labels_projection.kernel"] == "encoder"
  frozen, _ = _groups_of(model, freeze=True)
  assert {p for p, g in frozen.items() if g == "frozen"} == {
      p for p in groups if p.startswith("token_rep_layer.labels_encoder.")}


@pytest.mark.parametrize("max_norm", [0.5, 10.0, 1e3])
def test_clipping_is_torch_clip_grad_norm(max_norm):
  """The official loop's torch.nn.utils.clip_grad_norm_ (scale
  min(1, max_norm / (norm + 1e-6))), including below the threshold."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  grads = {"a": rng.normal(size=(3, 4)).astype(np.float32),
           "b": {"c": rng.normal(size=(5,)).astype(np.float32) * 3}}
  clipped, _ = optimizer.clip_grad_norm(max_norm).update(
      jax.tree.map(jnp.asarray, grads), optax.EmptyState())
  tensors = [torch.zeros(g.shape, requires_grad=True) for g in jax.tree.leaves(grads)]
  for t, g in zip(tensors, jax.tree.leaves(grads)):
    t.grad = torch.from_numpy(g.copy())
  torch.nn.utils.clip_grad_norm_(tensors, max_norm)
  for ours, t in zip(jax.tree.leaves(clipped), tensors):
    np.testing.assert_allclose(np.asarray(ours), t.grad.numpy(), rtol=1e-6, atol=0)
  norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in jax.tree.leaves(grads)))
  assert (norm > max_norm) == (not np.allclose(jax.tree.leaves(clipped)[0],
                                               jax.tree.leaves(grads)[0]))

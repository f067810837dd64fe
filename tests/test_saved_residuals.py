"""What the encoders keep for the backward: their feed-forward activation
and attention softmax give the plain functions' gradients while keeping
only their input (activation) or output (softmax)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from glidre_jax.encoders import common
from glidre_jax.encoders.bert.modeling import BertConfig


@pytest.mark.parametrize("name", sorted(common.ACTIVATIONS))
def test_gradient_is_the_plain_function_s(name):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16)) * 3, jnp.float32)
  ours = jax.grad(lambda x: (common.activation(name)(x) * x).sum())(x)
  plain = jax.grad(lambda x: (common.ACTIVATIONS[name](x) * x).sum())(x)
  np.testing.assert_allclose(ours, plain, rtol=1e-6, atol=1e-6)  # XLA may fuse differently


def test_feed_forward_keeps_one_intermediate_sized_residual(capsys):
  """The exact GELU's erf and exp intermediates are recomputed, not kept:
  of the [tokens, intermediate] arrays only the pre-activation is saved."""
  cfg = BertConfig(hidden_size=8, intermediate_size=32, num_attention_heads=2,
                   num_hidden_layers=1, hidden_act="gelu")
  graphdef, state = nnx.split(common.Intermediate(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0)))
  print_saved_residuals(lambda s, x: nnx.merge(graphdef, s)(x).sum(), state, jnp.ones((3, 8)))
  saved = capsys.readouterr().out.splitlines()
  assert sum(line.startswith("f32[3,32]") for line in saved) == 1, saved


def saved(capsys, f, *args) -> list[str]:
  print_saved_residuals(f, *args)
  return capsys.readouterr().out.splitlines()


def test_softmax_gradient_is_jax_s_and_keeps_only_the_probabilities(capsys):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 5, 7)) * 4, jnp.float32)
  w = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
  np.testing.assert_allclose(common.softmax(x), jax.nn.softmax(x, axis=-1), rtol=1e-6)
  ours = jax.grad(lambda x: (common.softmax(x) * w).sum())(x)
  plain = jax.grad(lambda x: (jax.nn.softmax(x, axis=-1) * w).sum())(x)
  np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-6)  # rounding
  lines = saved(capsys, lambda x, w: (common.softmax(x) * w).sum(), x, w)
  kept = [line for line in lines if line.startswith("f32[2,3,5,7]") and "argument" not in line]
  assert len(kept) == 1 and "custom_jvp_call" in kept[0], lines

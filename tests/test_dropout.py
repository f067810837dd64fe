"""The counter-based dropout mask (encoders/common.py `keep_mask`, `Dropout`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glidre_jax.encoders import common

SHAPE = (1000, 1024)  # ~1M elements: 5 sigma of a keep fraction is ~0.0015 at p = 0.9


def _mask(seed, rate=0.1, shape=SHAPE):
  return np.asarray(common.keep_mask(jax.random.key(seed), shape, rate))


@pytest.mark.parametrize("rate", [0.1, 0.4])
def test_keep_fraction_is_one_minus_rate_everywhere(rate):
  m = _mask(0, rate)
  p, n = 1 - rate, m.size
  assert abs(m.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
  # no row, column or block of the array is biased (each holds ~1000 draws)
  sigma = np.sqrt(p * (1 - p) / 1000)
  assert np.abs(m.mean(axis=1) - p).max() < 6 * sigma
  assert np.abs(m.mean(axis=0) - p).max() < 6 * sigma


def _corr(a, b):
  a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
  return np.corrcoef(a, b)[0, 1]


def test_masks_of_neighbours_and_of_other_keys_are_uncorrelated():
  m = _mask(0)
  bound = 5 / np.sqrt(m.size)  # 5 sigma of a correlation over ~1M pairs
  assert abs(_corr(m[:, 1:], m[:, :-1])) < bound  # next element
  assert abs(_corr(m[1:], m[:-1])) < bound  # next row
  k1, k2 = jax.random.split(jax.random.key(3))
  masks = [_mask(0), _mask(1), np.asarray(common.keep_mask(k1, SHAPE, 0.1)),
           np.asarray(common.keep_mask(k2, SHAPE, 0.1))]
  for i in range(len(masks)):
    for j in range(i + 1, len(masks)):
      assert abs(_corr(masks[i], masks[j])) < bound, (i, j)
  np.testing.assert_array_equal(_mask(0), m)  # a key gives one mask


def test_mask_is_the_same_inside_jit_and_for_a_prefix_of_a_larger_shape():
  key = jax.random.key(7)
  eager = np.asarray(common.keep_mask(key, (64, 32), 0.3))
  jitted = np.asarray(jax.jit(lambda k: common.keep_mask(k, (64, 32), 0.3))(key))
  np.testing.assert_array_equal(eager, jitted)
  # the hash reads the flat index: rows of a taller array start with the same mask
  taller = np.asarray(common.keep_mask(key, (128, 32), 0.3))
  np.testing.assert_array_equal(taller[:64], eager)


def test_dropout_module_scales_kept_values_and_routes_the_gradient():
  drop = common.Dropout(0.25, rngs=nnx.Rngs(dropout=5))
  x = jax.random.normal(jax.random.key(0), (256, 128))
  key = jax.random.key(11)
  keep = np.asarray(common.keep_mask(key, x.shape, 0.25))
  y = np.asarray(drop(x, rngs=key))
  np.testing.assert_allclose(y, np.where(keep, np.asarray(x) / 0.75, 0.0), rtol=1e-6)
  grad = jax.grad(lambda v: (drop(v, rngs=key) * 2.0).sum())(x)
  np.testing.assert_allclose(np.asarray(grad), np.where(keep, 2.0 / 0.75, 0.0), rtol=1e-6)
  # its own rng stream advances: two calls draw two masks
  a, b = np.asarray(drop(x)) != 0, np.asarray(drop(x)) != 0
  assert (a != b).any()
  drop.eval()
  np.testing.assert_array_equal(np.asarray(drop(x)), np.asarray(x))
  assert common.Dropout(0.0, rngs=None)(x) is x  # rate 0 needs no rng
  with pytest.raises(ValueError, match="no rngs"):
    common.Dropout(0.5, rngs=None)(x)


def test_stream_draws_give_fresh_uncorrelated_masks_without_threefry():
  """A stream's draws (stream_seeds: its key and count, hashed) give masks as
  independent as keys' masks; the count advances once per draw; no threefry
  runs (each one is ~16 small kernels on XLA:CPU, per compiled shape)."""
  stream = nnx.Rngs(dropout=0).dropout
  other = nnx.Rngs(dropout=1).dropout
  seeds = [common.stream_seeds(stream) for _ in range(3)] + [common.stream_seeds(other)]
  assert int(stream.count[...]) == 3 and int(other.count[...]) == 1
  masks = [np.asarray(common.keep_mask_from_seeds(s, SHAPE, 0.1)) for s in seeds]
  bound = 5 / np.sqrt(masks[0].size)
  sigma = np.sqrt(0.9 * 0.1 / masks[0].size)
  for i, m in enumerate(masks):
    assert abs(m.mean() - 0.9) < 5 * sigma
    for j in range(i + 1, len(masks)):
      assert abs(_corr(m, masks[j])) < bound, (i, j)
  again = nnx.Rngs(dropout=0).dropout  # the same stream state gives the same seeds
  np.testing.assert_array_equal(np.asarray(common.stream_seeds(again)), np.asarray(seeds[0]))

  drop = common.Dropout(0.1, rngs=nnx.Rngs(dropout=2))
  graphdef, state = nnx.split(drop)
  jaxpr = str(jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.ones((8, 8))))
  assert "threefry" not in jaxpr and "random_bits" not in jaxpr

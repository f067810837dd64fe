"""Losses against straightforward NumPy formulas, and padding invariance."""
import jax.numpy as jnp
import numpy as np
import pytest

from glidre_jax import losses


def _case(seed=0, b=2, e=4, k=5):
  r = np.random.RandomState(seed)
  logits = r.randn(b, e, e, k).astype(np.float32) * 2
  labels = (r.rand(b, e, e, k) < 0.3).astype(np.int32)
  valid = r.rand(b, e, e) < 0.8
  label_mask = np.array([1] * (k - 1) + [0])
  return logits, labels, valid, label_mask


def _np_bce(x, y):
  p = 1 / (1 + np.exp(-x))
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_bce_matches_numpy():
  logits, labels, valid, label_mask = _case()
  expected = (_np_bce(logits, labels) * valid[..., None] * label_mask).sum()
  got = losses.bce_loss(logits, labels, valid, label_mask)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("alpha,gamma", [(0.8, 3.0), (0.25, 2.0), (0.5, 0.0)])
def test_focal_matches_numpy(alpha, gamma):
  logits, labels, valid, label_mask = _case(1)
  p = 1 / (1 + np.exp(-logits))
  p_t = np.clip(np.where(labels == 1, p, 1 - p), 1e-7, 1 - 1e-7)
  a_t = np.where(labels == 1, alpha, 1 - alpha)
  cell = a_t * (1 - p_t) ** gamma * _np_bce(logits, labels)
  expected = (cell * valid[..., None] * label_mask).sum()
  got = losses.focal_loss(logits, labels, valid, label_mask, alpha=alpha, gamma=gamma)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  mean = losses.focal_loss(logits, labels, valid, label_mask, alpha=alpha,
                           gamma=gamma, reduction="mean")
  np.testing.assert_allclose(mean, expected / (valid.sum() * label_mask.sum()), rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.8, 3.0])
def test_focal_gradient_is_finite_for_saturated_logits(gamma):
  """γ = 0.8 (the official run's effective γ): without the reference's clamp of
  p_t to [1e-7, 1 - 1e-7], d/dx (1 - p_t)^γ is infinite once p_t rounds to 1."""
  import jax
  logits = jnp.asarray([[[[30.0, -30.0, 30.0, -30.0, 17.5, -17.5, 0.3]]]])
  labels = jnp.asarray([[[[1, 0, 0, 1, 1, 0, 1]]]])
  valid, label_mask = jnp.ones((1, 1, 1), bool), jnp.ones(7)
  loss, grad = jax.value_and_grad(losses.focal_loss)(logits, labels, valid, label_mask,
                                                     alpha=0.8, gamma=gamma)
  assert np.isfinite(loss) and np.isfinite(np.asarray(grad)).all(), grad
  # The clamp reproduces the reference's numbers: p_t in [1e-7, 1 - 1e-7].
  x, y = np.asarray(logits, np.float64), np.asarray(labels)
  p = 1 / (1 + np.exp(-x))
  p_t = np.clip(np.where(y == 1, p, 1 - p), 1e-7, 1 - 1e-7)
  bce = np.logaddexp(0, x) - x * y
  expected = (np.where(y == 1, 0.8, 0.2) * (1 - p_t) ** gamma * bce).sum()
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  # Confident right answers (±30 on the right side) get no gradient, wrong ones
  # a gradient of about α_t (the BCE slope): the loss still trains them.
  g = np.asarray(grad)[0, 0, 0]
  assert abs(g[0]) < 1e-6 and abs(g[1]) < 1e-6
  np.testing.assert_allclose(g[2], 0.2, rtol=1e-3)
  np.testing.assert_allclose(g[3], -0.8, rtol=1e-3)


def test_adaptive_threshold_matches_numpy():
  logits, labels, valid, label_mask = _case(2)
  th = np.random.RandomState(3).randn(*valid.shape).astype(np.float32)
  expected = 0.0
  for idx in zip(*np.nonzero(valid)):
    x, y = logits[idx][label_mask == 1], labels[idx][label_mask == 1]
    t = th[idx]
    for xp in x[y == 1]:  # each positive vs {positives, TH}
      expected += -(xp - np.log(np.exp(x[y == 1]).sum() + np.exp(t)))
    expected += -(t - np.log(np.exp(x[y == 0]).sum() + np.exp(t)))
  got = losses.adaptive_threshold_loss(logits, th, labels, valid, label_mask)
  np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize("kind", ["focal", "bce", "adaptive_threshold"])
def test_padding_does_not_change_loss(kind):
  from glidre_jax.model.glidre import GLiDREOutput
  logits, labels, valid, label_mask = _case(4)
  th = np.random.RandomState(5).randn(*valid.shape).astype(np.float32)
  b, e, _, k = logits.shape

  def batch_of(logits, labels, valid, label_mask, th, entity_mask, doc_mask):
    """The model's packed layout: the real pairs (valid, real entities, real
    documents) first, then padding pairs holding the junk of the rest."""
    real = (valid & entity_mask.astype(bool)[:, :, None] & entity_mask.astype(bool)[:, None, :]
            & doc_mask.astype(bool)[:, None, None])
    order = np.concatenate([np.flatnonzero(real), np.flatnonzero(~real)])
    flat = lambda x: x.reshape((1, -1) + x.shape[3:])[:, order]
    return (GLiDREOutput(jnp.asarray(flat(logits)), jnp.asarray(flat(th))),
            dict(pair_labels=flat(labels), pair_mask=flat(real.astype(np.int32)),
                 label_mask=label_mask))

  base = losses.relation_loss(*batch_of(logits, labels, valid, label_mask, th,
                                        np.ones((b, e)), np.ones(b)), kind)
  # Pad: 2 more entities, 3 more labels, 1 more document, all with junk values.
  r = np.random.RandomState(6)
  pe, pk = e + 2, k + 3
  big_logits = r.randn(b + 1, pe, pe, pk).astype(np.float32) * 5
  big_labels = (r.rand(b + 1, pe, pe, pk) < 0.5).astype(np.int32)
  big_valid = np.ones((b + 1, pe, pe), bool)
  big_th = r.randn(b + 1, pe, pe).astype(np.float32)
  big_logits[:b, :e, :e, :k], big_labels[:b, :e, :e, :k] = logits, labels
  big_valid[:b, :e, :e], big_th[:b, :e, :e] = valid, th
  big_label_mask = np.concatenate([label_mask, np.zeros(3, int)])
  entity_mask = np.zeros((b + 1, pe)); entity_mask[:, :e] = 1
  doc_mask = np.array([1] * b + [0])
  padded = losses.relation_loss(*batch_of(big_logits, big_labels, big_valid,
                                          big_label_mask, big_th, entity_mask,
                                          doc_mask), kind)
  np.testing.assert_allclose(padded, base, rtol=1e-5)


def test_unknown_loss_is_an_error():
  from glidre_jax.model.glidre import GLiDREOutput
  logits, labels, valid, label_mask = _case()
  with pytest.raises(ValueError, match="unknown loss 'focall'"):
    losses.relation_loss(GLiDREOutput(logits, None), dict(
        pair_labels=labels, pair_mask=valid, label_mask=label_mask), "focall")

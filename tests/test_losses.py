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
  p_t = np.where(labels == 1, p, 1 - p)
  a_t = np.where(labels == 1, alpha, 1 - alpha)
  cell = a_t * (1 - p_t) ** gamma * _np_bce(logits, labels)
  expected = (cell * valid[..., None] * label_mask).sum()
  got = losses.focal_loss(logits, labels, valid, label_mask, alpha=alpha, gamma=gamma)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  mean = losses.focal_loss(logits, labels, valid, label_mask, alpha=alpha,
                           gamma=gamma, reduction="mean")
  np.testing.assert_allclose(mean, expected / (valid.sum() * label_mask.sum()), rtol=1e-5)


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
    return (GLiDREOutput(jnp.asarray(logits), jnp.asarray(th)),
            dict(labels=labels, pair_mask=valid, label_mask=label_mask,
                 entity_mask=entity_mask, doc_mask=doc_mask))

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
        labels=labels, pair_mask=valid, label_mask=label_mask,
        entity_mask=np.ones(valid.shape[:2]), doc_mask=np.ones(2)), "focall")

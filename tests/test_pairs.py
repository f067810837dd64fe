"""Packed real pairs (data/pairs.py): packing, scores and loss against the
dense every-pair computation, padding pairs inert, buckets chosen from data."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glidre_jax import losses
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data import pair_buckets, pairs, pipeline
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import dense
from tiny_model import tiny_glidre

NUM_LABELS = 12
BUCKETS = featurize_lib.Buckets((512,), (512,), (48,))


@pytest.fixture(scope="module")
def feats(tok, schema, dev_docs):
  index = {n: k for k, n in enumerate(schema.names)}
  out = [featurize_lib.featurize(d, tok, index, 512, pair_filter=featurize_lib.without_self_pairs())
         for d in dev_docs[:3]]
  return [featurize_lib.first_labels(f, NUM_LABELS) for f in out]


@pytest.fixture(scope="module")
def label_side(tok, schema):
  return featurize_lib.label_batch(tok, list(schema.names)[:NUM_LABELS], num_labels=16)


def _dense_labels(feats, b, e):
  """Gold [B, E, E, K] and candidate pairs [B, E, E] of the old dense layout."""
  labels, valid = np.zeros((b, e, e, 16), np.int32), np.zeros((b, e, e), bool)
  for i, f in enumerate(feats):
    n = len(f["entity_mask"])
    labels[i, :n, :n, :NUM_LABELS], valid[i, :n, :n] = featurize_lib.dense_labels(f), f["pair_mask"] > 0
  return labels, valid


def test_shards_pack_their_own_documents(feats, label_side):
  """Two shards of two rows: each holds its own documents' candidate pairs
  (shard-local rows, row-major), labels packed alike, then padding."""
  batch = featurize_lib.collate(feats + [None], BUCKETS, label_side, pair_shards=2)
  assert batch["pair_mask"].shape[0] == 2
  for s, rows in enumerate(((0, 1), (2, 3))):
    got = [(int(d), int(h), int(t)) for d, h, t, m in zip(
        batch["pair_doc"][s], batch["pair_head"][s], batch["pair_tail"][s],
        batch["pair_mask"][s]) if m]
    want = [(local, int(h), int(t)) for local, row in enumerate(rows) if row < len(feats)
            for h, t in zip(*np.nonzero(feats[row]["pair_mask"]))]
    assert got == want
    n = len(want)
    assert not batch["pair_mask"][s, n:].any() and not batch["pair_labels"][s, n:].any()
  fullest = max(sum(pairs.num_pairs(feats[i]) for i in (0, 1)), pairs.num_pairs(feats[2]))
  assert batch["pair_mask"].shape[1] == pairs.pick(BUCKETS.pairs, fullest)
  labels, valid = _dense_labels(feats, 4, 48)
  np.testing.assert_array_equal(pairs.dense(batch["pair_labels"], batch), labels)
  np.testing.assert_array_equal(pairs.dense_pair_mask(batch), valid)
  with pytest.raises(ValueError, match="batch_size 4 is not a multiple of the 3 pair shards"):
    featurize_lib.collate(feats, BUCKETS, label_side, batch_size=4, pair_shards=3)


def test_gold_facts_reach_their_pair_slots_and_none_on_masked_pairs():
  """A document's (head, tail, label) rows land on its packed pairs' label
  columns; a fact on a pair the mask leaves out has no slot."""
  mask = np.ones((2, 3, 3), np.int32)
  mask[0, 0, 1] = 0  # a filtered pair that carries a gold fact
  gold = np.zeros((2, 3, 3, 4), np.int32)
  gold[0, 0, 1, 2] = gold[0, 1, 0, 3] = gold[0, 2, 2, 0] = gold[1, 2, 0, 1] = 1
  out = pairs.from_dense(mask, gold, shards=2)
  labels = pairs.dense(out["pair_labels"], {"entity_mask": np.ones((2, 3)), **out})
  expect = gold * mask[..., None]
  np.testing.assert_array_equal(labels, expect)
  assert labels.sum() == 3


def test_pick_past_the_largest_bucket():
  assert pairs.pick((64, 128), 100) == 128 and pairs.pick((64, 128), 129) == 256
  assert pairs.pick((64, 128), 300) == 384


def _ffn(module, x):
  w_in, b_in = (np.asarray(v[...]) for v in (module.dense_in.kernel, module.dense_in.bias))
  w_out, b_out = (np.asarray(v[...]) for v in (module.dense_out.kernel, module.dense_out.bias))
  return np.maximum(x @ w_in + b_in, 0) @ w_out + b_out


def test_packed_scores_equal_the_every_pair_formula(feats, label_side):
  """Logits and threshold logits of the packed pairs (2 shards, a padding
  document, chunked blocks) equal the GLiDRE formula evaluated pair by pair
  on the dense entity context, as the old E² path scored them."""
  model = tiny_glidre(GLiDREConfig(hidden_size=24, dropout=0.0, adaptive_threshold=True,
                                   pair_chunk_size=200), seed=3)
  model.eval()
  batch = featurize_lib.collate(feats + [None], BUCKETS, label_side, pair_shards=2)
  out = model(batch)
  logits, th = np.asarray(dense(out.logits, batch)), np.asarray(dense(out.threshold_logits, batch))
  ctx = model.entity_context(batch)
  words, ents, att = (np.asarray(x) for x in (ctx.words, ctx.entities, ctx.entity_att))
  labels = np.asarray(model.encode_labels(batch))
  label_mean = labels[batch["label_mask"] > 0].mean(0)
  rel = model.span_rep_layer
  worst = 0.0
  for i, f in enumerate(feats):
    for h, t in zip(*np.nonzero(f["pair_mask"])):
      alpha = att[i, h] * att[i, t]
      c = (alpha / (alpha.sum() + 1e-5)) @ words[i]
      head = np.tanh(_ffn(rel.head_extractor, np.concatenate([ents[i, h], c])))
      tail = np.tanh(_ffn(rel.tail_extractor, np.concatenate([ents[i, t], c])))
      r = _ffn(rel.projection, np.concatenate([head, tail]))
      worst = max(worst, np.abs(logits[i, h, t] - r @ labels.T).max(),
                  abs(th[i, h, t] - _ffn(model.threshold_layer,
                                         np.concatenate([label_mean, r]))[0]))
  assert worst <= 1e-5, worst
  _, valid = _dense_labels(feats, 4, 48)
  assert not logits[~valid].any()  # the dense view is 0 off the scored pairs
  assert valid.sum() == batch["pair_mask"].sum() < 0.5 * 4 * 48 * 48  # what E² scored


@pytest.mark.parametrize("kind", ["focal", "bce", "adaptive_threshold"])
def test_loss_equals_the_dense_loss_over_real_pairs(kind, feats, label_side):
  model = tiny_glidre(GLiDREConfig(hidden_size=24, dropout=0.0, adaptive_threshold=True),
                      seed=5)
  model.eval()
  batch = featurize_lib.collate(feats + [None], BUCKETS, label_side, pair_shards=2)
  out = model(batch)
  packed = float(losses.relation_loss(out, batch, kind))
  labels, valid = _dense_labels(feats, 4, 48)
  logits, th = dense(out.logits, batch), dense(out.threshold_logits, batch)
  args = (labels, valid, batch["label_mask"])
  expected = {"focal": lambda: losses.focal_loss(logits, *args),
              "bce": lambda: losses.bce_loss(logits, *args),
              "adaptive_threshold": lambda: losses.adaptive_threshold_loss(logits, th, *args)}
  assert packed == pytest.approx(float(expected[kind]()), rel=1e-6)
  assert labels[valid].sum() > 0  # gold facts took part


def test_padding_pairs_contribute_nothing_to_loss_or_gradients(feats, label_side):
  """More padding pairs, pointing at real pairs and carrying gold labels,
  change neither the loss nor any gradient."""
  model = tiny_glidre(GLiDREConfig(hidden_size=24, dropout=0.0), seed=6)
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tight = featurize_lib.collate(feats, BUCKETS, label_side)
  n = int(tight["pair_mask"].sum())
  loose = featurize_lib.collate(
      feats, featurize_lib.Buckets((512,), (512,), (48,), pairs=(n + 300,)), label_side)
  assert loose["pair_mask"].shape[1] == n + 300 > tight["pair_mask"].shape[1]
  for name in ("pair_doc", "pair_head", "pair_tail"):  # padding = copies of real pairs
    loose[name][0, n:] = loose[name][0, :300]
  loose["pair_labels"][0, n:] = 1

  def loss(params, batch):
    return losses.relation_loss(nnx.merge(graphdef, params, rest)(batch), batch)

  (l_tight, g_tight), (l_loose, g_loose) = (jax.value_and_grad(loss)(params, b)
                                            for b in (tight, loose))
  assert float(l_loose) == pytest.approx(float(l_tight), rel=1e-6)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_tight))
  for a, b in zip(jax.tree.leaves(g_loose), jax.tree.leaves(g_tight)):
    np.testing.assert_allclose(a, b, atol=1e-5 * scale)


def _brute_force_fewest(groups, max_padding, align):
  """The smallest number of buckets any choice needs (exhaustive)."""
  sizes = sorted({int(-(-t // align) * align) for g in groups for t in g})
  for k in range(1, len(sizes) + 1):
    for rest in itertools.combinations(sizes[:-1], k - 1):
      if all(pair_buckets.padding_ratio(g, rest + (sizes[-1],)) <= 1 + max_padding for g in groups):
        return k
  return len(sizes)


def test_chosen_buckets_are_the_fewest_that_meet_the_padding_bound():
  rng = np.random.default_rng(0)
  # 30 batch totals: 17 candidate sizes, small enough for the exhaustive check.
  totals = rng.lognormal(6.5, 0.6, 30).astype(int) + 1
  for max_padding in (0.05, 0.15, 0.4):
    buckets = pair_buckets.choose_pair_buckets([totals], max_padding, align=64)
    assert pair_buckets.padding_ratio(totals, buckets) <= 1 + max_padding
    assert max(buckets) >= totals.max() and all(b % 64 == 0 for b in buckets)
    assert len(buckets) == _brute_force_fewest([totals], max_padding, 64)
  small = rng.lognormal(5.0, 0.8, 60).astype(int) + 1  # batch 1 next to batch 4
  both = pair_buckets.choose_for_groups([small, totals], 0.15)
  assert all(pair_buckets.padding_ratio(g, both) <= 1.15 for g in (small, totals))
  with pytest.raises(ValueError, match="no batch holds a pair"):
    pair_buckets.choose_pair_buckets([[0, 0]])


def test_default_pair_buckets_fit_the_training_documents(tok, schema, dev_docs):
  """configs/default.py's pair_buckets keep the padding ratio (pairs scored /
  real pairs) within 25 % (the bound they were chosen for) on its 400
  training documents, batches as the training pipeline draws them, at the
  embedded batch size and at 1 and 8."""
  from configs import default
  d = default.get_config().data
  index = {n: k for k, n in enumerate(schema.names)}
  counts = [pairs.num_pairs(featurize_lib.featurize(
      doc, tok, index, d.max_length, pair_filter=featurize_lib.without_self_pairs()))
      for doc in dev_docs[:400]]
  sizes = {i: doc.num_words for i, doc in enumerate(dev_docs[:400])}
  for batch_size in sorted({1, d.batch_size, d.eval_batch_size}):
    order = pipeline.EpochOrder(np.arange(400), sizes, batch_size, d.sort_window,
                                d.shuffle_seed, 1)
    batches = [order[i:i + batch_size] for i in range(0, 400, batch_size)]
    ratio = pair_buckets.padding_ratio(pair_buckets.batch_totals(counts, batches), d.pair_buckets)
    assert ratio <= 1.25, (batch_size, ratio)

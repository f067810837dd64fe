"""GLiDRE head: pooling and LOP against loop formulas; batch independence."""
import jax.numpy as jnp
import numpy as np
import pytest

from glidre_jax.data import assets, featurize as featurize_lib, pairs
from glidre_jax.data.readers import read_docred
from glidre_jax.data.relations import RelationSchema
from glidre_jax.data.tokenize import load_tokenizer, minilm_path
from glidre_jax.encoders import load_encoder
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import (GLiDREModel, EntityContext, RelRep, dense, lop_context,
                                     pool_entities)


def test_mean_pooling_and_entity_attention_match_loops():
  r = np.random.RandomState(0)
  words, att = r.randn(1, 10, 4).astype(np.float32), r.rand(1, 10, 10).astype(np.float32)
  mentions = {0: [(0, 2), (5, 8)], 1: [(3, 4)], 2: [(1, 3), (2, 3)]}  # entity 2 overlaps itself
  weights = np.zeros((1, 3, 10), np.float32)
  for e, spans in mentions.items():
    for s, t in spans:
      weights[0, e, s:t] += 1
  ent, ent_att = pool_entities(jnp.asarray(words), jnp.asarray(att), jnp.asarray(weights), "mean")
  for e, spans in mentions.items():
    toks = [w for s, t in spans for w in range(s, t)]  # token-weighted: repeats count
    np.testing.assert_allclose(ent[0, e], words[0, toks].mean(0), atol=1e-5)
    np.testing.assert_allclose(ent_att[0, e], att[0, toks].mean(0), atol=1e-5)
  lse, _ = pool_entities(jnp.asarray(words), jnp.asarray(att), jnp.asarray(weights), "logsumexp")
  for e, spans in mentions.items():
    toks = [w for s, t in spans for w in range(s, t)]
    np.testing.assert_allclose(lse[0, e], np.log(np.exp(words[0, toks]).sum(0)), atol=1e-5)


@pytest.mark.parametrize("lop", [True, False])
def test_pair_vectors_match_the_atlop_formula(lop):
  from flax import nnx
  r = np.random.RandomState(1)
  e, w, d, b = 3, 7, 8, 2  # two documents in one pair shard: pairs of both
  rel = RelRep(GLiDREConfig(hidden_size=d, lop=lop, dropout=0.0), dtype=jnp.float32,
               rngs=nnx.Rngs(0))
  ent_att = r.rand(b, e, w).astype(np.float32)
  words, ents = r.randn(b, w, d).astype(np.float32), r.randn(b, e, d).astype(np.float32)
  ctx = EntityContext(jnp.asarray(words), jnp.asarray(ents), jnp.asarray(ent_att))
  docs = np.repeat(np.arange(b), e * e)
  heads, tails = np.tile(np.repeat(np.arange(e), e), b), np.tile(np.arange(e), e * b)
  got = np.asarray(rel(ctx.by_shard(1), *(jnp.asarray(x)[None] for x in (docs, heads, tails))))
  for p, (i, h, t) in enumerate(zip(docs, heads, tails)):
    if lop:
      alpha = ent_att[i, h] * ent_att[i, t]
      alpha = alpha / (alpha.sum() + 1e-5)
      c = (alpha[:, None] * words[i]).sum(0)
      head = np.tanh(rel.head_extractor(jnp.concatenate([ents[i, h], c])))
      tail = np.tanh(rel.tail_extractor(jnp.concatenate([ents[i, t], c])))
    else:
      head, tail = ents[i, h], ents[i, t]
    expected = rel.projection(jnp.concatenate([head, tail]))
    np.testing.assert_allclose(got[0, p], expected, atol=1e-5)


def test_lop_context_and_its_gradients_match_a_per_pair_gather():
  import jax
  r = np.random.RandomState(2)
  s, bs, w, d, c = 2, 3, 5, 4, 7
  alpha = jnp.asarray(r.rand(s, c, w).astype(np.float32))
  words = jnp.asarray(r.randn(s, bs, w, d).astype(np.float32))
  docs = jnp.asarray(r.randint(0, bs, (s, c)).astype(np.int32)).at[1, -1].set(bs)  # one outside
  cot = jnp.asarray(r.randn(s, c, d).astype(np.float32))
  def gathered(alpha, words):  # [S, C, W, D] of each pair's own words; 0 outside the shard
    own = jnp.take_along_axis(words, docs[..., None, None], axis=1, mode="fill", fill_value=0)
    return jnp.einsum("scw,scwd->scd", alpha, own)
  got, got_vjp = jax.vjp(lambda a, x: lop_context(a, docs, x), alpha, words)
  want, want_vjp = jax.vjp(gathered, alpha, words)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not np.asarray(got[1, -1]).any()
  for g, x in zip(jax.jit(got_vjp)(cot), want_vjp(cot)):
    np.testing.assert_allclose(g, x, rtol=1e-5, atol=1e-6)
  # Compiled inside a jitted gradient, as the train step uses it.
  loss = lambda a, x: (lop_context(a, docs, x) ** 2).sum()
  for g, x in zip(jax.jit(jax.grad(loss, (0, 1)))(alpha, words),
                  jax.grad(lambda a, x: (gathered(a, x) ** 2).sum(), (0, 1))(alpha, words)):
    np.testing.assert_allclose(g, x, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def docs_and_features():
  schema = RelationSchema.from_file(assets.asset_path("docred", "rel_info.json"))
  docs = read_docred(assets.asset_path("redocred", "dev_revised.json"), schema)[:3]
  tok = load_tokenizer(minilm_path())
  index = {n: k for k, n in enumerate(schema.names)}
  feats = [featurize_lib.featurize(d, tok, index, 512) for d in docs]
  labels = featurize_lib.label_batch(tok, list(schema.names)[:12])
  return feats, labels


@pytest.mark.parametrize("cfg", [GLiDREConfig(hidden_size=256),
                                 GLiDREConfig(hidden_size=384, lop=False, pooling="logsumexp",
                                              adaptive_threshold=True)],
                         ids=["lop-mean-projected", "nolop-lse-threshold"])
def test_scores_do_not_depend_on_batch_or_padding(docs_and_features, cfg):
  feats, labels = docs_and_features
  feats = [featurize_lib.first_labels(f, 12) for f in feats]
  model = GLiDREModel(cfg, load_encoder(minilm_path()), load_encoder(minilm_path()))
  model.eval()
  big = featurize_lib.Buckets(seq_len=(512,), words=(512,), entities=(48,), pairs=(4096,))
  batch = featurize_lib.collate(feats, big, labels, batch_size=4, pair_shards=2)
  out = model(batch)
  batched = (dense(out.logits, batch), out.threshold_logits is not None
             and dense(out.threshold_logits, batch))
  for i, f in enumerate(feats):
    n = len(f["entity_mask"])
    single = featurize_lib.collate([f], featurize_lib.Buckets(), labels)
    out = model(single)
    alone = (dense(out.logits, single), out.threshold_logits is not None
             and dense(out.threshold_logits, single))
    np.testing.assert_allclose(batched[0][i, :n, :n], alone[0][0, :n, :n], atol=1e-4)
    if cfg.adaptive_threshold:
      np.testing.assert_allclose(batched[1][i, :n, :n], alone[1][0, :n, :n], atol=1e-4)


def test_label_batch_fits_and_splits_by_length_without_changing_label_vectors():
  from glidre_jax.data import label_split
  tok = load_tokenizer(minilm_path())
  schema = RelationSchema.from_file(assets.asset_path("docred", "rel_info.json"))
  names = list(schema.names)  # 96 names of 3 to 10 subwords
  lengths = [len(tok(name)["input_ids"]) for name in names]
  split = featurize_lib.label_batch(tok, names, max_length=16, num_labels=100)
  full = featurize_lib.label_batch(tok, names, max_length=16, num_labels=100, fit_length=False)
  assert full["label_input_ids"].shape == (100, 16)
  width = split["label_input_ids"].shape[1]
  rows = split["label_long_rows"]
  assert width < max(lengths) and split["label_long_input_ids"].shape == (len(rows), max(lengths))
  assert rows.tolist() == [k for k, n in enumerate(lengths) if n > width]
  slots = split["label_input_ids"].size + split["label_long_input_ids"].size
  assert slots <= (1 - label_split.MIN_SAVING) * 100 * max(lengths)
  # Undone, the split is the batch padded to the longest name.
  ids, mask = label_split.joined(split)
  np.testing.assert_array_equal(ids, full["label_input_ids"][:, :max(lengths)])
  np.testing.assert_array_equal(mask, full["label_attention_mask"][:, :max(lengths)])
  np.testing.assert_array_equal(full["label_attention_mask"][:, max(lengths):], 0)
  model = GLiDREModel(GLiDREConfig(hidden_size=256), load_encoder(minilm_path()),
                      load_encoder(minilm_path()))
  model.eval()
  vectors = [model.encode_labels(b) for b in (split, full)]
  np.testing.assert_allclose(vectors[0][:96], vectors[1][:96], atol=1e-5)
  # Names of one length are not split; a name over max_length keeps its closing token.
  same = featurize_lib.label_batch(tok, ["author", "genre"], max_length=16)
  width = len(tok("author")["input_ids"])
  assert same["label_input_ids"].shape == (2, width) and same["label_long_rows"].shape == (0,)
  assert same["label_long_input_ids"].shape == (0, width)
  short = featurize_lib.label_batch(tok, names[:3] + ["x " * 20], max_length=6)
  ids, _ = label_split.joined(short)
  assert ids.shape == (4, 6) and ids[3, -1] == tok.sep_token_id


@pytest.mark.parametrize("cfg", [GLiDREConfig(hidden_size=256, dropout=0.0),
                                 GLiDREConfig(hidden_size=384, lop=False, dropout=0.0,
                                              adaptive_threshold=True)],
                         ids=["lop", "nolop-threshold"])
def test_chunked_pair_scoring_equals_unchunked(docs_and_features, cfg):
  import dataclasses

  import jax
  from flax import nnx

  from glidre_jax import losses
  feats, labels = docs_and_features
  feats = [featurize_lib.first_labels(f, 12) for f in feats]
  batch = featurize_lib.collate(feats[:2], featurize_lib.Buckets(), labels)
  # The chunking is the head's: a one-layer random encoder (MiniLM's
  # vocabulary) keeps the eager backward pass short.
  from glidre_jax import encoders
  from tiny_training import encoder_config
  enc = encoders.new_encoder(encoder_config())
  model = GLiDREModel(cfg, enc, enc)
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  kind = "adaptive_threshold" if cfg.adaptive_threshold else "focal"

  def loss_and_logits(params, chunk):
    m = nnx.merge(graphdef, params, rest)
    m.config = dataclasses.replace(cfg, pair_chunk_size=chunk)
    out = m(batch)
    return losses.relation_loss(out, batch, kind), out.logits

  (loss_full, logits_full), grads_full = jax.value_and_grad(
      loss_and_logits, has_aux=True)(params, 0)
  (loss_chunk, logits_chunk), grads_chunk = jax.value_and_grad(
      loss_and_logits, has_aux=True)(params, 37)  # 37 divides no E²: padded last block
  # Same math, other GEMM shapes: only float summation order differs, by up
  # to ~2e-6 of the largest logit (1.05e-5 / 1.29e-5 at 5.8 with the encoder's
  # two attention layouts); a chunking bug moves logits by O(scale).
  scale = float(np.abs(logits_full).max())
  np.testing.assert_allclose(logits_chunk, logits_full, atol=5e-6 * max(scale, 1.0))
  np.testing.assert_allclose(loss_chunk, loss_full, rtol=1e-6)
  # Float summation order differs in the backward pass too, and a ReLU whose
  # input is ~0 may switch for a pair, moving a few entries by that pair's
  # share: compare each gradient as a whole, against its own norm and the
  # gradient's overall scale (its largest entries are ~1e2).
  grad_scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_full))
  for a, b in zip(jax.tree.leaves(grads_chunk), jax.tree.leaves(grads_full)):
    a, b = np.asarray(a), np.asarray(b)
    assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b) + 1e-6 * grad_scale, (
        np.linalg.norm(a - b), np.linalg.norm(b))


def test_logsumexp_pooling_gradient_is_finite_for_empty_entity_rows():
  """Padded entity slots (no words) are in every bucketed batch: the gradient
  through logsumexp pooling must stay finite there (-inf masking gave NaN)."""
  import jax
  r = np.random.RandomState(2)
  words = jnp.asarray(r.randn(2, 6, 4).astype(np.float32))
  att = jnp.asarray(r.rand(2, 6, 6).astype(np.float32))
  weights = np.zeros((2, 3, 6), np.float32)
  weights[0, 0, [0, 1]] = 1
  weights[0, 1, 3] = 2  # one word in two mentions
  weights[1, 0, 5] = 1  # rows [0, 2], [1, 1], [1, 2] have no word
  cotangent = jnp.asarray(r.randn(2, 3, 4).astype(np.float32))

  def total(words, weights):
    entities, _ = pool_entities(words, att, weights, "logsumexp")
    return (entities * cotangent).sum()

  value, grad = jax.value_and_grad(total)(words, jnp.asarray(weights))
  grad = np.asarray(grad)
  assert np.isfinite(value) and np.isfinite(grad).all()
  # Against the formula: d/dx log Σ_w n_w e^{x_w} = n_w e^{x_w} / Σ n e^x, only
  # inside real entities; empty rows contribute nothing.
  expected = np.zeros_like(grad)
  for b, e in zip(*np.nonzero(weights.sum(-1))):
    x, n = np.asarray(words[b]), weights[b, e]
    soft = n[:, None] * np.exp(x) / (n[:, None] * np.exp(x)).sum(0)
    expected[b] += soft * np.asarray(cotangent[b, e])
  np.testing.assert_allclose(grad, expected, atol=1e-6)
  entities, _ = pool_entities(words, att, jnp.asarray(weights), "logsumexp")
  assert not np.asarray(entities)[[0, 1, 1], [2, 1, 2]].any()  # empty rows pool to 0


def test_threshold_layer_is_the_official_mlp():
  """Linear(2D, D) → ReLU → Dropout → Linear(D, 1) on [mean of the real label
  vectors; r] (the official `threshold_layer`); padded labels do not count."""
  from tiny_model import tiny_glidre
  d = 24
  model = tiny_glidre(GLiDREConfig(hidden_size=d, dropout=0.0, adaptive_threshold=True))
  model.eval()
  layer = model.threshold_layer
  assert layer.dense_in.kernel.shape == (2 * d, d) and layer.dense_out.kernel.shape == (d, 1)
  r = np.random.RandomState(3)
  e, w, k = 3, 5, 4
  ctx = EntityContext(jnp.asarray(r.randn(1, w, d).astype(np.float32)),
                      jnp.asarray(r.randn(1, e, d).astype(np.float32)),
                      jnp.asarray(r.rand(1, e, w).astype(np.float32)))
  labels = jnp.asarray(r.randn(k, d).astype(np.float32))
  label_mask = jnp.asarray([1, 1, 1, 0])
  ctx = ctx.by_shard(1)
  pairs = (jnp.zeros((1, e * e), jnp.int32), jnp.arange(e * e)[None] // e,
           jnp.arange(e * e)[None] % e)
  out = model.score_pairs(ctx, *pairs, labels, label_mask=label_mask)
  rel = np.asarray(model.span_rep_layer(ctx, *pairs))[0]
  mean = np.asarray(labels)[:3].mean(0)
  kernel_in, bias_in = np.asarray(layer.dense_in.kernel[...]), np.asarray(layer.dense_in.bias[...])
  kernel_out, bias_out = np.asarray(layer.dense_out.kernel[...]), np.asarray(layer.dense_out.bias[...])
  for p in range(e * e):
    hidden = np.maximum(np.concatenate([mean, rel[p]]) @ kernel_in + bias_in, 0)
    np.testing.assert_allclose(out.threshold_logits[0, p], (hidden @ kernel_out + bias_out)[0],
                               atol=1e-5)
  padded_junk = labels.at[3].set(100.0)  # the padded label's vector never matters
  again = model.score_pairs(ctx, *pairs, padded_junk, label_mask=label_mask)
  np.testing.assert_allclose(again.threshold_logits, out.threshold_logits, atol=1e-6)


def test_predict_step_decodes_against_the_threshold_logit(docs_and_features):
  """Predictor._predict_step, adaptive-threshold branch: the score is
  σ(logit − threshold logit), so τ = 0.5 keeps exactly the labels whose logit
  beats the pair's threshold (ATLOP's get_label)."""
  from flax import nnx

  from glidre_jax import inference
  from tiny_model import tiny_glidre
  feats, labels = docs_and_features
  feats = [featurize_lib.first_labels(f, 12) for f in feats[:2]]
  batch = featurize_lib.collate(feats, featurize_lib.Buckets(), labels)
  model = tiny_glidre(GLiDREConfig(hidden_size=32, adaptive_threshold=True), seed=4)
  model.eval()
  out = model(batch)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  probs = inference.Predictor(graphdef).predict_step(nnx.as_pure(params), nnx.as_pure(rest), batch)
  logits, th = (np.asarray(dense(x, batch)) for x in (out.logits, out.threshold_logits))
  valid = pairs.dense_pair_mask(batch)
  expected = 1 / (1 + np.exp(-(logits - th[..., None]))) * valid[..., None]  # 0 off the pairs
  np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal((probs > 0.5)[valid], (logits > th[..., None])[valid])
  # The threshold shifts the decision: plain σ(logit) would decide otherwise.
  assert ((probs > 0.5) != (logits > 0))[valid].any()

"""GLiDRE head: pooling and LOP against loop formulas; batch independence."""
import jax.numpy as jnp
import numpy as np
import pytest

from glidre_jax.data import assets, featurize as featurize_lib
from glidre_jax.data.readers import read_docred
from glidre_jax.data.relations import RelationSchema
from glidre_jax.data.tokenize import load_tokenizer, minilm_path
from glidre_jax.encoders import load_encoder
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import GLiDRE, localized_context, pool_entities


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


def test_localized_context_matches_the_atlop_formula():
  r = np.random.RandomState(1)
  ent_att, words = r.rand(1, 3, 7).astype(np.float32), r.randn(1, 7, 5).astype(np.float32)
  c = np.asarray(localized_context(jnp.asarray(ent_att), jnp.asarray(words)))
  for h in range(3):
    for t in range(3):
      alpha = ent_att[0, h] * ent_att[0, t]
      alpha = alpha / (alpha.sum() + 1e-5)
      np.testing.assert_allclose(c[0, h, t], (alpha[:, None] * words[0]).sum(0), atol=1e-5)


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
  feats = [dict(f, labels=f["labels"][..., :12]) for f in feats]
  model = GLiDRE(cfg, load_encoder(minilm_path()), load_encoder(minilm_path()))
  model.eval()
  big = featurize_lib.Buckets(seq_len=(512,), words=(512,), entities=(48,))
  batched = model(featurize_lib.collate(feats, big, labels, batch_size=4))
  for i, f in enumerate(feats):
    n = len(f["entity_mask"])
    alone = model(featurize_lib.collate([f], featurize_lib.Buckets(), labels))
    np.testing.assert_allclose(batched.logits[i, :n, :n], alone.logits[0, :n, :n], atol=1e-4)
    if cfg.adaptive_threshold:
      np.testing.assert_allclose(batched.threshold_logits[i, :n, :n],
                                 alone.threshold_logits[0, :n, :n], atol=1e-4)

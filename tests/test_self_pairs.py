"""`model.self_pairs`: one rule for (e, e) pairs in training, evaluation and
the predict API (off by default: Re-DocRED, DocRED and CDR have no self facts)."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default
from glidre_jax import evaluate, inference, losses, run_dir
from glidre_jax.data import pairs, registry
from glidre_jax.api import GLiDREPredictor
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data import pipeline
from glidre_jax.data.documents import Relation
from glidre_jax.model.glidre import GLiDREOutput
from tiny_model import tiny_glidre

LABELS = ["country", "place of birth", "located in"]


def config(self_pairs: bool):
  c = default.get_config()
  c.model.update(hidden_size=32, self_pairs=self_pairs)
  c.data.update(max_length=160, seq_buckets=(160,), word_buckets=(160,), entity_buckets=(32,),
                batch_size=2, eval_batch_size=2)
  return c


def data_setup(self_pairs, tok, schema) -> registry.DataSetup:
  return registry.DataSetup(config(self_pairs), schema, tok, tok, builder=None, decode=None)


@pytest.fixture(scope="module")
def docs(dev_docs):
  return sorted(dev_docs, key=lambda d: d.num_words)[:2]


@pytest.fixture(scope="module")
def model():
  m = tiny_glidre(run_dir.model_config(config(False)), seed=3)
  m.eval()
  return m


def test_default_config_leaves_self_pairs_out():
  assert default.get_config().model.self_pairs is False
  assert run_dir.model_config(default.get_config()).self_pairs is False


@pytest.mark.parametrize("self_pairs", [False, True])
def test_training_loss_follows_the_rule(self_pairs, docs, tok, schema):
  """Training batches (the config's pair filter in build_dataset): self pairs
  are out of the loss when off — their logits do not move it — and in when on."""
  data = data_setup(self_pairs, tok, schema)
  d = data.config.data
  batch = pipeline.build_dataset(docs, tokenizer=tok, label_names=schema.names,
                                 batch_size=d.batch_size, buckets=data.buckets,
                                 max_length=d.max_length, train=True,
                                 pair_filter=data.pair_filter)[0]
  real = batch["entity_mask"].astype(bool)
  scored = pairs.dense_pair_mask(batch)
  diagonal = np.diagonal(scored, axis1=1, axis2=2)
  assert (diagonal[real] == self_pairs).all()
  off_diagonal = scored * ~np.eye(scored.shape[1], dtype=bool)
  assert off_diagonal.sum() == sum(int(real[b].sum()) ** 2 - int(real[b].sum())
                                   for b in range(len(real)))
  logits = np.random.RandomState(0).randn(*batch["pair_labels"].shape).astype(np.float32)
  bumped = logits.copy()
  # Only the self pairs change (padding pairs are (0, 0) too: real ones only).
  bumped[(batch["pair_head"] == batch["pair_tail"]) & (batch["pair_mask"] > 0)] += 5.0
  loss = lambda x: float(losses.relation_loss(GLiDREOutput(jnp.asarray(x), None), batch))
  assert (loss(bumped) != loss(logits)) == self_pairs


def test_a_self_fact_is_counted_as_masked_when_off(docs, tok, schema):
  doc = dataclasses.replace(docs[0], relations=docs[0].relations + (
      Relation(head=0, tail=0, label=schema.names[0]),))
  index = {n: k for k, n in enumerate(schema.names)}
  for self_pairs, masked in ((False, 1), (True, 0)):
    pair_filter = data_setup(self_pairs, tok, schema).pair_filter
    feat = featurize_lib.featurize(doc, tok, index, 160, pair_filter=pair_filter)
    assert feat["masked_labels"] == masked


@pytest.mark.parametrize("self_pairs", [False, True])
def test_evaluate_follows_the_rule(self_pairs, model, docs, tok, schema):
  """glidre_jax.evaluate's path (DataSetup.features -> score_documents ->
  to_predictions): no (e, e) prediction when off, some from a random model when on."""
  data = data_setup(self_pairs, tok, schema)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  predictor = inference.Predictor(graphdef)
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)
  predict = lambda batch: predictor.predict_step(params, rest, batch)
  candidates = evaluate.score_documents(predict, data.features(docs), data.buckets,
                                        data.label_batch(), 2)
  preds = evaluate.to_predictions(candidates, docs, schema, threshold=0.05)
  assert len(preds) > 0
  self_preds = [p for p in preds if p["h_idx"] == p["t_idx"]]
  assert bool(self_preds) == self_pairs
  assert bool((candidates.head == candidates.tail).any()) == self_pairs


def test_predict_api_follows_the_rule(model, docs, tok):
  buckets = featurize_lib.Buckets((160,), (160,), (32,))
  has_self = lambda out: any(r["head"] == r["tail"] for triples in out for r in triples)
  off = GLiDREPredictor.from_model(model, config(False), tokenizers=(tok, tok), buckets=buckets)
  assert not has_self(off.predict(docs, LABELS, threshold=0.0))
  assert not np.diagonal(off.scores(docs[:1], LABELS)[0], axis1=0, axis2=1).any()
  assert has_self(off.predict(docs, LABELS, threshold=0.0, drop_self_pairs=False))
  on = GLiDREPredictor.from_model(model, config(True), tokenizers=(tok, tok), buckets=buckets)
  assert has_self(on.predict(docs, LABELS, threshold=0.0))
  assert not has_self(on.predict(docs, LABELS, threshold=0.0, drop_self_pairs=True))

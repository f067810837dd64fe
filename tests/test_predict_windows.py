"""Prediction on long documents: overlapping windows, their layout and merge,
evaluation and the CDR documents over 512 subwords."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from glidre_jax import run_dir as run_dir_lib
from glidre_jax.api import GLiDREPredictor
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data import batching, inputs, windows
from glidre_jax.model.windows import merge_windows
from predict_fixtures import LABELS, RAW
# The shared module-scoped fixtures, by name (pytest finds them here).
from predict_fixtures import dev_docs, model, predictor, run_dir  # noqa: F401


def test_window_layout(predictor, dev_docs):
  doc, tok = inputs.to_document(dev_docs[0]), predictor.tokenizer
  full = featurize_lib.featurize(doc, tok, {}, 1 << 30)
  feat = windows.featurize_windows(doc, tok, 128, 50)
  ids, held, pos = feat["input_ids"], feat["window_word_mask"].astype(bool), feat["word_index"]
  assert len(ids) > 2 and held.any(0).all()  # several windows; each word in one at least
  ends = feat["attention_mask"].sum(1) - 1
  assert (ids[:, 0] == tok.cls_token_id).all() and (ids[np.arange(len(ids)), ends] ==
                                                    tok.sep_token_id).all()
  n, w = np.nonzero(held)
  np.testing.assert_array_equal(ids[n, pos[n, w]], full["input_ids"][full["word_index"][w]])
  np.testing.assert_array_equal(feat["entity_word_weights"], full["entity_word_weights"])
  assert feat["entity_mask"].all() and feat["dropped_words"] == 0
  with pytest.raises(ValueError, match="stride must be in"):
    windows.featurize_windows(doc, tok, 128, 127)


def test_merge_windows_averages_overlaps():
  held = np.array([[[1, 1, 0], [0, 1, 1]]], np.float32)  # word 1 in both windows
  words = np.arange(12, dtype=np.float32).reshape(2, 3, 2) * held.reshape(2, 3, 1)
  att = np.arange(18, dtype=np.float32).reshape(2, 3, 3) * held.reshape(2, 1, 3)
  got_w, got_a = (np.asarray(x) for x in merge_windows(words, att, held, np.ones((1, 3), np.int32)))
  np.testing.assert_allclose(got_w[0], [words[0, 0], (words[0, 1] + words[1, 1]) / 2,
                                        words[1, 2]])
  assert got_a[0, 0, 1] == att[0, 0, 1] and got_a[0, 1, 2] == att[1, 1, 2]
  assert got_a[0, 1, 1] == (att[0, 1, 1] + att[1, 1, 1]) / 2 and got_a[0, 0, 2] == 0


NBSP_DOC = {"id": "nbsp", "tokenized_text": ["Kriegers", "Flak", "lies", "15", "\xa0", "km", "off",
                                           "Denmark", "\xa0", "."],
            "mentions": [{"id": 0, "type": "LOC", "mentions": [{"value": "Kriegers Flak",
                                                                "start": 0, "end": 1}]},
                         {"id": 1, "type": "NUM", "mentions": [{"value": "15 km", "start": 3,
                                                                "end": 5}]},
                         {"id": 2, "type": "LOC", "mentions": [{"value": "Denmark", "start": 7,
                                                                "end": 8}]}]}


@pytest.mark.parametrize("raw", [RAW, NBSP_DOC], ids=["raw", "words-without-subwords"])
def test_one_window_gives_the_single_pass_scores(predictor, raw):
  doc = inputs.to_document(raw)
  plain = predictor.featurize([doc])[0]
  # The predictor's pair rule (no self pairs): only scored pairs have scores.
  windowed = windows.featurize_windows(doc, predictor.tokenizer, predictor.max_length, 64,
                                       pair_filter=featurize_lib.without_self_pairs())
  assert windowed["input_ids"].shape[0] == 1
  np.testing.assert_array_equal(windowed["pair_mask"], plain["pair_mask"])
  single, through_windows = (next(predictor._batches([f], LABELS, 2, True, None))[2]
                             for f in (plain, windowed))
  np.testing.assert_allclose(through_windows, single, rtol=1e-6, atol=1e-7)


def test_long_documents_keep_every_entity(predictor, dev_docs):
  p = predictor
  windowed = GLiDREPredictor(p.config, p.predictor.graphdef, p.params, p.rest, p.tokenizer,
                             p.label_tokenizer, stride=64)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    scores = windowed.scores([RAW, dev_docs[0]], LABELS)
    truncated = p.scores([dev_docs[0]], LABELS)[0]
  assert sum("max_length" in str(w.message) for w in caught) == 1  # the truncating run only
  n = len(dev_docs[0]["vertexSet"])
  lost = truncated.reshape(n, -1).max(1) == 0
  assert lost.sum() >= 5 and (scores[1].reshape(n, -1).max(1) > 0).all()
  np.testing.assert_allclose(scores[0], p.scores([RAW], LABELS)[0], rtol=1e-6, atol=1e-7)


def test_windowed_run_predicts_in_windows(run_dir, dev_docs, tmp_path):
  """A run trained with data.window_stride > 0 loads with that stride: long
  documents keep every entity, as in its training and evaluation."""
  import shutil
  windowed_run = tmp_path / "windowed_run"
  shutil.copytree(run_dir, windowed_run)
  config = run_dir_lib.load_config(windowed_run)
  config.data.window_stride = 64
  run_dir_lib.save_config(config, windowed_run)
  loaded = GLiDREPredictor.from_pretrained(windowed_run)
  assert loaded.stride == 64
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no entity is lost to truncation
    scores = loaded.scores([dev_docs[0]], LABELS)[0]
  n = len(dev_docs[0]["vertexSet"])
  assert (scores.reshape(n, -1).max(1) > 0).all()
  explicit = GLiDREPredictor.from_pretrained(run_dir, stride=64).scores([dev_docs[0]], LABELS)[0]
  np.testing.assert_array_equal(scores, explicit)
  truncating = GLiDREPredictor.from_pretrained(windowed_run, stride=0)
  with pytest.warns(UserWarning, match="max_length=128"):
    assert (truncating.scores([dev_docs[0]], LABELS)[0].reshape(n, -1).max(1) == 0).any()


def test_evaluation_windows_long_documents(predictor, dev_docs, schema):
  """Evaluation features of documents over max_length keep every entity and
  every gold fact; scoring batches them in windows."""
  from glidre_jax import evaluate
  from glidre_jax.data import readers
  tok = predictor.tokenizer
  docs = [readers.docred_document(d, schema) for d in dev_docs[:3]]
  index = {name: k for k, name in enumerate(schema.names)}
  truncated = [featurize_lib.featurize(doc, tok, index, 128) for doc in docs]
  assert all(f["dropped_entities"] and f["masked_labels"] for f in truncated)
  feats = [batching.featurize_long(doc, tok, index, 128, 64) for doc in docs]
  fits = batching.featurize_long(docs[0], tok, index, 512, 64)  # fits: the single pass
  plain = featurize_lib.featurize(docs[0], tok, index, 512)
  assert not windows.is_windowed(fits) and fits.keys() == plain.keys()
  for key, value in plain.items():
    np.testing.assert_array_equal(fits[key], value, err_msg=key)
  for doc, f in zip(docs, feats):
    assert windows.is_windowed(f) and f["entity_mask"].all() and not f["masked_labels"]
    assert len(f["relations"]) == len(doc.relations)
  label_batch = featurize_lib.label_batch(predictor.label_tokenizer, list(schema.names))
  predict = lambda batch: predictor.predictor.predict_step(predictor.params, predictor.rest,
                                                           batch)
  found = evaluate.score_documents(predict, feats, predictor.buckets, label_batch, 2,
                                   window=128)
  for i, doc in enumerate(docs):  # a random head scores ~0.5: every entity gets candidates
    assert set(found.head[found.doc == i]) == set(range(len(doc.entities)))


def test_cdr_long_documents_lose_no_mention(tok):
  """CDR documents over 512 subwords: truncation drops mentions, windows keep all."""
  from conftest import SHARED_DATA
  from glidre_jax.data import readers, registry
  path = SHARED_DATA / "cdr" / "dev.json"
  if not path.exists():
    pytest.skip(f"{path} not available")
  cdr_schema = registry.dataset_schema("cdr")
  docs = readers.normalize_cdr(readers.read_docred(path, cdr_schema, strict=False))
  index = {name: k for k, name in enumerate(cdr_schema.names)}
  long_docs = [d for d in docs
               if featurize_lib.featurize(d, tok, index, 512)["dropped_words"]][:6]
  assert len(long_docs) == 6
  lost = [featurize_lib.featurize(d, tok, index, 512)["dropped_mentions"] for d in long_docs]
  assert sum(lost) > 0
  for doc in long_docs:
    f = batching.featurize_long(doc, tok, index, 512, 256,
                               pair_filter=featurize_lib.cdr_pair_filter)
    assert f["input_ids"].shape[1] == 512 and f["dropped_mentions"] == 0
    assert f["entity_mask"].all() and f["window_word_mask"].any(0).all()
    assert len(f["relations"]) == len(doc.relations)

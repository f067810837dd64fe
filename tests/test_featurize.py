from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

from glidre_jax.data import batch as batch_lib
from glidre_jax.data import batching
from glidre_jax.data import pairs
from glidre_jax.data.assets import asset_path
from glidre_jax.data.documents import Document, Entity, Mention, Relation
from glidre_jax.data.featurize import (Buckets, cdr_pair_filter, collate, dense_labels,
                                       feature_shape, featurize, label_batch, type_pair_filter)
from glidre_jax.data.readers import normalize_cdr, read_docred
from glidre_jax.data.relations import RelationSchema

from conftest import SHARED_DATA








def _index(schema):
  return {n: k for k, n in enumerate(schema.names)}


def test_featurize_real_docs(tok, schema, dev_docs):
  index = _index(schema)
  for doc in dev_docs[:3]:
    f = featurize(doc, tok, index, 512)
    n_ent, n_words = len(doc.entities), doc.num_words
    assert f["entity_word_weights"].shape == (n_ent, n_words)
    assert f["word_index"].shape == (n_words,) and f["dropped_words"] == 0
    # Reference weights by explicit loops over mentions.
    ref = np.zeros((n_ent, n_words), np.float32)
    for e, ent in enumerate(doc.entities):
      for m in ent.mentions:
        ref[e, m.start:m.end] += 1
    np.testing.assert_array_equal(f["entity_word_weights"], ref)
    assert f["entity_word_weights"].sum(1).tolist() == [
        sum(m.end - m.start for m in ent.mentions) for ent in doc.entities]
    gold = {(r.head, r.tail, index[r.label]) for r in doc.relations}
    assert set(map(tuple, f["relations"].tolist())) == gold and gold
    assert len(f["relations"]) == len(gold) and f["num_labels"] == schema.num_labels
    assert f["relations"].dtype == np.int32
    assert f["pair_mask"].shape == (n_ent, n_ent) and f["pair_mask"].all()  # self pairs too
    assert f["entity_mask"].all() and f["masked_labels"] == 0


def _doc(**kw):
  words = ("Alan", "Turing", "was", "born", "in", "London", ".", "Turing", "left", "London")
  ents = (Entity((Mention(0, 2, 0, "Alan Turing"), Mention(1, 2, 0, "Turing"),
                  Mention(7, 8, 0, "Turing")), "PER"),
          Entity((Mention(5, 6, 0, "London"), Mention(9, 10, 0, "London")), "LOC"))
  rels = (Relation(0, 1, "place of birth"),)
  return Document(kw.get("title", "t"), (words,), kw.get("entities", ents),
                  kw.get("relations", rels))


def test_overlapping_mentions_count_twice(tok, schema):
  f = featurize(_doc(), tok, _index(schema), 512)
  assert f["entity_word_weights"][0].tolist() == [1, 2, 0, 0, 0, 0, 0, 1, 0, 0]
  assert f["entity_word_weights"][1].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1]


def test_truncated_entity_is_masked(tok, schema):
  # 6 subword slots: [CLS] alan turing was born [SEP] -> London is cut off.
  f = featurize(_doc(), tok, _index(schema), 6)
  assert f["word_index"].shape == (4,) and f["dropped_words"] == 6
  assert f["entity_mask"].tolist() == [1, 0]
  assert f["dropped_entities"] == 1 and f["dropped_mentions"] == 3  # Turing@7, London x2
  assert f["pair_mask"].tolist() == [[1, 0], [0, 0]]
  assert f["masked_labels"] == 1  # the gold fact points at London


def test_unknown_relation_names_document(tok, schema):
  doc = _doc(title="Odd doc", relations=(Relation(0, 1, "no such relation"),))
  with pytest.raises(ValueError, match="Odd doc.*no such relation"):
    featurize(doc, tok, _index(schema), 512)


def test_buckets_pick_and_errors():
  b = Buckets(seq_len=(512, 128, 256), words=(64, 128, 256, 512), entities=(16, 32, 64))
  assert b.seq_len == (128, 256, 512) and b.num_combinations == 36
  assert b.pick(129, 64, 1) == (256, 64, 16)
  with pytest.raises(ValueError, match="'Big'.*entities = 65"):
    b.pick(10, 10, 65, title="Big")
  fine = Buckets(seq_len=(256, 500), words=(64,), entities=(16,)).for_prediction()
  assert fine.seq_len == (64, 128, 192, 256, 320, 384, 448, 500)
  assert fine.words == (64,) and fine.pick(257, 10, 1) == (320, 64, 16)


def test_bucket_batches_keep_buckets_apart_and_split_the_rest_in_powers_of_two():
  # (bucket, size) per document: 7 in bucket 1, 3 in bucket 0, 8 in bucket 2.
  docs = [(1, 10 + i) for i in range(7)] + [(0, 5 - i) for i in range(3)] + [(2, i) for i in range(8)]
  batches = batching.bucket_batches(range(len(docs)), 4, lambda i: (docs[i][0],),
                                    lambda i: (docs[i][1],))
  assert [[docs[i] for i in b] for b in batches] == [
      [(0, 3), (0, 4)], [(0, 5)],  # smallest bucket first; 3 = 2 + 1, sorted by size
      [(1, 10), (1, 11), (1, 12), (1, 13)], [(1, 14), (1, 15)], [(1, 16)],  # 7 = 4 + 2 + 1
      [(2, 0), (2, 1), (2, 2), (2, 3)], [(2, 4), (2, 5), (2, 6), (2, 7)]]
  assert batching.bucket_batches([], 4, lambda i: (0,), lambda i: (0,)) == []


def test_a_larger_prediction_batch_computes_no_more_slots_per_document(tok, schema, dev_docs):
  """Every batch of the plan holds one bucket and no padding row, so the
  padded subword, word and entity slots are those of batch 1, at any batch
  size (a batch that straddled two buckets padded all to the larger)."""
  feats = [featurize(d, tok, _index(schema), 512) for d in dev_docs[:23]]
  labels = label_batch(tok, schema.names)
  buckets = Buckets().for_prediction()

  def slots(batch_size):
    total = collections.Counter()
    for chunk, collate_batch in batching.plan_batches(feats, buckets, batch_size, 512):
      batch = collate_batch([feats[i] for i in chunk], labels)
      assert batch["input_ids"].shape[0] == len(chunk)  # no padding rows
      for key in ("input_ids", "word_mask", "entity_mask"):
        total[key] += batch[key].size
    return total

  one = slots(1)
  assert len({buckets.pick(*feature_shape(f))[0] for f in feats}) > 1  # several buckets
  for batch_size in (2, 4, 8, 5):
    assert slots(batch_size) == one
  plan = batching.plan_batches(feats, buckets, 8, 512)
  assert sorted(i for c, _ in plan for i in c) == list(range(23))
  (chunk, one_doc), = [(c, collate_batch([feats[i] for i in c], labels))
                       for c, collate_batch in batching.plan_batches(feats[:1], buckets, 8, 512)]
  assert chunk == [0] and one_doc["input_ids"].shape[0] == 1  # one document: one row, not 8


def test_collate_pads_to_bucket_shapes(tok, schema, dev_docs):
  index = _index(schema)
  feats = [featurize(d, tok, index, 512) for d in dev_docs[:3]]
  labels = label_batch(tok, schema.names, num_labels=100)
  buckets = Buckets()
  out = collate(feats + [None], buckets, labels, batch_size=6)
  # Re-DocRED's names come split by length (data/label_split.py).
  assert set(out) == set(batch_lib.DOC_FIELDS + batch_lib.LABEL_FIELDS)
  seq = max(len(f["input_ids"]) for f in feats)
  words = max(len(f["word_index"]) for f in feats)
  ents = max(len(f["entity_mask"]) for f in feats)
  shape = buckets.pick(seq, words, ents)
  L, W, E = shape
  assert out["input_ids"].shape == (6, L) and out["attention_mask"].shape == (6, L)
  assert out["word_index"].shape == out["word_mask"].shape == (6, W)
  assert out["entity_word_weights"].shape == (6, E, W) and out["entity_word_weights"].dtype == np.float32
  n_pairs = sum(int(f["pair_mask"].sum()) for f in feats)  # packed: one shard
  P = out["pair_mask"].shape[1]
  assert P == min(p for p in buckets.pairs if p >= n_pairs)
  assert out["pair_labels"].shape == (1, P, 100) and out["pair_mask"].sum() == n_pairs
  longest = max(len(tok(name)["input_ids"]) for name in schema.names)  # 10 of max_length 16
  assert out["label_long_input_ids"].shape[1] == longest > out["label_input_ids"].shape[1]
  assert out["label_input_ids"].shape[0] == 100 and out["label_mask"].sum() == 96
  assert out["doc_mask"].tolist() == [1, 1, 1, 0, 0, 0]
  for name, arr in out.items():
    if name != "entity_word_weights":
      assert arr.dtype == np.int32, name
  for i, f in enumerate(feats):
    n = len(f["input_ids"])
    assert out["attention_mask"][i].sum() == n and (out["input_ids"][i, n:] == 0).all()
    assert out["word_mask"][i].sum() == len(f["word_index"])
    n = len(f["entity_mask"])
    dense = pairs.dense(out["pair_labels"], out)
    np.testing.assert_array_equal(dense[i, :n, :n, :96], dense_labels(f))
    np.testing.assert_array_equal(pairs.dense_pair_mask(out)[i, :n, :n], f["pair_mask"] > 0)
  for name in set(batch_lib.DOC_FIELDS) - set(batch_lib.PAIR_FIELDS):
    assert not out[name][3:].any(), name  # padding documents are all zero
  real = out["pair_mask"] > 0  # ... and have no pairs; padding pairs are all zero
  assert (out["pair_doc"][real] < 3).all() and real[0, :n_pairs].all()
  for name in batch_lib.PAIR_FIELDS:
    assert not out[name][~real].any(), name


def test_cdr_pair_filter(tok):
  if not (SHARED_DATA / "cdr" / "dev.json").exists():
    pytest.skip(f"no CDR data under {SHARED_DATA}")
  cdr = RelationSchema.from_file(asset_path("cdr", "rel_info.json")).without("NR")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # duplicate-label notes of the CDR files
    docs = normalize_cdr(read_docred(SHARED_DATA / "cdr" / "dev.json", cdr, strict=False))
  index = {n: k for k, n in enumerate(cdr.names)}
  for doc in docs[:10]:
    f = featurize(doc, tok, index, 512, pair_filter=cdr_pair_filter)
    types = np.array([e.type for e in doc.entities])
    expect = (types == "CHEM")[:, None] & (types == "DISE")[None, :]
    expect &= f["entity_mask"].astype(bool)[:, None] & f["entity_mask"].astype(bool)[None, :]
    np.testing.assert_array_equal(f["pair_mask"], expect.astype(np.int32))
    assert all(f["pair_mask"][h, t] for h, t, _ in f["relations"])  # gold only on CHEM->DISE
  f = featurize(_doc(), tok, _index(RelationSchema.from_file(asset_path("docred", "rel_info.json"))),
                512, pair_filter=type_pair_filter([("LOC", "PER")]))
  assert f["pair_mask"].tolist() == [[0, 0], [1, 0]] and f["masked_labels"] == 1


def test_words_without_subwords_keep_place_and_weight(tok, schema):
  """As the official GLiDRE: "\xa0" is a word of its mention (weight 1) with
  no subword (word_mask 0); collate and windows carry that mask."""
  from glidre_jax.data import windows
  words = ("The", "wind", "farm", "is", "15", "\xa0", "km", "off", "Denmark", "\xa0")
  ents = (Entity((Mention(4, 7, 0, "15 \xa0 km"),), "NUM"),
          Entity((Mention(8, 10, 0, "Denmark \xa0"),), "LOC"))
  doc = Document("nbsp", (words,), ents, ())
  f = featurize(doc, tok, _index(schema), 512)
  assert f["word_mask"].tolist() == [1, 1, 1, 1, 1, 0, 1, 1, 1, 0]
  assert f["entity_word_weights"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 0, 0, 0],
                                               [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]]
  assert f["empty_words"] == 2 and f["entity_mask"].tolist() == [1, 1]
  out = collate([f], Buckets((128,), (64,), (16,)), label_batch(tok, schema.names))
  np.testing.assert_array_equal(out["word_mask"][0, :10], f["word_mask"])
  assert not out["word_mask"][0, 10:].any()
  feat = windows.featurize_windows(doc, tok, 8, 2)  # several windows: none holds a "\xa0"
  assert len(feat["input_ids"]) > 1 and not feat["window_word_mask"][:, [5, 9]].any()
  assert feat["window_word_mask"].any(0).tolist() == [bool(m) for m in f["word_mask"]]
  np.testing.assert_array_equal(windows.as_windowed(f)["window_word_mask"][0], f["word_mask"])


def test_prediction_batches_group_documents_by_bucket():
  """Sorted by subwords alone, documents of one sequence bucket but two word
  buckets alternate, and every batch pads to the larger word bucket; the
  plan sorts by bucket first."""
  buckets = Buckets(seq_len=(256,), words=(128, 256), entities=(16,))
  # (subwords, words): subwords rise while words alternate across 128.
  sizes = [(200 + i, 100 if i % 2 else 200) for i in range(8)]
  feats = [{"input_ids": np.zeros(n), "word_index": np.zeros(w), "entity_mask": np.zeros(3),
            "title": f"d{i}"} for i, (n, w) in enumerate(sizes)]
  plan = batching.plan_batches(feats, buckets, 4, window=0)
  words = [{buckets.pick(*sizes[i], 3)[1] for i in idx} for idx, _ in plan]
  assert words == [{128}, {256}]

"""The Re-DocRED scorer on hand-made cases and on the real dev split."""
from __future__ import annotations

import json

import pytest

from glidre_jax import metrics
from glidre_jax.data.readers import read_docred
from glidre_jax.data.relations import RelationSchema

from conftest import packaged_or_shared as _data




def _ent(*names):
  return [{"name": n, "sent_id": 0, "pos": [0, 1], "type": "X"} for n in names]


def _gold():
  # Doc A: 3 entities, 3 facts (one label repeated); doc B: 2 entities, 1 fact.
  a = {"title": "A", "vertexSet": [_ent("Paris", "the city"), _ent("France"), _ent("Europe")],
       "labels": [{"h": 0, "t": 1, "r": "P17", "evidence": []},
                  {"h": 0, "t": 1, "r": "P17", "evidence": [0]},  # duplicate gold
                  {"h": 1, "t": 2, "r": "P30", "evidence": []},
                  {"h": 0, "t": 2, "r": "P30", "evidence": []}]}
  b = {"title": "B", "vertexSet": [_ent("Bob"), _ent("Alice")],
       "labels": [{"h": 0, "t": 1, "r": "P26", "evidence": []}]}
  return [a, b]


def _p(title, h, t, r):
  return {"title": title, "h_idx": h, "t_idx": t, "r": r}


def test_counts_precision_recall_f1():
  preds = [_p("A", 0, 1, "P17"), _p("A", 1, 2, "P30"), _p("B", 1, 0, "P26")]
  s = metrics.score(preds, _gold())
  assert (s.num_gold, s.num_pred, s.num_correct, s.num_correct_in_train) == (4, 3, 2, 0)
  assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(1 / 2)
  assert s.f1 == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
  assert s.ign_precision == pytest.approx(2 / (3 + 1e-5), abs=0)
  assert s.as_dict()["f1"] == s.f1


def test_duplicate_predictions_count_once():
  preds = [_p("A", 0, 1, "P17")] * 3 + [_p("B", 0, 0, "P26"), _p("B", 0, 0, "P26")]
  s = metrics.score(preds, _gold())
  assert (s.num_pred, s.num_correct) == (2, 1)
  assert s.precision == 0.5 and s.recall == 0.25


def test_duplicate_gold_counts_once():
  g = metrics.gold_facts(_gold())
  assert len(g.facts) == 4 and ("A", "P17", 0, 1) in g.facts


def test_unknown_title_counts_in_denominator():
  s = metrics.score([_p("A", 0, 1, "P17"), _p("Z", 0, 1, "P17")], _gold())
  assert (s.num_pred, s.num_correct, s.precision) == (2, 1, 0.5)


def test_ign_f1_formula():
  # Correct P17(A:0 -> A:1) is "in train" through its *second* head mention name.
  train = metrics.train_facts([
      {"title": "T1", "vertexSet": [_ent("the city"), _ent("France")],
       "labels": [{"h": 0, "t": 1, "r": "P17"}]},
      # Same names, other relation: does not make P30 or P17 predictions "in train".
      {"title": "T2", "vertexSet": [_ent("France"), _ent("Europe"), _ent("Bob"), _ent("Eve")],
       "labels": [{"h": 0, "t": 1, "r": "P31"}, {"h": 2, "t": 3, "r": "P26"}]},
  ])
  assert ("the city", "France", "P17") in train and ("Bob", "Eve", "P26") in train
  preds = [_p("A", 0, 1, "P17"), _p("A", 1, 2, "P30"), _p("A", 0, 2, "P17"), _p("B", 0, 1, "P17")]
  s = metrics.score(preds, _gold(), train=train)
  correct, n_pred, in_train = 2, 4, 1
  assert (s.num_correct, s.num_pred, s.num_correct_in_train) == (correct, n_pred, in_train)
  p_ign = (correct - in_train) / (n_pred - in_train + 1e-5)
  r = correct / 4
  assert s.ign_precision == pytest.approx(p_ign, rel=1e-12)
  assert s.ign_f1 == pytest.approx(2 * p_ign * r / (p_ign + r), rel=1e-12)
  assert s.ign_f1 < s.f1 and s.recall == r
  # A *wrong* prediction whose names are training facts is not subtracted.
  wrong = metrics.score([_p("B", 0, 1, "P17")], _gold(), train={("Bob", "Alice", "P17")})
  assert wrong.num_correct_in_train == 0


def test_empty_predictions_and_empty_gold():
  s = metrics.score([], _gold())
  assert (s.precision, s.recall, s.f1, s.ign_f1, s.num_pred, s.num_gold) == (0, 0, 0, 0, 0, 4)
  empty_gold = [{"title": "A", "vertexSet": [_ent("x")], "labels": []}]
  s = metrics.score([_p("A", 0, 0, "P17")], empty_gold)
  assert (s.precision, s.recall, s.f1, s.num_gold) == (0, 0, 0, 0)
  s = metrics.score([], [{"title": "A", "vertexSet": [_ent("x")]}])  # test split: no labels
  assert s.f1 == 0 and s.num_gold == 0


def test_duplicate_gold_title_rejected():
  with pytest.raises(ValueError, match="duplicate gold title 'A'"):
    metrics.gold_facts([_gold()[0], _gold()[0]])


def test_gold_against_itself_real_dev():
  schema = RelationSchema.from_file(_data("docred", "rel_info.json"))
  path = _data("redocred", "dev_revised.json")
  raw = json.loads(path.read_text(encoding="utf-8"))
  docs = read_docred(path, schema)
  preds = [_p(d["title"], lab["h"], lab["t"], lab["r"]) for d in raw for lab in d["labels"]]
  s = metrics.score(preds, raw)
  assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0) and s.num_pred == len(preds)
  # Documents + schema give the same answer as the DocRED dicts.
  s2 = metrics.score(metrics.predictions_from_documents(docs, schema), docs, schema=schema)
  assert s2 == s
  # Scoring against "training facts" from half the same split: every correct
  # prediction of that half is in train, so Ign F1 drops below F1.
  train = metrics.train_facts(docs[:250], schema)
  s3 = metrics.score(preds, metrics.gold_facts(raw), train=train)
  assert s3.f1 == 1.0 and s3.num_correct_in_train >= sum(len(d["labels"]) for d in raw[:250])
  assert s3.ign_f1 < 1.0
  with pytest.raises(ValueError, match="needs a RelationSchema"):
    metrics.score(preds, docs)

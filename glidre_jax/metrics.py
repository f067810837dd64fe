"""The official Re-DocRED relation scorer (spec §3), in plain Python.

Semantics follow the Re-DocRED / DocRED `evaluation.py`:
  * gold facts are keyed (title, r, h_idx, t_idx) and de-duplicated;
  * predictions are sorted by (title, h_idx, t_idx, r) and de-duplicated;
    every remaining prediction counts in the precision denominator, also
    those whose title is not in the gold set;
  * Ign F1 discounts correct predictions whose (head mention name, tail
    mention name, r) appears among the training facts.
Relations are compared by *id* ("P17"), as the official files store them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from glidre_jax.data.documents import Document
from glidre_jax.data.relations import RelationSchema

Fact = tuple[str, str, int, int]  # (title, r, h_idx, t_idx)


@dataclasses.dataclass(frozen=True)
class Scores:
  precision: float
  recall: float
  f1: float
  ign_precision: float
  ign_f1: float
  num_pred: int  # predictions after de-duplication
  num_gold: int  # gold facts after de-duplication
  num_correct: int
  num_correct_in_train: int  # correct predictions whose name triple is a training fact

  def as_dict(self) -> dict[str, float | int]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Gold:
  """Gold facts plus each title's entity mention names (for the Ign check)."""
  facts: frozenset[Fact]
  mention_names: Mapping[str, tuple[tuple[str, ...], ...]]  # title -> entity -> names


def _as_docred(doc, schema: RelationSchema | None) -> Mapping:
  """Accept a DocRED dict or a Document (whose names need a schema to become ids)."""
  if isinstance(doc, Document):
    if schema is None:
      raise ValueError("scoring Documents needs a RelationSchema to map names back to ids")
    return {"title": doc.title,
            "vertexSet": [[{"name": m.name} for m in e.mentions] for e in doc.entities],
            "labels": [{"h": r.head, "t": r.tail, "r": schema.id(r.label)}
                       for r in doc.relations]}
  return doc


def gold_facts(docs: Iterable[Document | Mapping], schema: RelationSchema | None = None) -> Gold:
  """Index gold documents (DocRED dicts, or Documents with their schema)."""
  facts, names = set(), {}
  for doc in docs:
    doc = _as_docred(doc, schema)
    title = doc["title"]
    if title in names:
      # The official scorer keys everything by title; a repeat would silently
      # merge two documents' facts and overwrite the first one's entities.
      raise ValueError(f"duplicate gold title {title!r}: titles must identify documents")
    names[title] = tuple(tuple(m["name"] for m in ent) for ent in doc["vertexSet"])
    for lab in doc.get("labels", []):
      facts.add((title, lab["r"], lab["h"], lab["t"]))
  return Gold(frozenset(facts), names)


def train_facts(docs: Iterable[Document | Mapping],
                schema: RelationSchema | None = None) -> frozenset[tuple[str, str, str]]:
  """(head mention name, tail mention name, r) for every mention pair of every training label."""
  out = set()
  for doc in docs:
    doc = _as_docred(doc, schema)
    vertex_set = doc["vertexSet"]
    for lab in doc.get("labels", []):
      for n1 in vertex_set[lab["h"]]:
        for n2 in vertex_set[lab["t"]]:
          out.add((n1["name"], n2["name"], lab["r"]))
  return frozenset(out)


def _f1(p: float, r: float) -> float:
  return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _dedup_predictions(predictions: Iterable[Mapping]) -> list[tuple[str, int, int, str]]:
  keys = sorted({(p["title"], int(p["h_idx"]), int(p["t_idx"]), p["r"]) for p in predictions})
  return keys  # sorted like the official (title, h_idx, t_idx, r) order


def score(predictions: Iterable[Mapping], gold: Gold | Iterable[Document | Mapping], *,
          train: Iterable[tuple[str, str, str]] | None = None,
          schema: RelationSchema | None = None) -> Scores:
  """Score predictions ({"title", "h_idx", "t_idx", "r"}) against gold.

  `gold` is a `Gold` index or gold documents; `train` is `train_facts(...)`
  of the training split (empty: Ign F1 equals F1 up to the 1e-5 term).
  """
  if not isinstance(gold, Gold):
    gold = gold_facts(gold, schema)
  train = frozenset(train or ())
  preds = _dedup_predictions(predictions)
  num_gold = len(gold.facts)
  correct = in_train = 0
  for title, h, t, r in preds:
    if (title, r, h, t) not in gold.facts:
      continue
    correct += 1
    names = gold.mention_names[title]
    if any((n1, n2, r) in train for n1 in names[h] for n2 in names[t]):
      in_train += 1
  if not preds:
    # Official scorer returns all zeros for an empty submission.
    return Scores(0.0, 0.0, 0.0, 0.0, 0.0, 0, num_gold, 0, 0)
  precision = correct / len(preds)
  recall = correct / num_gold if num_gold else 0.0
  ign_precision = (correct - in_train) / (len(preds) - in_train + 1e-5)
  return Scores(precision=precision, recall=recall, f1=_f1(precision, recall),
                ign_precision=ign_precision, ign_f1=_f1(ign_precision, recall),
                num_pred=len(preds), num_gold=num_gold, num_correct=correct,
                num_correct_in_train=in_train)


def predictions_from_documents(docs: Sequence[Document],
                               schema: RelationSchema) -> list[dict[str, str | int]]:
  """Predicted Documents -> the official prediction list (relation ids)."""
  return [{"title": d.title, "h_idx": r.head, "t_idx": r.tail, "r": schema.id(r.label)}
          for d in docs for r in d.relations]

"""Probabilities [B, E, E, K] -> relation triples, on the host (numpy).

Everything that decides which (head, tail, label) is reported lives here:
per-label thresholds, entity-type constraints, top-k labels per pair and the
self-pair option (the predictor API and CLI), and the candidates that
evaluation keeps once and cuts at every threshold of a sweep. A triple
needs a score above its threshold on both paths.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from glidre_jax.data.documents import Document
from glidre_jax.data.inputs import split_words
from glidre_jax.data.relations import RelationSchema

# {label: (allowed head types, allowed tail types)}; None: any type.
Constraints = Mapping[str, tuple[Collection[str] | None, Collection[str] | None]]


@dataclasses.dataclass(frozen=True)
class Decoder:
  """How scores become triples for one label set."""
  labels: tuple[str, ...]
  thresholds: np.ndarray  # float32 [K]: a triple needs score > thresholds[k]
  top_k: int | None = None  # at most this many labels per (head, tail)
  drop_self_pairs: bool = True
  type_index: Mapping[str, int] | None = None  # entity type -> column of head_ok/tail_ok
  head_ok: np.ndarray | None = None  # bool [K, T + 1]; the last column: any other type
  tail_ok: np.ndarray | None = None

  @property
  def min_threshold(self) -> float:
    return float(self.thresholds.min())

  def type_ids(self, types: Sequence[Sequence[str]], num_entities: int) -> np.ndarray | None:
    """int [B, E] type columns of each document's entities (padding: 'other')."""
    if self.type_index is None:
      return None
    other = len(self.type_index)
    out = np.full((len(types), num_entities), other, np.int64)
    for b, doc_types in enumerate(types):  # per document, host side
      out[b, :len(doc_types)] = [self.type_index.get(t, other) for t in doc_types]
    return out

  def keep(self, probs: np.ndarray, pair_mask: np.ndarray,
           type_ids: np.ndarray | None = None) -> np.ndarray:
    """bool [B, E, E, K]: the triples to report."""
    e = probs.shape[1]
    pairs = pair_mask.astype(bool)
    if self.drop_self_pairs:
      pairs = pairs & ~np.eye(e, dtype=bool)
    keep = pairs[..., None] & (probs > self.thresholds)
    if self.head_ok is not None and type_ids is not None:
      heads = np.moveaxis(self.head_ok[:, type_ids], 0, -1)  # [B, E, K]
      tails = np.moveaxis(self.tail_ok[:, type_ids], 0, -1)
      keep &= heads[:, :, None, :] & tails[:, None, :, :]
    if self.top_k is not None:
      order = np.argsort(-np.where(keep, probs, -1.0), axis=-1, kind="stable")
      rank = np.empty_like(order)
      np.put_along_axis(rank, order, np.arange(probs.shape[-1]), axis=-1)
      keep &= rank < self.top_k
    return keep

  def triples(self, probs: np.ndarray, pair_mask: np.ndarray,
              type_ids: np.ndarray | None = None) -> list[list[dict]]:
    """Per batch row, [{head, tail, label, score}] sorted by decreasing score."""
    b, h, t, k = np.nonzero(self.keep(probs, pair_mask, type_ids))
    score = probs[b, h, t, k]
    order = np.lexsort((-score, b))
    out = [[] for _ in range(probs.shape[0])]
    labels = self.labels
    # Python ints and floats in one pass each (a permissive threshold reports
    # tens of thousands of triples per document).
    with gc_paused():
      for row, head, tail, label, value in zip(*(x[order].tolist()
                                                 for x in (b, h, t, k, score))):
        out[row].append({"head": head, "tail": tail, "label": labels[label],
                         "score": round(value, 6)})
    return out


def check_labels(labels) -> tuple[str, ...]:
  """A non-empty sequence of distinct non-empty strings, as a tuple."""
  if isinstance(labels, str) or not isinstance(labels, Sequence):
    raise ValueError(f"labels must be a list of relation names, got {type(labels).__name__}")
  labels = tuple(labels)
  if not labels:
    raise ValueError("empty label list: give at least one relation name")
  seen = set()
  for i, name in enumerate(labels):
    if not isinstance(name, str) or not name.strip():
      raise ValueError(f"label {i} ({name!r}) is not a non-empty string")
    if name in seen:
      raise ValueError(f"label {name!r} is listed twice")
    seen.add(name)
  return labels


def make_decoder(labels: Sequence[str], threshold: float = 0.5, *,
                 label_thresholds: Mapping[str, float] | None = None,
                 top_k: int | None = None, drop_self_pairs: bool = True,
                 constraints: Constraints | None = None) -> Decoder:
  """A Decoder; names in `label_thresholds` / `constraints` must be labels."""
  labels = check_labels(labels)
  index = {name: k for k, name in enumerate(labels)}

  def known(name, what):
    if name not in index:
      raise ValueError(f"{what} names {name!r}, which is not one of the {len(labels)} labels")
    return index[name]

  thresholds = np.full(len(labels), float(threshold), np.float32)
  for name, value in (label_thresholds or {}).items():
    thresholds[known(name, "label_thresholds")] = float(value)
  if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
    raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
  if not constraints:
    return Decoder(labels, thresholds, top_k, drop_self_pairs)

  allowed = {}
  for name, spec in constraints.items():
    if not (isinstance(spec, (list, tuple)) and len(spec) == 2):
      raise ValueError(f"constraints[{name!r}] must be (head types, tail types), got {spec!r}")
    allowed[known(name, "constraints")] = [None if s is None else _type_set(s, name)
                                           for s in spec]
  types = sorted({t for spec in allowed.values() for s in spec if s for t in s})
  type_index = {t: i for i, t in enumerate(types)}
  # Unconstrained labels and None sides allow every type, 'other' included.
  head_ok = np.ones((len(labels), len(types) + 1), bool)
  tail_ok = np.ones_like(head_ok)
  for k, (heads, tails) in allowed.items():
    for table, side in ((head_ok, heads), (tail_ok, tails)):
      if side is not None:
        table[k] = False
        table[k, [type_index[t] for t in side]] = True
  return Decoder(labels, thresholds, top_k, drop_self_pairs, type_index, head_ok, tail_ok)


def _type_set(side, name: str) -> frozenset[str]:
  if isinstance(side, str):
    side = [side]
  if not all(isinstance(t, str) for t in side):
    raise ValueError(f"constraints[{name!r}]: entity types must be strings, got {side!r}")
  return frozenset(side)


# -- prediction records -----------------------------------------------------------


def entity_records(item, doc) -> list[dict]:
  """Per entity of `doc` (read from the input `item`): its id as given (an
  entity's "id" in raw-text inputs, else its index), and its first mention's
  text and [start, end) span — characters for raw-text inputs, document-level
  words otherwise."""
  raw = (item.get("entities") if isinstance(item, Mapping) and "vertexSet" not in item
         and "tokenized_text" not in item and isinstance(item.get("text"), str) else None)
  words = split_words(item["text"]) if raw is not None else None
  out = []
  for e, entity in enumerate(doc.entities):
    first = entity.mentions[0]
    given = raw[e] if raw is not None else None
    out.append({
        "id": given.get("id", e) if isinstance(given, Mapping) else e,
        "text": first.name,
        "span": ([words.starts[first.start], words.ends[first.end - 1]] if words
                 else [first.start, first.end]),
        "unit": "char" if words else "word"})
  return out


def attach_entities(triples: list[dict], entities: Sequence[dict]) -> list[dict]:
  """Adds head_id / tail_id, head_text / tail_text, head_span / tail_span and
  span_unit to each triple, in place."""
  ids = [e["id"] for e in entities]
  texts = [e["text"] for e in entities]
  spans = [e["span"] for e in entities]  # copied per triple below
  units = [e["unit"] for e in entities]
  with gc_paused():
    for triple in triples:
      h, t = triple["head"], triple["tail"]
      triple.update(head_id=ids[h], head_text=texts[h], head_span=list(spans[h]),
                    tail_id=ids[t], tail_text=texts[t], tail_span=list(spans[t]),
                    span_unit=units[h])
  return triples


@contextlib.contextmanager
def gc_paused():
  """Python's cyclic collector off while many small dicts and lists are made
  (none forms a cycle): it would otherwise rescan them again and again, most
  of the time of decoding a permissive threshold's triples."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


# -- evaluation candidates (glidre_jax.evaluate) ------------------------------

MIN_CANDIDATE_SCORE = 0.05  # scores below this never matter for any threshold


@dataclasses.dataclass
class Candidates:
  """Every (doc, head, tail, label) scored at least MIN_CANDIDATE_SCORE."""
  doc: np.ndarray
  head: np.ndarray
  tail: np.ndarray
  label: np.ndarray
  score: np.ndarray

  @classmethod
  def concatenate(cls, parts: Sequence[Candidates]) -> Candidates:
    fields = [f.name for f in dataclasses.fields(cls)]
    if not parts:
      return cls(*(np.zeros(0) for _ in fields))
    return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

  def above(self, threshold: float) -> Candidates:
    keep = self.score > threshold
    return Candidates(*(getattr(self, f.name)[keep] for f in dataclasses.fields(self)))


def candidates_of(probs: np.ndarray, feature: Mapping, doc_index: int, num_labels: int
                  ) -> Candidates:
  """The candidates of one document: its probabilities [E', E', K'] (padded)
  on its scored pairs of real entities, at least MIN_CANDIDATE_SCORE."""
  n = len(feature["entity_mask"])
  real = feature["entity_mask"].astype(bool)
  valid = feature["pair_mask"].astype(bool) & real[:, None] & real[None, :]
  p = probs[:n, :n, :num_labels] * valid[..., None]
  h, t, k = np.nonzero(p >= MIN_CANDIDATE_SCORE)
  return Candidates(np.full(len(h), doc_index), h, t, k, p[h, t, k])


def to_predictions(candidates: Candidates, docs: Sequence[Document],
                   schema: RelationSchema, threshold: float) -> list[dict]:
  """The official result format: [{title, h_idx, t_idx, r, score}]."""
  kept = candidates.above(threshold)
  return [{"title": docs[d].title, "h_idx": int(h), "t_idx": int(t),
           "r": schema.ids[k], "score": round(float(s), 6)}
          for d, h, t, k, s in zip(kept.doc, kept.head, kept.tail, kept.label, kept.score)]

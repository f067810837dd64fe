"""Open label sets: each training batch brings its own relation names.

In the paper's pre-training mode (and for custom data with many free-text
relation names) a document's labels are the names of its own relations. A
batch is scored against the union of its documents' names, so every other
document's names are in-batch negatives; the label count is padded up to a
small set of bucket sizes (one compilation per bucket), and the padding
slots can be filled with further negatives drawn from the training
vocabulary instead of being masked.

Everything here is a pure function of (documents, seed, batch number): every
process of a multi-host run builds the same label set for a global batch, and
a resumed run sees the same label sets again.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class OpenLabels:
  """How per-batch label sets are built.

  buckets: allowed label counts K (ascending); a batch uses the smallest that
    holds its positives.
  fill_negatives: fill the rest of the bucket with names drawn from the
    training vocabulary (otherwise those slots are padding, label_mask 0).
  seed: for the negative draws (mixed with the batch number).
  """
  buckets: tuple[int, ...] = (16, 32, 64)
  fill_negatives: bool = True
  seed: int = 0

  def __post_init__(self):
    sizes = tuple(sorted({int(k) for k in self.buckets}))
    if not sizes or sizes[0] <= 0:
      raise ValueError(f"OpenLabels.buckets needs positive label counts, got {self.buckets}")
    object.__setattr__(self, "buckets", sizes)

  def batch_names(self, positives: Iterable[str], vocabulary: Sequence[str], batch_number: int,
                  *, titles: Sequence[str] = ()) -> tuple[tuple[str, ...], int]:
    """(label names, K): the sorted positives, then drawn negatives; K >= len(names)."""
    names = sorted(set(positives))
    i = int(np.searchsorted(self.buckets, max(len(names), 1)))
    if i == len(self.buckets):
      raise ValueError(
          f"a batch has {len(names)} distinct relation names, more than the largest label "
          f"bucket {self.buckets[-1]} (data.label_buckets); documents: {list(titles)[:8]}. "
          "Add a larger bucket or lower the batch size.")
    k = self.buckets[i]
    if self.fill_negatives and len(names) < k:
      taken = set(names)
      pool = [n for n in vocabulary if n not in taken]
      rng = np.random.default_rng([self.seed, int(batch_number)])
      count = min(k - len(names), len(pool))
      names += [pool[j] for j in rng.choice(len(pool), count, replace=False)]
    return tuple(names), k


def document_label_names(relations: Iterable) -> tuple[str, ...]:
  """A document's own label order: its distinct relation names, sorted."""
  return tuple(sorted({r.label for r in relations}))


def remap_labels(feature: Mapping, label_index: Mapping[str, int], num_labels: int) -> dict:
  """A document featurized on its own names -> the batch's label columns.

  `feature["relations"]` rows name columns of `feature["label_names"]`; the
  result is a shallow copy whose rows name the batch's num_labels columns.
  """
  columns = np.asarray([label_index[name] for name in feature["label_names"]], np.int32)
  rel = feature["relations"].copy()
  rel[:, 2] = columns[rel[:, 2]]
  return {**feature, "relations": rel, "num_labels": num_labels}


def global_batch(order: Sequence[int], batch_number: int, global_batch_size: int) -> list[int]:
  """Document indices of global batch `batch_number` of a shared order (-1: padding)."""
  start = batch_number * global_batch_size
  return [int(order[i]) for i in range(start, min(start + global_batch_size, len(order)))]

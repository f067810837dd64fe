"""The entry points from documents to batches that every path uses (training,
evaluation, prediction): features of a document of any length (windowed
when it is longer than max_length, `data/windows.py`) and the plan that
groups features into padded batches."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data.documents import Document
from glidre_jax.data.windows import (NO_LIMIT, collate_windows, cut_into_windows, is_windowed,
                                     window_shape)


Collate = Callable[[Sequence[Mapping], Mapping[str, np.ndarray]], dict]


def featurize_long(doc: Document, tokenizer, label_index: Mapping[str, int], max_length: int,
                   stride: int, *, pair_filter=None) -> dict[str, np.ndarray]:
  """Single-pass features, or windowed ones (stride > 0) when the document is
  longer than max_length subwords, so that no word is truncated away. The
  document is tokenized once either way."""
  if not stride:
    return featurize_lib.featurize(doc, tokenizer, label_index, max_length,
                                   pair_filter=pair_filter)
  feat = featurize_lib.featurize(doc, tokenizer, label_index, NO_LIMIT, pair_filter=pair_filter)
  if len(feat["input_ids"]) <= max_length:
    return feat  # fits: exactly the single-pass features
  return cut_into_windows(feat, tokenizer, max_length, stride)


def batch_rows(num_docs: int, batch_size: int) -> int:
  """Rows of a batch of `num_docs` documents: batch_size, or for the one
  partial batch the next power of two (a single document is not padded to 8
  encoder rows; at most log2(batch_size) extra shapes compile)."""
  return min(batch_size, 1 << max(num_docs - 1, 0).bit_length())


def plan_batches(features: Sequence[Mapping], buckets: featurize_lib.Buckets, batch_size: int,
                 window: int) -> list[tuple[list[int], Collate]]:
  """(document indices, collate(features, label_batch)) per batch.

  Documents are grouped by size (few bucket shapes, little padding; the
  partial batch holds the smallest and has `batch_rows` rows); windowed
  documents batch apart from single-pass ones, and the entity bucket grows
  when a document needs a larger one.
  """
  windowed = [i for i, f in enumerate(features) if is_windowed(f)]
  single = [i for i, f in enumerate(features) if not is_windowed(f)]
  plan = []
  if single:
    grown = buckets.grown(
        entities=max(featurize_lib.feature_shape(features[i])[2] for i in single))
    collate = lambda docs, label_batch: featurize_lib.collate(docs, grown, label_batch,
                                                              batch_rows(len(docs), batch_size))
    # Sorted by bucket first: raw sizes ordered by subwords alone mix word
    # buckets in a batch (every document then pads to the larger one).
    by_bucket = lambda f: grown.pick(*featurize_lib.feature_shape(f),
                                     title=f.get("title", "<doc>")) + featurize_lib.feature_shape(f)
    plan += [(c, collate) for c in featurize_lib.size_sorted_batches(features, batch_size, single,
                                                                     by_bucket)]
  if windowed:
    collate = lambda docs, label_batch: collate_windows(docs, buckets, label_batch,
                                                        batch_rows(len(docs), batch_size), window)
    plan += [(c, collate) for c in featurize_lib.size_sorted_batches(
        features, batch_size, windowed, window_shape)]
  return plan

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
                                     window_bucket, window_shape)


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


def bucket_batches(indices: Sequence[int], batch_size: int, bucket: Callable[[int], tuple],
                   size: Callable[[int], tuple]) -> list[list[int]]:
  """Batches of documents of one bucket each, smallest bucket first; in a
  bucket, documents sorted by size in full batches of batch_size and the
  rest in batches of decreasing powers of two (7 at batch 8: 4, 2, 1).

  No document then runs at a larger shape than alone, and no batch holds
  padding rows: a batch of any size computes the same subword, word and
  entity slots per document as batch 1 (a batch straddling two buckets
  padded all its documents to the larger). The cost is up to log2(batch_size)
  more batch shapes per bucket.
  """
  keys = {i: bucket(i) for i in indices}
  groups: dict[tuple, list[int]] = {}
  for i in sorted(indices, key=lambda i: keys[i] + size(i)):
    groups.setdefault(keys[i], []).append(i)
  out = []
  for docs in groups.values():  # insertion order: smallest bucket first
    full = len(docs) - len(docs) % batch_size
    out += [docs[s:s + batch_size] for s in range(0, full, batch_size)]
    rest = docs[full:]
    while rest:
      n = 1 << (len(rest).bit_length() - 1)
      out.append(rest[:n])
      rest = rest[n:]
  return out


def plan_batches(features: Sequence[Mapping], buckets: featurize_lib.Buckets, batch_size: int,
                 window: int) -> list[tuple[list[int], Collate]]:
  """(document indices, collate(features, label_batch)) per batch.

  Documents batch with others of their own bucket only (`bucket_batches`);
  windowed documents batch apart from single-pass ones, and the entity
  bucket grows when a document needs a larger one.
  """
  windowed = [i for i, f in enumerate(features) if is_windowed(f)]
  single = [i for i, f in enumerate(features) if not is_windowed(f)]
  plan = []
  if single:
    grown = buckets.grown(
        entities=max(featurize_lib.feature_shape(features[i])[2] for i in single))
    collate = lambda docs, label_batch: featurize_lib.collate(docs, grown, label_batch, len(docs))
    bucket = lambda i: grown.pick(*featurize_lib.feature_shape(features[i]),
                                  title=features[i].get("title", "<doc>"))
    plan += [(c, collate) for c in bucket_batches(
        single, batch_size, bucket, lambda i: featurize_lib.feature_shape(features[i]))]
  if windowed:
    collate = lambda docs, label_batch: collate_windows(docs, buckets, label_batch, len(docs),
                                                        window)
    plan += [(c, collate) for c in bucket_batches(
        windowed, batch_size, lambda i: window_bucket(window_shape(features[i]), buckets),
        lambda i: window_shape(features[i]))]
  return plan

"""grain input pipeline: documents -> featurized, bucket-padded numpy batches.

The dataset is built over document *indices* so every random choice is a pure
function of seeds: the few-shot subset is fixed once (same documents every
epoch), each process takes its own shard of it, and training shuffles with a
fresh permutation per epoch (grain reseeds `shuffle` under `repeat`). Batches
are padded to the bucket of their largest member — in training, the largest
member of the whole *global* batch, so every process builds the same shapes —
and at most `buckets.num_combinations` (L, W, E) batch shapes exist, each
with the pair counts of `buckets.pairs`. Iterators are grain
`DatasetIterator`s: `get_state()` / `set_state()` resume exactly.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from glidre_jax.data import batch as batch_lib
from glidre_jax.data import open_labels as open_labels_lib
from glidre_jax.data import pairs as pairs_lib
from glidre_jax.data import batching, windows
from glidre_jax.data.documents import Document
from glidre_jax.data.featurize import (Buckets, PairFilter, batch_stats, collate, feature_shape,
                                       featurize, label_batch)

log = logging.getLogger(__name__)


def subset_indices(num_docs: int, subset_size: int | None, subset_seed: int = 0) -> np.ndarray:
  """Sorted indices of a seeded random subset (all documents when size is None).

  Subsets of one seed are nested: the first N of one permutation, so the
  5-document subset lies inside the 10-document one.
  """
  if subset_size is None:
    return np.arange(num_docs, dtype=np.int64)
  if not 0 < subset_size <= num_docs:
    raise ValueError(f"subset_size must be in [1, {num_docs}], got {subset_size}")
  perm = np.random.default_rng(subset_seed).permutation(num_docs)
  return np.sort(perm[:subset_size])


def shard_indices(indices: np.ndarray, shard_index: int, num_shards: int) -> np.ndarray:
  """This process's share, padded with -1 (padding documents) to equal length.

  Every process then yields the same number of batches, which collective
  ops across hosts need.
  """
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} outside [0, {num_shards})")
  per_shard = -(-len(indices) // num_shards)
  mine = indices[shard_index::num_shards]
  return np.concatenate([mine, np.full(per_shard - len(mine), -1, np.int64)])


def _process_shard(shard_index: int | None, num_shards: int | None) -> tuple[int, int]:
  if shard_index is None or num_shards is None:
    import jax  # only when the caller leaves sharding to the JAX runtime
    shard_index = jax.process_index() if shard_index is None else shard_index
    num_shards = jax.process_count() if num_shards is None else num_shards
  return shard_index, num_shards


class EpochOrder(Sequence):
  """The training order of document indices, epoch after epoch, lazily.

  Each epoch is a fresh seeded permutation. With `window` > 1, every run of
  window × batch_size documents is sorted by size and cut into batches whose
  order is then shuffled again: batches keep their randomness but hold
  documents of similar length, so they pad to smaller buckets.
  """

  def __init__(self, indices: np.ndarray, sizes: Mapping[int, int] | None, batch_size: int,
               window: int, seed: int, num_epochs: int | None):
    self.indices, self.sizes = np.asarray(indices), sizes
    self.batch_size, self.window, self.seed = batch_size, window, seed
    self.num_epochs = num_epochs
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    # "Forever" is a length no run reaches; grain needs a finite one.
    return len(self.indices) * (self.num_epochs or 10**9)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    epoch, pos = divmod(int(i), len(self.indices))
    return int(self._epoch(epoch)[pos])

  def _epoch(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) > 2:
        self._cache.clear()
      rng = np.random.default_rng([self.seed, epoch])
      order = rng.permutation(self.indices)
      if self.window > 1 and self.sizes is not None:
        span = self.window * self.batch_size
        parts = []
        for start in range(0, len(order), span):
          chunk = sorted(order[start:start + span], key=lambda i: self.sizes.get(int(i), 0))
          batches = [chunk[k:k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
          parts.extend(b for k in rng.permutation(len(batches)) for b in [batches[k]])
        order = np.asarray([i for b in parts for i in b])
      self._cache[epoch] = order
    return self._cache[epoch]


class ProcessSlice(Sequence):
  """This process's documents of each *global* batch of a shared order.

  Every process computes the same global order; process p takes rows
  [p·b, (p+1)·b) of each global batch of b × num_processes documents. The
  global batches are then the same whatever the number of processes.
  """

  def __init__(self, order: Sequence[int], batch_size: int, shard: int, shards: int):
    self.order, self.batch_size, self.shard, self.shards = order, batch_size, shard, shards

  def __len__(self) -> int:
    return len(self.order) // self.shards

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    batch, row = divmod(int(i), self.batch_size)
    return self.order[(batch * self.shards + self.shard) * self.batch_size + row]


def _planned_shape(feat: Mapping, buckets: Buckets) -> tuple[bool, tuple[int, int, int], int]:
  """(windowed?, (subwords or windows, words, entities), pairs) of one
  document's features; a single-pass document too large for every bucket
  fails here, before training starts, naming it."""
  if windows.is_windowed(feat):
    return True, windows.window_shape(feat), pairs_lib.num_pairs(feat)
  shape = feature_shape(feat)
  buckets.pick(*shape, title=feat["title"])
  return False, shape, pairs_lib.num_pairs(feat)


def build_dataset(source: Sequence[Any], *, tokenizer, label_names: Sequence[str],
                  label_tokenizer=None, sort_window: int = 0,
                  batch_size: int, buckets: Buckets = Buckets(), max_length: int = 512,
                  label_max_length: int = 16, num_labels: int | None = None,
                  decode: Callable[[Any], Document] | None = None, train: bool = False,
                  seed: int = 0, num_epochs: int | None = None,
                  subset_size: int | None = None, subset_seed: int = 0,
                  pair_filter: PairFilter | None = None,
                  shard_index: int | None = None, num_shards: int | None = None,
                  open_labels: open_labels_lib.OpenLabels | None = None,
                  window_stride: int = 0, pair_shards: int = 1) -> grain.MapDataset:
  """MapDataset of padded batches (dicts of batch.py fields plus "meta").

  source: random-access records (a TFDS/grain data source, decoded by
    `decode`) or a list of `Document`s (decode=None).
  batch_size: documents per batch on *this process*.
  label_tokenizer: tokenizer of the label encoder (default: `tokenizer`).
  sort_window: training batches per window sorted by document length (see
    EpochOrder); 0 or 1 keeps a plain shuffle.
  train: shuffle with `seed`, reshuffled every epoch; `num_epochs` None
    repeats forever. Evaluation reads each document once, in order.
  subset_size / subset_seed: a fixed random subset of the documents (few-shot).
  shard_index / num_shards: default to jax.process_index() / process_count().
    Training batches are slices of global batches (see ProcessSlice), so a
    run sees the same data on any number of processes.
  open_labels: per-batch label sets (training only): each global batch is
    scored on its documents' own relation names plus negatives, K padded to
    open_labels.buckets; `label_names` is then the vocabulary negatives are
    drawn from. None: every batch uses all of `label_names`.
  window_stride: >0 encodes documents over max_length subwords in windows of
    max_length starting every window_stride subwords (`data.windows`); a
    batch holding one is collated in windows ([B, N, max_length] input_ids).
  pair_shards: groups of batch_size / pair_shards documents whose pairs are
    packed apart (`data.pairs`): the mesh's data-axis devices of this process.
  "meta" holds doc_index [B] (position in `source`, -1 for padding), titles,
  the label_names of the label columns and the summed truncation counters of featurize.STAT_KEYS.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if not train and num_epochs not in (None, 1):
    raise ValueError("num_epochs only applies to training (train=True)")
  if open_labels is not None and not train:
    raise ValueError("open_labels builds training batches; evaluate on a fixed label set")
  shard, shards = _process_shard(shard_index, num_shards)
  pairs_lib.check_shards(batch_size, pair_shards)
  subset = subset_indices(len(source), subset_size, subset_seed)
  label_index = {name: k for k, name in enumerate(label_names)}
  if len(label_index) != len(label_names):
    raise ValueError("label_names has duplicates")
  label_tokenizer = label_tokenizer or tokenizer
  fixed_labels = None if open_labels else label_batch(
      label_tokenizer, list(label_names), max_length=label_max_length, num_labels=num_labels)
  read = (lambda i: source[i]) if decode is None else (lambda i: decode(source[i]))
  warned: set[int] = set()  # documents whose truncation was reported

  def featurize_doc(index: int, doc: Document) -> tuple[dict, tuple[str, ...] | None]:
    """A document's features and its own label names (open labels; else None)."""
    own = open_labels_lib.document_label_names(doc.relations) if open_labels else None
    columns = label_index if own is None else {name: k for k, name in enumerate(own)}
    if window_stride:
      feat = batching.featurize_long(doc, tokenizer, columns, max_length, window_stride,
                                    pair_filter=pair_filter)
    else:
      feat = featurize(doc, tokenizer, columns, max_length, pair_filter=pair_filter)
    if feat["dropped_entities"] and index not in warned:  # once per document, not per epoch
      warned.add(index)
      log.warning("document %r: %d entities lost every mention to truncation at %d subwords",
                  doc.title, feat["dropped_entities"], max_length)
    return feat, own

  def load(position_and_index) -> dict | None:
    batch_number, index = position_and_index
    index = int(index)
    if index < 0:
      return None  # shard padding
    feat, own = featurize_doc(index, read(index))
    feat.update(doc_index=index, batch_number=batch_number, label_names=own)
    return feat

  def global_need(batch_number: int) -> tuple[bool, tuple[int, int, int, int]]:
    """(windowed?, sizes to hold) of a whole global batch, from the pre-pass's
    per-document shapes: the same answer on every process, whichever rows it
    collates, so all processes build arrays of one shape. The pair need is
    that of the fullest pair shard of the global batch."""
    docs = open_labels_lib.global_batch(order, batch_number, batch_size * shards)
    plans = [shapes[i] for i in docs]
    windowed = any(w for w, _, _ in plans)
    # A single-pass document in a windowed batch is one window (windows.as_windowed).
    dims = [(1,) + d[1:] if windowed and not w else d for w, d, _ in plans]
    pair_need = pairs_lib.shard_need([p for _, _, p in plans], batch_size * shards,
                                     pair_shards * shards)
    return windowed, tuple(int(n) for n in np.max(dims, axis=0)) + (pair_need,)

  def open_label_batch(features: Sequence[dict | None]) -> tuple[list, tuple, dict]:
    """The batch's features remapped to its label set, the names, and the label side."""
    batch_number = next(f["batch_number"] for f in features if f is not None)
    docs = open_labels_lib.global_batch(order, batch_number, batch_size * shards)
    names, k = open_labels.batch_names(
        (n for i in docs for n in doc_labels[i]), label_names, batch_number,
        titles=[f["title"] for f in features if f is not None])
    index = {name: j for j, name in enumerate(names)}
    features = [None if f is None else open_labels_lib.remap_labels(f, index, k)
                for f in features]
    return features, names, label_batch(label_tokenizer, list(names), max_length=label_max_length,
                                        num_labels=k, fit_length=False)

  def to_batch(features: Sequence[dict | None]) -> dict:
    names, labels = tuple(label_names), fixed_labels
    if open_labels:
      features, names, labels = open_label_batch(features)
    if train:  # the bucket of the global batch, not of this process's rows
      windowed, need = global_need(next(f["batch_number"] for f in features if f is not None))
    else:  # evaluation batches are this process's own
      windowed, need = any(f is not None and windows.is_windowed(f) for f in features), None
    if windowed:
      out = windows.collate_windows(features, buckets, labels, batch_size, max_length, need=need,
                                    pair_shards=pair_shards)
    else:
      out = collate(features, buckets, labels, batch_size, need=need, pair_shards=pair_shards)
    doc_index = np.full(batch_size, -1, np.int32)
    doc_index[:len(features)] = [-1 if f is None else f["doc_index"] for f in features]
    titles = tuple("" if f is None else f["title"] for f in features)
    out["meta"] = {"doc_index": doc_index, "titles": titles + ("",) * (batch_size - len(titles)),
                   "label_names": names, **batch_stats(features)}
    return out

  if train:
    # One pass over the training documents, none kept in memory: their
    # lengths (sorting), relation names (open labels) and feature shapes
    # (the bucket of every global batch, see global_need).
    sizes, doc_labels, shapes = {}, {}, {}
    for i in map(int, subset):
      doc = read(i)
      sizes[i] = doc.num_words
      doc_labels[i] = open_labels_lib.document_label_names(doc.relations)
      shapes[i] = _planned_shape(featurize_doc(i, doc)[0], buckets)
    order = EpochOrder(subset, sizes if sort_window > 1 else None, batch_size * shards,
                       sort_window, seed, num_epochs)
    positions = ProcessSlice(order, batch_size, shard, shards)
  else:
    positions = shard_indices(subset, shard, shards).tolist()
  # Each element carries its batch number: open label sets are per global batch.
  ds = grain.MapDataset.source(positions).map_with_index(
      lambda i, index: (i // batch_size, index))
  return ds.map(load).batch(batch_size, batch_fn=to_batch)


def make_iterator(dataset: grain.MapDataset, *, num_threads: int = 4, prefetch: int = 8
                  ) -> grain.DatasetIterator:
  """Threaded, checkpointable iterator (`get_state()` / `set_state(state)`)."""
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(dataset.to_iter_dataset(options))


def to_device(batch: Mapping[str, Any], sharding, label_sharding=None) -> dict:
  """A process-local numpy batch -> global jax.Arrays.

  Document fields are split along the batch axis by `sharding` (each process
  contributes its own documents: the global batch is the processes' batches
  stacked); label fields are identical on every process and replicated.
  Host-only entries ("meta") are left out.
  """
  import jax  # data/ stays importable without touching devices

  if label_sharding is None:
    label_sharding = _replicated(sharding)
  out = {name: jax.make_array_from_process_local_data(sharding, np.asarray(batch[name]))
         for name in batch_lib.DOC_FIELDS + batch_lib.WINDOW_FIELDS if name in batch}
  for name in batch_lib.LABEL_FIELDS:
    arr = np.asarray(batch[name])
    out[name] = jax.make_array_from_process_local_data(label_sharding, arr, arr.shape)
  return out


def _replicated(sharding):
  import jax

  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  if isinstance(sharding, jax.sharding.SingleDeviceSharding):
    return sharding
  raise ValueError(f"cannot derive a replicated sharding from {sharding!r}; pass label_sharding")

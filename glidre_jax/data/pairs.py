"""The packed (document, head, tail) pairs of a batch.

The model scores only real candidate pairs: every batch carries a flat list
of them per data-parallel shard, padded to a bucketed length P (not to
B × E_bucket²). Shard s of S holds the pairs of its own B/S consecutive
documents, with shard-local document indices, so the 'data' split of the
batch axis keeps every gather local. Pairs come document by document, each
document's in row-major (head, tail) order; padding pairs follow with
pair_mask 0 and index (0, 0, 0).

`pick` takes a batch's bucket; `glidre_jax.data.pair_buckets` chooses the
bucket sizes from a training split's data so that padding stays small.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Bucket sizes are multiples of this (SIMD/GEMM-friendly shapes).
PAIR_ALIGN = 8


def doc_pairs(feat: Mapping) -> tuple[np.ndarray, np.ndarray]:
  """(heads, tails) of one document's candidate pairs (its features'
  pair_mask, which already excludes lost entities), row-major."""
  heads, tails = np.nonzero(feat["pair_mask"])
  return heads.astype(np.int32), tails.astype(np.int32)


def num_pairs(feat: Mapping) -> int:
  return int(np.count_nonzero(feat["pair_mask"]))


def check_shards(batch_size: int, shards: int) -> int:
  """Documents per pair shard."""
  if shards < 1 or batch_size % shards:
    raise ValueError(f"batch_size {batch_size} is not a multiple of the {shards} pair shards "
                     "(the mesh's data-axis size per process)")
  return batch_size // shards


def shard_need(counts: Sequence[int], batch_size: int, shards: int) -> int:
  """The most pairs one shard holds: `counts` are the batch's documents'
  pair counts in row order (missing rows count 0)."""
  per = check_shards(batch_size, shards)
  counts = np.zeros(batch_size, np.int64) if not len(counts) else np.pad(
      np.asarray(counts, np.int64), (0, batch_size - len(counts)))
  return int(counts.reshape(shards, per).sum(1).max())


def pick(buckets: Sequence[int], need: int) -> int:
  """Smallest bucket holding `need` pairs; past the largest, the next
  multiple of the largest (rare, deterministic: every process agrees)."""
  sizes = sorted(buckets)
  for size in sizes:
    if size >= need:
      return size
  return -(-need // sizes[-1]) * sizes[-1]


def pack(out: dict, features: Sequence[Mapping | None], shards: int, num_pairs_: int) -> None:
  """Fills out's pair fields ([S, P] pair_doc/head/tail/mask, [S, P, K]
  pair_labels) from the documents of rows 0..len(features)-1."""
  per = check_shards(out["doc_mask"].shape[0], shards)
  fill = np.zeros(shards, np.int64)
  for row, f in enumerate(features):  # per document, host side
    if f is None:
      continue
    s, local = divmod(row, per)
    heads, tails = doc_pairs(f)
    start, n = int(fill[s]), len(heads)
    if start + n > num_pairs_:
      raise ValueError(f"document {f['title']!r}: shard {s} needs more than {num_pairs_} pairs")
    cut = slice(start, start + n)
    out["pair_doc"][s, cut] = local
    out["pair_head"][s, cut], out["pair_tail"][s, cut] = heads, tails
    out["pair_mask"][s, cut] = 1
    # Each gold fact to its pair's slot (facts on a masked pair have none).
    slot = np.full(f["pair_mask"].shape, -1, np.int64)
    slot[heads, tails] = np.arange(start, start + n)
    rel = f["relations"]
    at = slot[rel[:, 0], rel[:, 1]]
    out["pair_labels"][s, at[at >= 0], rel[at >= 0, 2]] = 1
    fill[s] += n


def from_dense(pair_mask: np.ndarray, labels: np.ndarray | None = None, *, shards: int = 1,
               num_pairs_: int | None = None) -> dict[str, np.ndarray]:
  """The pair fields of a batch given dense [B, E, E] candidate pairs (and
  [B, E, E, K] labels), e.g. for synthetic batches; P defaults to the
  fullest shard's pairs rounded up to PAIR_ALIGN."""
  pair_mask = np.asarray(pair_mask)
  b = len(pair_mask)
  labels = np.zeros(pair_mask.shape + (1,), np.int32) if labels is None else np.asarray(labels)
  rows = [{"pair_mask": m, "relations": np.argwhere(y), "num_labels": y.shape[-1],
           "title": f"<row {i}>"} for i, (m, y) in enumerate(zip(pair_mask, labels))]
  if num_pairs_ is None:
    need = shard_need([num_pairs(r) for r in rows], b, shards)
    num_pairs_ = max(-(-need // PAIR_ALIGN) * PAIR_ALIGN, PAIR_ALIGN)
  out = {"doc_mask": np.zeros(b, np.int32),
         "pair_labels": np.zeros((shards, num_pairs_, labels.shape[-1]), np.int32),
         **{name: np.zeros((shards, num_pairs_), np.int32)
            for name in ("pair_doc", "pair_head", "pair_tail", "pair_mask")}}
  pack(out, rows, shards, num_pairs_)
  del out["doc_mask"]
  return out


def dense_index(batch: Mapping) -> tuple[np.ndarray, ...]:
  """(documents, heads, tails) of the real packed pairs, batch-global rows,
  and the mask selecting them from the [S, P] fields."""
  b = np.shape(batch["entity_mask"])[0]
  s = np.shape(batch["pair_mask"])[0]
  real = np.asarray(batch["pair_mask"]) > 0
  docs = (np.asarray(batch["pair_doc"]) + (np.arange(s) * (b // s))[:, None])[real]
  return docs, np.asarray(batch["pair_head"])[real], np.asarray(batch["pair_tail"])[real], real


def dense_pair_mask(batch: Mapping) -> np.ndarray:
  """bool [B, E, E]: the batch's scored pairs, on the host."""
  docs, heads, tails, _ = dense_index(batch)
  out = np.zeros(np.shape(batch["entity_mask"]) + (np.shape(batch["entity_mask"])[1],), bool)
  out[docs, heads, tails] = True
  return out


def dense(values: np.ndarray, batch: Mapping) -> np.ndarray:
  """Packed values [S, P, ...] -> [B, E, E, ...] on the host (0 off the pairs;
  `model.glidre.dense` is the same scatter on device)."""
  docs, heads, tails, real = dense_index(batch)
  values = np.asarray(values)
  b, e = np.shape(batch["entity_mask"])
  out = np.zeros((b, e, e) + values.shape[2:], values.dtype)
  out[docs, heads, tails] = values[real]
  return out

"""The packed (document, head, tail) pairs of a batch, and pair-count buckets.

The model scores only real candidate pairs: every batch carries a flat list
of them per data-parallel shard, padded to a bucketed length P (not to
B × E_bucket²). Shard s of S holds the pairs of its own B/S consecutive
documents, with shard-local document indices, so the 'data' split of the
batch axis keeps every gather local. Pairs come document by document, each
document's in row-major (head, tail) order; padding pairs follow with
pair_mask 0 and index (0, 0, 0).

`choose_pair_buckets` picks the bucket sizes from a training split's pair
counts so that padding stays small (`python -m glidre_jax.data.pairs`).
"""
from __future__ import annotations

import argparse
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
    out["pair_labels"][s, cut, :f["labels"].shape[-1]] = f["labels"][heads, tails]
    fill[s] += n


def from_dense(pair_mask: np.ndarray, labels: np.ndarray | None = None, *, shards: int = 1,
               num_pairs_: int | None = None) -> dict[str, np.ndarray]:
  """The pair fields of a batch given dense [B, E, E] candidate pairs (and
  [B, E, E, K] labels), e.g. for synthetic batches; P defaults to the
  fullest shard's pairs rounded up to PAIR_ALIGN."""
  pair_mask = np.asarray(pair_mask)
  b = len(pair_mask)
  labels = np.zeros(pair_mask.shape + (1,), np.int32) if labels is None else np.asarray(labels)
  rows = [{"pair_mask": m, "labels": y, "title": f"<row {i}>"}
          for i, (m, y) in enumerate(zip(pair_mask, labels))]
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


# -- bucket sizes from data ----------------------------------------------------


def batch_totals(counts: Sequence[int], batches: Sequence[Sequence[int]]) -> np.ndarray:
  """Pair totals of `batches` (lists of document indices into `counts`)."""
  counts = np.asarray(counts, np.int64)
  return np.asarray([int(counts[list(b)].sum()) for b in batches], np.int64)


def padding_ratio(totals: Sequence[int], buckets: Sequence[int]) -> float:
  """Padded pairs scored / real pairs."""
  totals = np.asarray(totals, np.int64)
  return float(sum(pick(buckets, int(t)) for t in totals) / max(totals.sum(), 1))


def choose_pair_buckets(groups: Sequence[Sequence[int]], max_padding: float = 0.15,
                        align: int = PAIR_ALIGN, max_buckets: int = 16) -> tuple[int, ...]:
  """The fewest bucket sizes (multiples of `align`) that keep the padding
  ratio of every group of batch pair totals (e.g. one group per batch size)
  at most 1 + max_padding; for each count of buckets, dynamic programming
  picks the sizes minimising the sum of the groups' ratios."""
  groups = [np.asarray([t for t in g if t > 0], np.int64) for g in groups]
  groups = [g for g in groups if len(g)]
  if not groups:
    raise ValueError("no batch holds a pair: cannot choose pair buckets")
  aligned = [-(-g // align) * align for g in groups]
  sizes = np.unique(np.concatenate(aligned))  # candidate bucket sizes, ascending
  # Each total weighs 1 / its group's real pairs: a group's ratio is its sum.
  weight = np.zeros(len(sizes))
  for g, a in zip(groups, aligned):
    np.add.at(weight, np.searchsorted(sizes, a), 1.0 / g.sum())
  cum = np.concatenate([[0.0], np.cumsum(weight)])
  cost = lambda i, j: float(sizes[j] * (cum[j + 1] - cum[i]))  # sizes[i..j] -> sizes[j]
  n = len(sizes)
  best = [cost(0, j) for j in range(n)]  # one bucket covering sizes[0..j]
  choice = [[j] for j in range(n)]
  for _ in range(max_buckets - 1):
    buckets = tuple(int(sizes[j]) for j in choice[n - 1])
    if all(padding_ratio(g, buckets) <= 1 + max_padding for g in groups):
      break
    new, new_choice = list(best), [list(c) for c in choice]
    for j in range(n):
      for i in range(j):  # the last bucket covers sizes[i+1..j]
        c = best[i] + cost(i + 1, j)
        if c < new[j]:
          new[j], new_choice[j] = c, choice[i] + [j]
    best, choice = new, new_choice
  return tuple(int(sizes[j]) for j in choice[n - 1])


def choose_for_groups(groups: Sequence[Sequence[int]], max_padding: float = 0.15,
                      align: int = PAIR_ALIGN) -> tuple[int, ...]:
  """Buckets for several groups of batch totals (batch sizes): the union of
  each group's `choose_pair_buckets` (it only lowers each group's padding),
  then, while every group stays within 1 + max_padding, without the bucket
  whose removal costs least (near-duplicates from different groups)."""
  buckets = sorted({s for g in groups for s in choose_pair_buckets([g], max_padding, align)})
  worst = lambda b: max(padding_ratio(g, b) for g in groups)
  while len(buckets) > 1:
    # The largest bucket stays: it holds the largest batch.
    trials = [(worst(buckets[:i] + buckets[i + 1:]), i) for i in range(len(buckets) - 1)]
    ratio, i = min(trials)
    if ratio > 1 + max_padding:
      break
    del buckets[i]
  return tuple(buckets)


def training_batches(num_docs: int, sizes: Mapping[int, int], batch_size: int,
                     sort_window: int, seed: int, epochs: int) -> list[list[int]]:
  """The batches of `epochs` training epochs in the pipeline's order."""
  from glidre_jax.data import pipeline  # it imports this module
  order = pipeline.EpochOrder(np.arange(num_docs), sizes if sort_window > 1 else None,
                              batch_size, sort_window, seed, epochs)
  return [list(order[i:i + batch_size]) for e in range(epochs)
          for i in range(e * num_docs, (e + 1) * num_docs, batch_size)]


def main(argv=None) -> None:
  """Prints pair buckets for a config's training split and batch sizes."""
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--config", default="default")
  parser.add_argument("--batch_sizes", default="", help="comma-separated; default: the "
                      "config's batch_size, eval_batch_size and 1 (the predictor)")
  parser.add_argument("--max_padding", type=float, default=0.15)
  parser.add_argument("--epochs", type=int, default=4, help="training epochs simulated")
  parser.add_argument("--data_dir", default=None, help="sets data.data_dir")
  args = parser.parse_args(argv)
  from glidre_jax import shipped  # the training stack, only for the command
  from glidre_jax.data import registry
  config = shipped.get_config(args.config)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  data = registry.data_setup(config)
  feats = data.features(data.train_docs())
  counts = [num_pairs(f) for f in feats]
  sizes = {i: int(f["num_words"]) for i, f in enumerate(feats)}
  d = config.data
  batch_sizes = ([int(x) for x in args.batch_sizes.split(",")] if args.batch_sizes
                 else sorted({1, d.batch_size, d.eval_batch_size}))
  totals = {b: batch_totals(counts, training_batches(len(feats), sizes, b, d.sort_window,
                                                     d.shuffle_seed, args.epochs))
            for b in batch_sizes}
  buckets = choose_for_groups(list(totals.values()), args.max_padding)
  print(f"{len(counts)} training documents, {sum(counts)} pairs; batch sizes {batch_sizes}")
  for b, t in totals.items():
    print(f"  batch {b}: padding ratio {padding_ratio(t, buckets):.3f}")
  print(f"data.pair_buckets = {buckets}")


if __name__ == "__main__":
  main()

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
PAIR_ALIGN = 64


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


def dense_pair_mask(batch: Mapping) -> np.ndarray:
  """bool [B, E, E]: the batch's scored pairs, on the host."""
  b, e = np.shape(batch["entity_mask"])
  s = np.shape(batch["pair_mask"])[0]
  real = np.asarray(batch["pair_mask"]) > 0
  docs = (np.asarray(batch["pair_doc"]) + (np.arange(s) * (b // s))[:, None])[real]
  out = np.zeros((b, e, e), bool)
  out[docs, np.asarray(batch["pair_head"])[real], np.asarray(batch["pair_tail"])[real]] = True
  return out


def dense(values: np.ndarray, batch: Mapping) -> np.ndarray:
  """Packed values [S, P, ...] -> [B, E, E, ...] on the host (0 off the pairs)."""
  b, e = np.shape(batch["entity_mask"])
  s = np.shape(batch["pair_mask"])[0]
  real = np.asarray(batch["pair_mask"]) > 0
  docs = (np.asarray(batch["pair_doc"]) + (np.arange(s) * (b // s))[:, None])[real]
  values = np.asarray(values)
  out = np.zeros((b, e, e) + values.shape[2:], values.dtype)
  out[docs, np.asarray(batch["pair_head"])[real], np.asarray(batch["pair_tail"])[real]] = (
      values[real])
  return out


# -- bucket sizes from data ----------------------------------------------------


def batch_totals(counts: Sequence[int], batch_size: int, seed: int = 0,
                 epochs: int = 4, sort_window: int = 0) -> np.ndarray:
  """Pair totals of the batches of `epochs` shuffled epochs (every
  `sort_window` batches sorted by length, as `pipeline.EpochOrder` does
  with pair counts standing in for lengths; 0: plain shuffle)."""
  counts = np.asarray(counts, np.int64)
  rng = np.random.default_rng(seed)
  totals = []
  for _ in range(epochs):
    order = rng.permutation(len(counts))
    if sort_window > 1:
      span = sort_window * batch_size
      order = np.concatenate([sorted(order[i:i + span], key=lambda j: counts[j])
                              for i in range(0, len(order), span)])
    totals += [int(counts[order[i:i + batch_size]].sum())
               for i in range(0, len(order), batch_size)]
  return np.asarray(totals, np.int64)


def padding_ratio(totals: Sequence[int], buckets: Sequence[int]) -> float:
  """Padded pairs scored / real pairs."""
  totals = np.asarray(totals, np.int64)
  return float(sum(pick(buckets, int(t)) for t in totals) / max(totals.sum(), 1))


def choose_pair_buckets(totals: Sequence[int], max_padding: float = 0.15,
                        align: int = PAIR_ALIGN, max_buckets: int = 12) -> tuple[int, ...]:
  """The fewest bucket sizes (multiples of `align`) whose padding ratio over
  the batch pair totals `totals` is at most 1 + max_padding, each chosen by
  dynamic programming to minimise the padding (ties: fewer compilations
  matter more than the last percent)."""
  totals = np.sort(np.asarray([t for t in totals if t > 0], np.int64))
  if not len(totals):
    raise ValueError("no batch holds a pair: cannot choose pair buckets")
  sizes = np.unique(-(-totals // align) * align)  # candidate bucket sizes
  weight = np.asarray([np.count_nonzero(-(-totals // align) * align == s) for s in sizes])
  real = float(totals.sum())
  n = len(sizes)
  # cost[i][j]: padded total of the groups sizes[i..j] all padded to sizes[j]
  cum = np.concatenate([[0], np.cumsum(weight)])
  group = lambda i, j: float(sizes[j] * (cum[j + 1] - cum[i]))
  best = [group(0, j) for j in range(n)]  # one bucket covering 0..j
  choice = [[j] for j in range(n)]
  for k in range(1, max_buckets + 1):
    if best[n - 1] / real <= 1 + max_padding or k == max_buckets:
      return tuple(int(sizes[j]) for j in choice[n - 1])
    new, new_choice = list(best), [list(c) for c in choice]
    for j in range(n):
      for i in range(j):  # the last bucket covers i+1..j
        cost = best[i] + group(i + 1, j)
        if cost < new[j]:
          new[j], new_choice[j] = cost, choice[i] + [j]
    best, choice = new, new_choice
  return tuple(int(sizes[j]) for j in choice[n - 1])


def main(argv=None) -> None:
  """Prints pair buckets for a config's training split and batch sizes."""
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--batch_sizes", default="", help="comma-separated; default: the "
                      "config's batch_size, eval_batch_size and 1 (the predictor)")
  parser.add_argument("--max_padding", type=float, default=0.15)
  args = parser.parse_args(argv)
  from glidre_jax import shipped  # the training stack, only for the command
  from glidre_jax.data import registry
  config = shipped.get_config(args.config)
  data = registry.data_setup(config)
  counts = [num_pairs(f) for f in data.features(data.train_docs())]
  d = config.data
  sizes = ([int(x) for x in args.batch_sizes.split(",")] if args.batch_sizes
           else sorted({1, d.batch_size, d.eval_batch_size}))
  totals = np.concatenate([batch_totals(counts, b, d.shuffle_seed, sort_window=d.sort_window)
                           for b in sizes])
  buckets = choose_pair_buckets(totals, args.max_padding)
  print(f"{len(counts)} training documents, {sum(counts)} pairs; batch sizes {sizes}")
  for b in sizes:
    t = batch_totals(counts, b, d.shuffle_seed, sort_window=d.sort_window)
    print(f"  batch {b}: padding ratio {padding_ratio(t, buckets):.3f}")
  print(f"data.pair_buckets = {buckets}")


if __name__ == "__main__":
  main()

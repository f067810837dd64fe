"""Pair-count buckets chosen from a training split's data.

The packed pair list of a batch (`glidre_jax.data.pairs`) is padded to the
smallest bucket that holds it; these helpers simulate the training order's
batches and pick the fewest bucket sizes that keep the padding ratio (pairs
scored / real pairs) under a bound. `python -m glidre_jax.data.pair_buckets
--config=NAME` prints them for a config's `data.pair_buckets`.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

import numpy as np

from glidre_jax import shipped
from glidre_jax.data import pipeline, registry
from glidre_jax.data.pairs import PAIR_ALIGN, num_pairs, pick


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

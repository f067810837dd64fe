"""Label batches split by name length: the label encoder runs the short names
at a short width and only the few long ones at the full width.

Re-DocRED's 96 relation names take 3 to 10 MiniLM subwords (71 of them at
most 4): [96, 10] holds 960 token slots for 396 real subwords, while [96, 5]
plus the 11 longer names at [11, 10] hold 590. The label encoder's states do
not depend on the padding (attention masks it), so the split changes no
label vector beyond float rounding. Layout: batch.py's label side.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MIN_SAVING = 0.2  # split only when it removes at least this share of the token slots


def split_by_length(ids: np.ndarray, mask: np.ndarray, label_mask: np.ndarray, *,
                    split: bool = True) -> dict[str, np.ndarray]:
  """The label fields of batch.py from names padded to [K, max_length]: with
  `split`, T is first cut to the longest name, then the best short width T_s
  (every row keeps its first T_s tokens; the rows of longer names come again
  whole in the label_long_* fields), when one saves MIN_SAVING of the K·T
  slots; otherwise no long rows (G = 0)."""
  lengths = mask.sum(1)
  width = ids.shape[1]
  if split:
    longest = int(lengths.max(initial=1))
    ids, mask = ids[:, :longest], mask[:, :longest]
    k, t = ids.shape
    cost = {w: k * w + int((lengths > w).sum()) * t for w in range(1, t)}
    best = min(cost, key=cost.get, default=t)
    width = best if best < t and cost[best] <= (1 - MIN_SAVING) * k * t else t
  rows = np.flatnonzero(lengths > width).astype(np.int32)
  return {"label_input_ids": ids[:, :width], "label_attention_mask": mask[:, :width],
          "label_mask": label_mask, "label_long_rows": rows, "label_long_input_ids": ids[rows],
          "label_long_attention_mask": mask[rows]}


def joined(labels: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(ids, attention mask) [K, T] of every whole name: `split_by_length` undone
  (for code that wants one padded label batch, e.g. the torch oracle)."""
  ids, mask = np.asarray(labels["label_input_ids"]), np.asarray(labels["label_attention_mask"])
  long_ids = np.asarray(labels["label_long_input_ids"])
  if not len(long_ids):
    return ids, mask
  t = long_ids.shape[1]
  ids = np.pad(ids, ((0, 0), (0, t - ids.shape[1])))
  mask = np.pad(mask, ((0, 0), (0, t - mask.shape[1])))
  rows = np.asarray(labels["label_long_rows"])
  ids[rows], mask[rows] = long_ids, np.asarray(labels["label_long_attention_mask"])
  return ids, mask


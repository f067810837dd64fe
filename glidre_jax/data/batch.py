"""The padded numpy batch that the data pipeline produces and the model eats.

All shapes are static per shape bucket (B documents, L subwords, W words,
E entities, K labels, T label subwords, S pair shards, P pairs per shard).
Everything ragged has been turned into index tables and masks on the host,
once.

Document side (per batch):
  input_ids            int32   [B, L]     subword ids of the document
  attention_mask       int32   [B, L]     1 for real subwords
  word_index           int32   [B, W]     subword position of each word's first subword (0 on padding)
  word_mask            int32   [B, W]     1 for real (kept) words
  entity_word_weights  float32 [B, E, W]  how many times word w lies inside a mention of entity e
                                          (token-weighted pooling: a 3-word mention counts 3 words)
  entity_mask          int32   [B, E]     1 for real entities with at least one kept word
  doc_mask             int32   [B]        1 for real documents (0 for padding documents)

Packed pairs (data/pairs.py): only the real candidate pairs are scored. Shard s
of S (the mesh's data-axis size on this process; 1 on one device) packs the
pairs of documents [s·B/S, (s+1)·B/S), padded to P (a pair bucket):
  pair_doc             int32   [S, P]     shard-local document row of the pair
  pair_head, pair_tail int32   [S, P]     entity indices
  pair_mask            int32   [S, P]     1 for real pairs (0 for padding pairs)
  pair_labels          int32   [S, P, K]  1 where (head, k, tail) is a gold fact

Label side (shared by the batch):
  label_input_ids      int32   [K, T]     token ids of each label name (its first T)
  label_attention_mask int32   [K, T]
  label_mask           int32   [K]        1 for real labels
The G names longer than T, again whole (data/label_split.py; G may be 0):
  label_long_rows      int32   [G]        their rows among the K labels
  label_long_input_ids int32   [G, U]     their token ids (U >= T)
  label_long_attention_mask int32 [G, U]
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

PAIR_FIELDS = ("pair_doc", "pair_head", "pair_tail", "pair_mask", "pair_labels")
# Split along axis 0 over the 'data' mesh axis (B, or S for the pair fields).
DOC_FIELDS = ("input_ids", "attention_mask", "word_index", "word_mask",
              "entity_word_weights", "entity_mask", "doc_mask") + PAIR_FIELDS
LABEL_FIELDS = ("label_input_ids", "label_attention_mask", "label_mask",
                "label_long_rows", "label_long_input_ids", "label_long_attention_mask")
# What the label encoder reads (all but label_mask).
LABEL_TOKEN_FIELDS = tuple(name for name in LABEL_FIELDS if name != "label_mask")
# Long documents in windows (data/windows.py): input_ids, attention_mask and
# word_index gain a window axis N, and this field says which words each holds.
WINDOW_FIELDS = ("window_word_mask",)
# What the text encoder reads (GLiDREModel.encode_words): no entity or pair field.
TEXT_FIELDS = ("input_ids", "attention_mask", "word_index", "word_mask") + WINDOW_FIELDS

# The axes of each field, one letter a dimension (as in the table above);
# windowed batches (data/windows.py) put a window axis N after B.
AXES = {"input_ids": "BL", "attention_mask": "BL", "word_index": "BW", "word_mask": "BW",
        "entity_word_weights": "BEW", "entity_mask": "BE", "doc_mask": "B",
        "pair_doc": "SP", "pair_head": "SP", "pair_tail": "SP", "pair_mask": "SP",
        "pair_labels": "SPK",
        "label_input_ids": "KT", "label_attention_mask": "KT", "label_mask": "K",
        "label_long_rows": "G", "label_long_input_ids": "GU", "label_long_attention_mask": "GU"}
WINDOWED_AXES = {**AXES, "input_ids": "BNL", "attention_mask": "BNL", "word_index": "BNW",
                 "window_word_mask": "BNW"}
FLOAT_FIELDS = ("entity_word_weights",)  # every other field is int32


def dtype(name: str) -> type:
  return np.float32 if name in FLOAT_FIELDS else np.int32


def shapes(sizes: Mapping[str, int], *, windowed: bool = False, labels: bool = False
           ) -> dict[str, tuple[int, ...]]:
  """Field -> shape for the axis sizes `sizes` ({"B": 4, "L": 512, ..., "S": 1, "P": 256});
  document fields, and the label fields too when `labels`."""
  axes = WINDOWED_AXES if windowed else AXES
  names = DOC_FIELDS + (WINDOW_FIELDS if windowed else ()) + (LABEL_FIELDS if labels else ())
  return {name: tuple(int(sizes[a]) for a in axes[name]) for name in names}


def zeros(sizes: Mapping[str, int], *, windowed: bool = False) -> dict[str, np.ndarray]:
  """The document fields of an all-padding batch (see `shapes`)."""
  return {name: np.zeros(shape, dtype(name))
          for name, shape in shapes(sizes, windowed=windowed).items()}

"""Documents longer than the encoder's maximum length, as overlapping windows.

The document's subwords (without special tokens) are cut into windows of
`window - specials` subwords starting every `stride` subwords (the last one
ends at the document's end); each window gets the tokenizer's own special
tokens. A word belongs to every window holding its first subword; the model
averages its vectors, and the word-to-word attention, over those windows
(`glidre_jax.model.windows`). A document that fits gives one window equal to
the single-pass input.

Windowed batch fields (instead of the single-pass shapes of `batch.py`):
  input_ids, attention_mask  int32 [B, N, L]   N windows of L subwords
  word_index                 int32 [B, N, W]   position of word w's first subword in window n
  window_word_mask           int32 [B, N, W]   1 where window n holds word w
The other document fields keep their single-pass meaning over all words.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from glidre_jax.data import batch as batch_lib
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data import pairs as pairs_lib
from glidre_jax.data.documents import Document

NO_LIMIT = 1 << 62  # max_length that never truncates


def special_layout(tokenizer) -> tuple[int, int]:
  """(number of special tokens before, after) the words of an encoding."""
  enc = tokenizer.backend_tokenizer.encode(["a"], is_pretokenized=True, add_special_tokens=True)
  words = [i for i, w in enumerate(enc.word_ids) if w is not None]
  return words[0], len(enc.ids) - words[-1] - 1


def featurize_windows(doc: Document, tokenizer, window: int, stride: int, *,
                      label_index: Mapping[str, int] | None = None, pair_filter=None
                      ) -> dict[str, np.ndarray]:
  """`featurize_lib.featurize` over all words, with the subwords in windows."""
  return cut_into_windows(featurize_lib.featurize(doc, tokenizer, label_index or {}, NO_LIMIT,
                                                   pair_filter=pair_filter),
                           tokenizer, window, stride)


def cut_into_windows(feat: dict, tokenizer, window: int, stride: int) -> dict:
  """Untruncated features -> the same with input_ids etc. in windows (in place)."""
  n_head, n_tail = special_layout(tokenizer)
  size = window - n_head - n_tail  # subwords of the document per window
  if size < 1 or not 0 < stride <= size:
    raise ValueError(f"stride must be in [1, {size}] for windows of {window} subwords "
                     f"({n_head + n_tail} special tokens), got {stride}")
  ids = feat["input_ids"]
  content = ids[n_head:len(ids) - n_tail]
  total = len(content)
  starts = np.asarray(list(range(0, max(total - size, 0), stride)) + [max(total - size, 0)])
  lens = np.minimum(size, total - starts)
  cols = np.arange(int(lens.max()))
  inside = cols[None, :] < lens[:, None]
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  length = n_head + int(lens.max()) + n_tail
  win_ids = np.full((len(starts), length), pad, np.int32)
  win_ids[:, :n_head] = ids[:n_head]
  win_ids[:, n_head:n_head + len(cols)] = np.where(
      inside, content[np.minimum(starts[:, None] + cols, total - 1)], pad)
  rows = np.arange(len(starts))[:, None]
  win_ids[rows, n_head + lens[:, None] + np.arange(n_tail)] = ids[len(ids) - n_tail:]
  # Each word by its first subword's position in the content; a word without
  # subwords is held by no window (a zero vector, as in a single pass).
  pos = feat["word_index"].astype(np.int64) - n_head
  held = ((starts[:, None] <= pos[None, :]) & (pos[None, :] < (starts + lens)[:, None])
          & (feat["word_mask"] > 0)[None, :])
  feat.update(
      input_ids=win_ids,
      attention_mask=(np.arange(length)[None, :] < (n_head + lens + n_tail)[:, None]
                      ).astype(np.int32),
      word_index=np.where(held, pos[None, :] - starts[:, None] + n_head, 0).astype(np.int32),
      window_word_mask=held.astype(np.int32))
  return feat


def is_windowed(feat: Mapping) -> bool:
  return "window_word_mask" in feat


def window_shape(feat: Mapping) -> tuple[int, int, int]:
  """(windows, words, entities) of windowed features."""
  n, w = feat["window_word_mask"].shape
  return n, w, len(feat["entity_mask"])


# Windowed features copied into the padded batch arrays.
_WINDOWED = ("input_ids", "attention_mask", "word_index", "window_word_mask",
             "entity_word_weights")


def as_windowed(feat: Mapping) -> dict:
  """Single-pass features as one window (to batch with windowed documents)."""
  if is_windowed(feat):
    return dict(feat)
  return {**feat, "input_ids": feat["input_ids"][None], "word_index": feat["word_index"][None],
          "attention_mask": np.ones((1, len(feat["input_ids"])), np.int32),
          "window_word_mask": np.asarray(feat["word_mask"], np.int32)[None]}


def window_bucket(need: Sequence[int], buckets: featurize_lib.Buckets) -> tuple[int, int, int]:
  """(N, W, E) that windowed features of (windows, words, entities) `need`
  pad to: N rounded up to a power of two, W and E their (grown) buckets."""
  need_n, need_w, need_e = (int(x) for x in need)
  # Any seq_len fits: windows have their own fixed length.
  _, w, e = buckets.grown(words=need_w, entities=need_e).pick(1, need_w, need_e)
  return 1 << (need_n - 1).bit_length(), w, e


def collate_windows(features: Sequence[Mapping | None], buckets: featurize_lib.Buckets,
                    label_batch: Mapping[str, np.ndarray], batch_size: int, window: int, *,
                    need: tuple[int, int, int, int] | None = None,
                    pair_shards: int = 1) -> dict[str, np.ndarray]:
  """Windowed features padded to [batch_size, N, window] and the word/entity
  buckets (grown as needed); N is rounded up to a power of two; pairs packed
  as `featurize.collate` does. `None` entries are padding documents;
  single-pass features count as one window. `need`: (windows, words,
  entities, pairs per shard) to hold instead of the batch's own (a whole
  global batch's, when `features` are one process's rows of it)."""
  features = [None if f is None else as_windowed(f) for f in features]
  if need is None:
    need = tuple(np.asarray([window_shape(f) for f in features if f is not None]).max(axis=0))
    need += (pairs_lib.shard_need([0 if f is None else pairs_lib.num_pairs(f) for f in features],
                                  batch_size, pair_shards),)
  n, w, e = window_bucket(need[:3], buckets)
  need_p = need[3]
  k = int(np.shape(label_batch["label_mask"])[0])
  b = batch_size
  out = batch_lib.zeros(dict(B=b, N=n, L=window, W=w, E=e, K=k, S=pair_shards,
                             P=pairs_lib.pick(buckets.pairs, need_p)), windowed=True)
  for i, f in enumerate(features):  # per document of the batch, host side
    if f is not None:
      featurize_lib.place_document(out, i, f, _WINDOWED, num_words=f["window_word_mask"].shape[1])
  pairs_lib.pack(out, features, pair_shards, out["pair_mask"].shape[1])
  return featurize_lib.put_label_fields(out, label_batch)

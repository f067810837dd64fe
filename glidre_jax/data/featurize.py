"""Documents -> unpadded per-document numpy features -> padded bucket batches.

`featurize` does the ragged work once per document (mentions -> entity word
weights, relations -> label tensor); `collate` pads a list of features to the
smallest shape bucket that holds its largest member (or given sizes), giving
exactly the fields of `batch.py`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from glidre_jax.data import batch as batch_lib
from glidre_jax.data import label_split
from glidre_jax.data import pairs as pairs_lib
from glidre_jax.data.documents import Document
from glidre_jax.data.readers import CDR_ORIENTATION
from glidre_jax.data.tokenize import encode_labels, tokenize_words

# Features copied into the padded batch arrays (each must fit its bucket).
_PADDED = ("input_ids", "word_index", "entity_word_weights")
# Per-document counters carried next to the arrays (host-side bookkeeping).
STAT_KEYS = ("num_words", "dropped_words", "empty_words", "dropped_mentions",
             "dropped_entities", "masked_labels")


PREDICT_SEQ_STEP = 64  # subwords between prediction's sequence lengths


@dataclasses.dataclass(frozen=True)
class Buckets:
  """Allowed padded sizes per dimension, sorted ascending."""
  seq_len: tuple[int, ...] = (128, 256, 512)
  words: tuple[int, ...] = (64, 128, 256, 512)
  entities: tuple[int, ...] = (16, 32, 64)
  # Packed pairs per shard (data/pairs.py; configs choose theirs from data).
  pairs: tuple[int, ...] = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = tuple(int(x) for x in getattr(self, f.name))
      if not v or any(x <= 0 for x in v):
        raise ValueError(f"Buckets.{f.name} needs positive sizes, got {v}")
      object.__setattr__(self, f.name, tuple(sorted(set(v))))

  @classmethod
  def from_config(cls, data_cfg) -> Buckets:
    """A run config's buckets (data.seq_buckets, word_buckets, entity_buckets,
    pair_buckets)."""
    return cls(tuple(data_cfg.seq_buckets), tuple(data_cfg.word_buckets),
               tuple(data_cfg.entity_buckets), tuple(data_cfg.pair_buckets))

  def for_prediction(self, step: int = PREDICT_SEQ_STEP) -> Buckets:
    """These buckets with a sequence length every `step` subwords up to the
    largest. Prediction pads each batch of similar documents alone, so finer
    lengths cost a compile once per shape and save encoder work on every
    document (Re-DocRED dev: 1.47 -> 1.15 of the real encoder FLOPs)."""
    finer = tuple(range(step, self.seq_len[-1], step))
    return dataclasses.replace(self, seq_len=self.seq_len + finer)

  @property
  def num_combinations(self) -> int:
    """(L, W, E) shapes; each comes with up to len(pairs) pair counts P."""
    return len(self.seq_len) * len(self.words) * len(self.entities)

  def grown(self, *, words: int = 0, entities: int = 0) -> Buckets:
    """These buckets plus doublings of the largest word / entity size, up to
    the given needs (prediction on documents larger than any training one)."""
    out = {}
    for dim, need in (("words", words), ("entities", entities)):
      sizes = getattr(self, dim)
      size = sizes[-1]
      while size < need:
        size *= 2
      out[dim] = sizes + ((size,) if size > sizes[-1] else ())
    return dataclasses.replace(self, **out)

  def pick(self, seq_len: int, words: int, entities: int, *, title: str = "<batch>"
           ) -> tuple[int, int, int]:
    """Smallest (L, W, E) bucket holding the given sizes."""
    return tuple(_smallest(getattr(self, dim), n, dim, title)
                 for dim, n in (("seq_len", seq_len), ("words", words), ("entities", entities)))


def _smallest(sizes: tuple[int, ...], n: int, dim: str, title: str) -> int:
  i = int(np.searchsorted(sizes, n))
  if i == len(sizes):
    raise ValueError(f"document {title!r}: {dim} = {n} exceeds the largest bucket {sizes[-1]} "
                     f"(buckets {sizes}); add a larger bucket or lower max_length")
  return sizes[i]


PairFilter = Callable[[Document], np.ndarray]  # doc -> bool [E, E] candidate pairs


def type_pair_filter(allowed: Sequence[tuple[str, str]]) -> PairFilter:
  """Keep only (head type, tail type) pairs in `allowed`."""
  allowed = tuple((str(h), str(t)) for h, t in allowed)

  def fn(doc: Document) -> np.ndarray:
    types = np.asarray([e.type for e in doc.entities], dtype=object)
    keep = np.zeros((len(types), len(types)), dtype=bool)
    for h, t in allowed:  # a handful of type pairs
      keep |= (types == h)[:, None] & (types == t)[None, :]
    return keep

  return fn


# CDR scores chemical -> disease only (after readers.normalize_cdr).
cdr_pair_filter = type_pair_filter([CDR_ORIENTATION])


def without_self_pairs(pair_filter: PairFilter | None = None) -> PairFilter:
  """`pair_filter` (None: every pair) minus the self pairs (e, e)
  (`model.self_pairs=False`)."""
  def fn(doc: Document) -> np.ndarray:
    keep = ~np.eye(len(doc.entities), dtype=bool)
    return keep if pair_filter is None else keep & _filtered(pair_filter, doc)
  return fn


def _filtered(pair_filter: PairFilter, doc: Document) -> np.ndarray:
  keep = np.asarray(pair_filter(doc), dtype=bool)
  n_ent = len(doc.entities)
  if keep.shape != (n_ent, n_ent):
    raise ValueError(f"document {doc.title!r}: pair_filter returned shape {keep.shape}, "
                     f"expected {(n_ent, n_ent)}")
  return keep


def featurize(doc: Document, tokenizer, label_index: Mapping[str, int], max_length: int, *,
              pair_filter: PairFilter | None = None) -> dict[str, np.ndarray]:
  """One document's unpadded features.

  Returns input_ids [L], word_index [W], word_mask [W] (0 for words without
  a subword: they keep their place and their weight in mentions, with a zero
  vector, as in the official GLiDRE), entity_word_weights [E, W],
  entity_mask [E], pair_mask [E, E], relations [R, 3] (the distinct gold
  (head, tail, label column) rows) of num_labels K columns, plus `title` and
  the counters of STAT_KEYS. W counts kept words only (truncation drops a suffix).
  """
  tok = tokenize_words(tokenizer, doc.words, max_length)
  n_words = len(tok.word_index)
  n_ent = len(doc.entities)

  # Mentions as flat (entity, start, end) arrays, end clipped to the kept words.
  ent_of = np.asarray([e for e, ent in enumerate(doc.entities) for _ in ent.mentions], np.int64)
  spans = np.asarray([(m.start, m.end) for ent in doc.entities for m in ent.mentions],
                     np.int64).reshape(-1, 2)
  start, end = spans[:, 0], np.minimum(spans[:, 1], n_words)
  alive = start < end
  # Difference array + cumsum: +1 at start, -1 at end; overlapping mentions of
  # one entity add up (token-weighted pooling counts a word once per mention).
  diff = np.zeros((n_ent, n_words + 1), np.float32)
  np.add.at(diff, (ent_of[alive], start[alive]), 1.0)
  np.add.at(diff, (ent_of[alive], end[alive]), -1.0)
  weights = np.cumsum(diff[:, :n_words], axis=1)
  entity_mask = (weights.sum(axis=1) > 0).astype(np.int32)

  pair_mask = entity_mask[:, None] * entity_mask[None, :]
  if pair_filter is not None:
    pair_mask = pair_mask * _filtered(pair_filter, doc)
  pair_mask = pair_mask.astype(np.int32)

  # Gold facts as (head, tail, label column) rows, not a dense [E, E, K]
  # array: the featurized split stays in host memory for the run, and dense
  # labels grow as E² K (int32: 60 MB of the 400 training documents' 68).
  relations = np.zeros((0, 3), np.int32)
  if doc.relations:
    try:
      rel = np.asarray([(r.head, r.tail, label_index[r.label]) for r in doc.relations], np.int64)
    except KeyError as err:
      raise ValueError(f"document {doc.title!r}: relation {err.args[0]!r} is not in the label set "
                       f"({len(label_index)} labels)") from None
    relations = np.unique(rel, axis=0).astype(np.int32)
    # Gold facts that the model cannot score (truncated entity, filtered pair).
    masked = int((pair_mask[rel[:, 0], rel[:, 1]] == 0).sum())
  else:
    masked = 0

  return {
      "title": doc.title,
      "input_ids": tok.input_ids,
      "word_index": tok.word_index,
      "word_mask": tok.word_mask,
      "entity_word_weights": weights,
      "entity_mask": entity_mask,
      "pair_mask": pair_mask,
      "relations": relations,
      "num_labels": len(label_index),
      "num_words": doc.num_words,
      "dropped_words": tok.num_dropped,
      "empty_words": tok.num_empty,
      "dropped_mentions": int((~alive).sum()),
      "dropped_entities": int(n_ent - entity_mask.sum()),
      "masked_labels": masked,
  }


def label_batch(tokenizer, names: Sequence[str], *, max_length: int = 16,
                num_labels: int | None = None, fit_length: bool = True
                ) -> dict[str, np.ndarray]:
  """The shared label side of a batch; K padded to `num_labels` (label_mask 0).

  fit_length: T is the longest name's token count (at most max_length), as
  the official code pads its label batch, and the batch is split by name
  length (`label_split`): a fixed label set keeps one shape, and the label
  encoder runs few padding slots (Re-DocRED's 96 names: 590 token slots
  instead of 1 536 at [96, 16], 396 of them real). Label sets that change per
  batch (open labels) pass False: T = max_length, one shape, no split.
  """
  k = len(names) if num_labels is None else num_labels
  if k < len(names):
    raise ValueError(f"num_labels={num_labels} < {len(names)} label names")
  ids, mask = encode_labels(tokenizer, names, max_length)
  pad = k - len(names)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  return label_split.split_by_length(
      np.pad(ids, ((0, pad), (0, 0)), constant_values=pad_id), np.pad(mask, ((0, pad), (0, 0))),
      (np.arange(k) < len(names)).astype(np.int32), split=fit_length)


def dense_labels(feat: Mapping) -> np.ndarray:
  """A document's gold facts as a dense [E, E, K] 0/1 array."""
  e = len(feat["entity_mask"])
  out = np.zeros((e, e, feat["num_labels"]), np.int32)
  rel = feat["relations"]
  out[rel[:, 0], rel[:, 1], rel[:, 2]] = 1
  return out


def first_labels(feat: Mapping, k: int) -> dict:
  """A shallow copy restricted to the first k label columns."""
  rel = feat["relations"]
  return {**feat, "relations": rel[rel[:, 2] < k], "num_labels": min(k, feat["num_labels"])}


def feature_shape(feat: Mapping) -> tuple[int, int, int]:
  """(subwords, words, entities) of one document's features."""
  return (len(feat["input_ids"]), len(feat["word_index"]), len(feat["entity_mask"]))


def collate(features: Sequence[Mapping | None], buckets: Buckets,
            label_batch: Mapping[str, np.ndarray], batch_size: int | None = None, *,
            need: tuple[int, int, int, int] | None = None,
            pair_shards: int = 1) -> dict[str, np.ndarray]:
  """Pad documents to the bucket of the largest member; B padded to batch_size;
  the real pairs packed per shard (`pair_shards` of B/pair_shards rows each)
  and padded to the pair bucket of the fullest shard.

  `need`: (subwords, words, entities, pairs per shard) the buckets must hold
  instead, e.g. those of a whole global batch when `features` are one
  process's rows of it. `None` entries (and the rows added up to batch_size)
  are padding documents: all zeros, doc_mask 0. Returns exactly
  batch.DOC_FIELDS + LABEL_FIELDS.
  """
  b = len(features) if batch_size is None else batch_size
  if b < len(features):
    raise ValueError(f"{len(features)} documents for batch_size {batch_size}")
  real = [f for f in features if f is not None]
  if need is not None:
    shape, pair_need = buckets.pick(*need[:3], title="<global batch>"), need[3]
  else:
    pair_need = pairs_lib.shard_need([0 if f is None else pairs_lib.num_pairs(f)
                                      for f in features], b, pair_shards)
    if real:
      dims = np.asarray([feature_shape(f) for f in real])
      big = np.argmax(dims, axis=0)
      shape = tuple(_smallest(getattr(buckets, dim), int(dims[big[i], i]), dim,
                              real[big[i]]["title"])
                    for i, dim in enumerate(("seq_len", "words", "entities")))
    else:
      shape = (buckets.seq_len[0], buckets.words[0], buckets.entities[0])
  seq, words, ents = shape
  k = int(np.shape(label_batch["label_mask"])[0])

  out = batch_lib.zeros(dict(B=b, L=seq, W=words, E=ents, K=k, S=pair_shards,
                             P=pairs_lib.pick(buckets.pairs, pair_need)))
  put_label_fields(out, label_batch)
  for i, f in enumerate(features):  # per document of the batch, host side
    if f is None:
      continue
    place_document(out, i, f, _PADDED, num_words=feature_shape(f)[1])
    out["attention_mask"][i, :len(f["input_ids"])] = 1
  pairs_lib.pack(out, features, pair_shards, out["pair_mask"].shape[1])
  return out


def place_document(out: dict, row: int, feat: Mapping, fields: Sequence[str], *,
                   num_words: int) -> None:
  """Copies one document's `fields` into row `row` of a padded batch `out`
  (its arrays already allocated) and sets its word, entity and document masks
  (`num_words` words, of which those with feat["word_mask"] 0 have no subword)."""
  k = out["pair_labels"].shape[-1]
  if feat["num_labels"] > k:
    raise ValueError(f"document {feat['title']!r} has {feat['num_labels']} label "
                     f"columns, the label batch only {k}")
  for name in fields:
    arr = feat[name]
    _check_fits(arr, list(out[name].shape[1:]), name, feat["title"])
    out[name][(row,) + tuple(slice(0, n) for n in arr.shape)] = arr
  out["word_mask"][row, :num_words] = feat["word_mask"]
  out["entity_mask"][row, :len(feat["entity_mask"])] = feat["entity_mask"]
  out["doc_mask"][row] = 1


def put_label_fields(out: dict, label_batch: Mapping[str, np.ndarray]) -> dict:
  """The batch's shared label side (batch.LABEL_FIELDS) into `out`."""
  for name in batch_lib.LABEL_FIELDS:
    out[name] = np.asarray(label_batch[name], np.int32)
  return out


def _check_fits(arr: np.ndarray, limits: list[int], name: str, title: str):
  if any(n > lim for n, lim in zip(arr.shape, limits)):
    raise ValueError(f"document {title!r}: {name} of shape {arr.shape} does not fit "
                     f"the bucket {tuple(limits)}")


def batch_stats(features: Sequence[Mapping | None]) -> dict[str, int]:
  """Summed STAT_KEYS counters of a batch's real documents."""
  return {k: int(sum(f[k] for f in features if f is not None)) for k in STAT_KEYS}

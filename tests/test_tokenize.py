from __future__ import annotations

import numpy as np
import pytest

from glidre_jax.data.tokenize import encode_labels, load_tokenizer, minilm_path, tokenize_words




def _alone(tok, word):
  return tok.backend_tokenizer.encode([word], is_pretokenized=True, add_special_tokens=False).ids


def test_minilm_tokenizer_is_local_fast_and_unpadded(tok):
  assert minilm_path().joinpath("tokenizer.json").exists()
  assert tok.is_fast
  assert tok.backend_tokenizer.padding is None
  assert tok.backend_tokenizer.truncation is None
  with pytest.raises(FileNotFoundError):
    load_tokenizer("/nonexistent/tokenizer/dir")


def test_first_subword_positions_unicode(tok):
  words = ["The", "naïve", "Zürich", "東京", "café", "😀", "co-operation", "U.S.", "1,234",
           "\xa0", "\u200b", "", "end"]
  out = tokenize_words(tok, words, 512)
  ids = out.input_ids
  assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
  assert len(out.word_index) == len(words) and out.num_dropped == 0
  assert out.num_empty == 3  # nbsp, zero-width space, empty string
  assert np.all(np.diff(out.word_index) > 0)  # every word its own position, in order
  for w, p in zip(words, out.word_index):
    pieces = _alone(tok, w)
    # A word's first subword is what the word alone starts with; empties get [UNK].
    assert ids[p] == (pieces[0] if pieces else tok.unk_token_id), w
    # The word's subwords run up to the next word's position.
  ends = list(out.word_index[1:]) + [len(ids) - 1]
  for w, p, e in zip(words, out.word_index, ends):
    assert list(ids[p:e]) == (_alone(tok, w) or [tok.unk_token_id])


def test_empty_words_next_mode_keeps_sequence(tok):
  words = ["\xa0", "Paris", "\xa0", "is", "nice", "\u200b"]
  out = tokenize_words(tok, words, 512, empty="next")
  plain = tok.backend_tokenizer.encode(["Paris", "is", "nice"], is_pretokenized=True).ids
  assert list(out.input_ids) == plain
  # nbsp -> next word's first subword; trailing empty word -> the [SEP] position.
  assert list(out.word_index) == [1, 1, 2, 2, 3, 4]


def test_truncation_drops_suffix_and_keeps_sep(tok):
  words = ["hello", "internationalization", "world"] * 10
  full = tokenize_words(tok, words, 512)
  out = tokenize_words(tok, words, 12)
  assert len(out.input_ids) == 12 and out.input_ids[-1] == tok.sep_token_id
  assert out.num_dropped == len(words) - len(out.word_index) > 0
  assert np.all(out.word_index < 11)
  np.testing.assert_array_equal(out.word_index, full.word_index[:len(out.word_index)])
  np.testing.assert_array_equal(out.input_ids[:11], full.input_ids[:11])


def test_empty_document(tok):
  out = tokenize_words(tok, [], 16)
  assert list(out.input_ids) == [tok.cls_token_id, tok.sep_token_id]
  assert out.word_index.shape == (0,)


def test_encode_labels(tok):
  ids, mask = encode_labels(tok, ["country of citizenship", "x " * 40], max_length=16)
  assert ids.shape == mask.shape == (2, 16) and ids.dtype == mask.dtype == np.int32
  expected = tok.backend_tokenizer.encode("country of citizenship").ids
  assert list(ids[0, :len(expected)]) == expected
  assert mask[0].sum() == len(expected) and np.all(ids[0, len(expected):] == tok.pad_token_id)
  assert mask[1].all() and ids[1, 0] == tok.cls_token_id and ids[1, -1] == tok.sep_token_id

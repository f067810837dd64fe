from __future__ import annotations

import shutil
import subprocess
import sys

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


def test_loading_a_tokenizer_json_does_not_import_torch():
  """torch (~230 MB resident when installed) comes in through AutoTokenizer's
  model classes; a directory with tokenizer.json never needs them."""
  code = ("import sys; from glidre_jax.data.tokenize import load_tokenizer, minilm_path; "
          "load_tokenizer(minilm_path()); print('torch' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


def test_a_slow_tokenizer_directory_converts_to_the_same_subwords(tok, tmp_path, dev_docs):
  """Without tokenizer.json (e.g. DeBERTa-v3's spm.model) AutoTokenizer builds
  the fast tokenizer: here from MiniLM's vocab.txt, the same subwords."""
  for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
    shutil.copy(minilm_path() / name, tmp_path / name)
  slow = load_tokenizer(tmp_path)
  assert slow.pad_token_id == tok.pad_token_id
  for doc in dev_docs[:20]:
    got, want = (tokenize_words(t, doc.words, 512) for t in (slow, tok))
    np.testing.assert_array_equal(got.input_ids, want.input_ids)
    np.testing.assert_array_equal(got.word_index, want.word_index)


def test_first_subword_positions_unicode(tok):
  words = ["The", "naïve", "Zürich", "東京", "café", "😀", "co-operation", "U.S.", "1,234",
           "\xa0", "\u200b", "", "end"]
  out = tokenize_words(tok, words, 512)
  ids = out.input_ids
  assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
  assert len(out.word_index) == len(words) and out.num_dropped == 0
  assert out.num_empty == 3  # nbsp, zero-width space, empty string
  # The subword sequence is exactly the tokenizer's (no [UNK] put in for empties).
  assert list(ids) == tok(words, is_split_into_words=True)["input_ids"]
  has = out.word_mask.astype(bool)
  assert [w for w, h in zip(words, has) if not h] == ["\xa0", "\u200b", ""]
  assert np.all(out.word_index[~has] == 0)  # no position of their own
  assert np.all(np.diff(out.word_index[has]) > 0)  # the others in order
  ends = list(out.word_index[has][1:]) + [len(ids) - 1]
  for w, p, e in zip([w for w, h in zip(words, has) if h], out.word_index[has], ends):
    # A word's subwords are what the word alone gives, up to the next word's position.
    assert list(ids[p:e]) == _alone(tok, w), w


def test_word_mask_matches_official_words_mask(tok, dev_docs):
  """GLiNER's words_mask (w + 1 at word w's first subword) names exactly the
  words with word_mask 1, at word_index."""
  doc = next(d for d in dev_docs if "\xa0" in d.words)
  out = tokenize_words(tok, doc.words, 1 << 30)
  enc = tok(list(doc.words), is_split_into_words=True)
  prev, named = None, {}
  for i, wid in enumerate(enc.word_ids()):
    if wid is not None and wid != prev:
      named[wid] = i
    prev = wid
  assert sorted(named) == list(np.flatnonzero(out.word_mask))
  assert all(out.word_index[w] == i for w, i in named.items())


def test_empty_words_before_the_cut_are_kept(tok):
  # [CLS] paris is [SEP] in 4 slots: the "\xa0" after "is" stays a word, "nice" is cut.
  out = tokenize_words(tok, ["Paris", "is", "\xa0", "nice", "\xa0"], 4)
  assert list(out.word_mask) == [1, 1, 0] and out.num_dropped == 2
  assert list(out.input_ids) == [tok.cls_token_id, *_alone(tok, "Paris"), *_alone(tok, "is"),
                                 tok.sep_token_id]


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

"""Word-level parity with the official GLiDRE on real Re-DocRED dev documents.

A GLiDRE with the real MiniLM encoders and a random head (hidden 256: the
text projection is on) is exported to the official layout; `GLiDRE.scores`
(our API, batched) and the torch oracle loaded from the export
(`TorchGLiDRE.official_logits`: inputs built from words and mention spans as
the official processor builds them, one document at a time) must give the
same probabilities. The documents: those with words that the tokenizer maps
to no subword (lone non-breaking spaces) inside mentions, every document
over 512 subwords (truncated), the most entity-dense one, and a real one with
mentions that end on, or consist of, such a word.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from flax import nnx

from configs import default
from converters.export_official import export_glidre
from converters.torch_glidre import TorchGLiDRE
from glidre_jax.api import GLiDREPredictor
from glidre_jax.data import featurize as featurize_lib, label_split
from glidre_jax.data.documents import Entity, Mention
from glidre_jax.data.tokenize import tokenize_words
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import GLiDREModel
from glidre_jax import encoders

TOL = 1e-5  # max |Δp|
LABELS = ["country", "located in the administrative territorial entity", "part of",
          "located in or next to body of water", "inception", "has part", "owned by",
          "operator", "instance of", "capacity", "place of birth", "member of"]
MAX_LENGTH = 512


def _empty_in_mention(doc, tok) -> int:
  """Mention words of `doc` that yield no subword."""
  mask = tokenize_words(tok, doc.words, 1 << 30).word_mask
  return sum(int((mask[m.start:m.end] == 0).sum()) for e in doc.entities for m in e.mentions)


def _with_empty_word_mentions(doc, tok):
  """`doc` plus two entities: a mention that ends on a word without subword
  (the word before it too) and one that is that word alone."""
  mask = tokenize_words(tok, doc.words, 1 << 30).word_mask
  w = int(np.flatnonzero(mask == 0)[0])
  extra = (Entity((Mention(w - 1, w + 1, -1, "ends on nbsp"),), "MISC"),
           Entity((Mention(w, w + 1, -1, "nbsp alone"),), "MISC"))
  return dataclasses.replace(doc, title=doc.title + " +nbsp mentions",
                             entities=doc.entities + extra)


@pytest.fixture(scope="module")
def documents(dev_docs, tok):
  lengths = [len(tokenize_words(tok, d.words, 1 << 30).input_ids) for d in dev_docs]
  empty = [i for i, d in enumerate(dev_docs) if _empty_in_mention(d, tok)]
  assert len(empty) == 24  # Re-DocRED dev: 24 documents, 30 with such words at all
  shortest_empty = sorted(empty, key=lambda i: lengths[i])[:2]
  most_empty = max(empty, key=lambda i: _empty_in_mention(dev_docs[i], tok))
  long = [i for i, n in enumerate(lengths) if n > MAX_LENGTH]
  assert len(long) == 2
  dense = max(range(len(dev_docs)), key=lambda i: len(dev_docs[i].entities))
  picked = dict.fromkeys(shortest_empty + [most_empty] + long + [dense])
  docs = [dev_docs[i] for i in picked]
  return docs + [_with_empty_word_mentions(dev_docs[shortest_empty[0]], tok)]


@pytest.fixture(scope="module")
def models(minilm_dir, tok, tmp_path_factory):
  model = GLiDREModel(GLiDREConfig(hidden_size=256), encoders.load_encoder(minilm_dir),
                 encoders.load_encoder(minilm_dir), rngs=nnx.Rngs(3))
  out = export_glidre(model, tmp_path_factory.mktemp("official"), minilm_dir, minilm_dir)
  config = default.get_config()
  config.data.max_length = MAX_LENGTH
  config.model.self_pairs = True  # the official code scores (e, e) pairs too
  ours = GLiDREPredictor.from_model(model, config, tokenizers=(tok, tok), batch_size=8,
                                    buckets=featurize_lib.Buckets((512,), (512,), (64,)))
  return ours, TorchGLiDRE.from_pretrained(out)


def test_scores_match_the_official_semantics(documents, models, tok):
  ours, oracle = models
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # entities lost to truncation: checked below instead
    probs = ours.scores(documents, LABELS)
  label_batch = featurize_lib.label_batch(tok, LABELS, max_length=16)
  label_ids = label_split.joined(label_batch)  # one padded batch, as the official code
  report = []
  for doc, p in zip(documents, probs):
    spans = [[(m.start, m.end - 1) for m in e.mentions] for e in doc.entities]
    logits, scored = oracle.official_logits(tok, doc.words, spans, *label_ids)
    ref = torch.sigmoid(logits).numpy()
    pairs = (scored[:, None] & scored[None, :]).numpy()
    # The same entities are dropped by truncation (nothing silently zero).
    np.testing.assert_array_equal(p.any(-1), pairs)
    row = [doc.title, _empty_in_mention(doc, tok), int((~scored).sum()),
           float(np.abs(p - ref)[pairs].max())]
    kept = len(tokenize_words(tok, doc.words, MAX_LENGTH).word_index)
    if kept < doc.num_words:
      # The official code keeps cut words as zero vectors (spec §1): pairs of
      # entities that truncation leaves whole score the same there, the
      # others do not.
      official, _ = oracle.official_logits(tok, doc.words, spans, *label_ids,
                                           keep_cut_words=True)
      whole = np.asarray([all(end < kept for _, end in s) for s in spans])
      both = whole[:, None] & whole[None, :]
      bug = np.abs(torch.sigmoid(official).numpy() - ref)
      row += [float(bug[both].max()), float(bug[~both].max(initial=0.0))]
      assert row[4] <= TOL, row
    report.append(row)
  print("\ndocument | mention words w/o subword | entities truncated away | max |dp| "
        "| official with cut words as zeros: max |dp| whole pairs / cut pairs")
  for row in report:
    print(" | ".join(f"{x:.2e}" if isinstance(x, float) else str(x) for x in row))
  assert max(r[3] for r in report) <= TOL, report

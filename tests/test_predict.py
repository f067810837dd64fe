"""Prediction API and CLI: inputs, decoding, label cache, no recompiles, loading."""
from __future__ import annotations

import json

import numpy as np
import pytest

from glidre_jax import decoding
from glidre_jax import predict as predict_cli
from glidre_jax.api import GLiDREPredictor
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data import inputs
from predict_fixtures import LABELS, RAW, STORED_TAU, TEXT
# The shared module-scoped fixtures, by name (pytest finds them here).
from predict_fixtures import dev_docs, model, predictor, run_dir  # noqa: F401

# -- inputs -------------------------------------------------------------------


def test_split_words_is_the_official_splitter():
  # GLiNER's "whitespace" splitter: hyphen/underscore-joined runs stay one word (\w
  # holds "_", so "x_-y" is one too); CJK runs are words; other characters alone.
  text = ("New-York's foo_bar, a--b  x_-y (co-op.) Zürich,\xa0東京 and São Paulo 🎉 "
          "1,234.5 U.S. e-mail_id-2")
  w = inputs.split_words(text)
  assert w.words == ("New-York", "'", "s", "foo_bar", ",", "a", "-", "-", "b", "x_-y",
                     "(", "co-op", ".", ")", "Zürich", ",", "東京", "and", "São", "Paulo", "🎉",
                     "1", ",", "234", ".", "5", "U", ".", "S", ".", "e-mail_id-2")
  assert all(text[s:e] == word for word, s, e in zip(w.words, w.starts, w.ends))


def test_raw_text_document():
  doc = inputs.to_document(RAW)
  assert doc.title == "curie" and doc.words[:2] == ("Marie", "Curie")
  assert [(m.start, m.end, m.name) for m in doc.entities[0].mentions] == [
      (0, 2, "Marie Curie"), (10, 11, "she")]
  assert [e.type for e in doc.entities] == ["PER", "LOC", "LOC", "LOC"]
  uni = inputs.to_document({"text": "Er zog nach São Paulo und 東京.",
                            "entities": [[[12, 21]], [[26, 28]]]})
  assert [m.name for e in uni.entities for m in e.mentions] == ["São Paulo", "東京"]
  assert uni.entities[1].mentions[0].end - uni.entities[1].mentions[0].start == 1  # one word


@pytest.mark.parametrize("entities, message", [
    ([[[2, 11]]], r"entities\[0\]\.mentions\[0\] \[2, 11\) 'rie Curie': start 2 .*inside 'Marie'"),
    ([[[0, 9]]], r"end 9 is not the end of a word \(inside 'Curie'"),
    ([[[0, 500]]], r"\[0, 500\) is not a non-empty span inside the text \(65 characters\)"),
    ([[[11, 11]]], r"not a non-empty span"),
    ([[[-1, 5]]], r"not a non-empty span"),
    ([[[0, 11], [6, 11]]], r"mentions\[1\] \[6, 11\) 'Curie' overlaps mentions\[0\]"),
    ([[["a", 3]]], r"expected \[start, end\]"),
    ([{"type": "PER"}], r"at least one mention"),
    ([], r"no entities"),
])
def test_bad_offsets_are_clear_errors(entities, message):
  with pytest.raises(inputs.InputError, match=message):
    inputs.to_documents([{"text": TEXT, "entities": entities}])


def test_docred_inputs_ignore_gold_labels(dev_docs):
  raw = dict(dev_docs[0], labels=[{"h": 0, "t": 1, "r": "P_unknown", "evidence": []}])
  doc = inputs.to_document(raw)
  assert doc.relations == () and len(doc.entities) == len(dev_docs[0]["vertexSet"])
  assert inputs.to_document(doc) == doc
  with pytest.raises(inputs.InputError, match="vertexSet.*at least one entity"):
    inputs.to_document(dict(dev_docs[0], vertexSet=[]))
  with pytest.raises(inputs.InputError, match="got keys"):
    inputs.to_document({"sentences": []})
  with pytest.raises(TypeError, match="list of documents"):
    inputs.to_documents(raw)


# -- decoding (no model) --------------------------------------------------------


def test_decoder_thresholds_top_k_self_pairs_and_constraints():
  probs = np.full((1, 3, 3, 3), 0.2, np.float32)
  probs[0, 0, 1] = [0.9, 0.8, 0.7]
  probs[0, 1, 1] = [0.95, 0.1, 0.1]  # self pair
  probs[0, 2, 0] = [0.6, 0.65, 0.1]
  pair_mask = np.ones((1, 3, 3), np.int32)
  labels = ["a", "b", "c"]
  got = lambda dec, types=None: {(r["head"], r["tail"], r["label"]) for r in dec.triples(
      probs, pair_mask, dec.type_ids(types, 3) if types else None)[0]}
  base = decoding.make_decoder(labels, 0.5)
  assert got(base) == {(0, 1, "a"), (0, 1, "b"), (0, 1, "c"), (2, 0, "a"), (2, 0, "b")}
  rows = base.triples(probs, pair_mask)[0]
  assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
  assert (1, 1, "a") in got(decoding.make_decoder(labels, 0.5, drop_self_pairs=False))
  assert got(decoding.make_decoder(labels, 0.5, label_thresholds={"b": 0.85, "c": 0.0})) == {
      (0, 1, "a"), (2, 0, "a"), (0, 1, "c"), (0, 2, "c"), (1, 0, "c"), (1, 2, "c"), (2, 0, "c"),
      (2, 1, "c")}
  assert got(decoding.make_decoder(labels, 0.5, top_k=1)) == {(0, 1, "a"), (2, 0, "b")}
  # 'a' only PER -> LOC, 'b' any head -> PER tail; 'c' unconstrained.
  dec = decoding.make_decoder(labels, 0.5,
                              constraints={"a": (["PER"], "LOC"), "b": (None, ["PER"])})
  assert got(dec, [["PER", "LOC", "ORG"]]) == {(0, 1, "a"), (0, 1, "c"), (2, 0, "b")}
  assert got(dec, [["LOC", "LOC", "PER"]]) == {(0, 1, "c"), (2, 0, "a")}


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=[]), "empty label list"),
    (dict(labels="country"), "list of relation names"),
    (dict(labels=["a", "a"]), "listed twice"),
    (dict(labels=["a", " "]), "not a non-empty string"),
    (dict(labels=["a"], label_thresholds={"b": 0.3}), "label_thresholds names 'b'"),
    (dict(labels=["a"], constraints={"b": (None, None)}), "constraints names 'b'"),
    (dict(labels=["a"], constraints={"a": ["PER"]}), r"must be \(head types, tail types\)"),
    (dict(labels=["a"], top_k=0), "top_k"),
])
def test_decoder_option_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    decoding.make_decoder(**kwargs)


def test_buckets_grow_for_large_documents():
  buckets = featurize_lib.Buckets((128,), (64, 128), (48,))
  assert buckets.grown(words=300, entities=70) == featurize_lib.Buckets(
      (128,), (64, 128, 512), (48, 96))
  assert buckets.grown(words=100, entities=3) == buckets


# -- prediction -------------------------------------------------------------------


def test_predict_on_shipped_docs_compiles_once(predictor, dev_docs):
  traces = predictor.predictor.num_traces
  out = predictor.predict(dev_docs[:3] + [RAW], LABELS, threshold=0.3)
  # Batches of one bucket each: the three dev documents at L = 128 in 2 + 1
  # rows, RAW alone at L = 64 (some maybe compiled before).
  assert predictor.predictor.num_traces - traces <= 3
  traces = predictor.predictor.num_traces
  again = predictor.predict(dev_docs[2:5] + [RAW], LABELS, threshold=0.3)
  assert predictor.predictor.num_traces == traces  # no recompile per document or call
  # Batch composition (here 1 row against 2) does not change a document's
  # triples; scores agree to float rounding (other GEMM shapes).
  assert [{**r, "score": 0} for r in out[2]] == [{**r, "score": 0} for r in again[0]]
  np.testing.assert_allclose([r["score"] for r in out[2]], [r["score"] for r in again[0]],
                             atol=1e-6)
  for doc, triples in zip(dev_docs[:3], out):
    n = len(doc["vertexSet"])
    for r in triples:
      assert set(r) == {"head", "tail", "label", "score", "head_id", "tail_id", "head_text",
                        "tail_text", "head_span", "tail_span", "span_unit"}
      for side in ("head", "tail"):  # DocRED: first mention's name, document word offsets
        first, e = doc["vertexSet"][r[side]][0], r[side]
        starts = np.cumsum([0] + [len(s) for s in doc["sents"]])
        assert r[f"{side}_id"] == e and r[f"{side}_text"] == first["name"]
        assert r[f"{side}_span"] == [int(starts[first["sent_id"]]) + p for p in first["pos"]]
      assert r["span_unit"] == "word"
      assert 0 <= r["head"] < n and 0 <= r["tail"] < n and r["head"] != r["tail"]
      assert r["label"] in LABELS and r["score"] > 0.3
  scores = predictor.scores(dev_docs[:3], LABELS)
  for probs, triples in zip(scores, out):
    expected = {(h, t, LABELS[k]) for h, t, k in zip(*np.nonzero(probs > 0.3)) if h != t}
    assert {(r["head"], r["tail"], r["label"]) for r in triples} == expected


def test_label_cache(predictor):
  predictor.clear_label_cache()
  calls = predictor.label_encoder_calls
  first = predictor.scores([RAW], LABELS)
  assert predictor.label_encoder_calls == calls + 1
  predictor.predict([RAW, RAW, RAW], LABELS)  # two batches, same label set
  assert predictor.label_encoder_calls == calls + 1  # cache hit: encoder not run again
  predictor.predict([RAW], LABELS[:2])
  assert predictor.label_encoder_calls == calls + 2  # another label set
  uncached = predictor.scores([RAW, RAW, RAW], LABELS, cache_labels=False)
  assert predictor.label_encoder_calls == calls + 4  # once per batch without the cache
  np.testing.assert_allclose(uncached[0], first[0], rtol=1e-6, atol=1e-7)


def test_type_constraints_in_predict(predictor):
  constraints = {"place of birth": (["PER"], ["LOC"]), "country": (["LOC"], ["LOC"])}
  free = predictor.predict([RAW], LABELS, threshold=0.0)[0]
  kept = predictor.predict([RAW], LABELS, threshold=0.0, constraints=constraints)[0]
  types = [e["type"] for e in RAW["entities"]]
  allowed = lambda r: (r["label"] == "located in" or (
      types[r["head"]] in constraints[r["label"]][0]
      and types[r["tail"]] in constraints[r["label"]][1]))
  assert kept == [r for r in free if allowed(r)] and len(kept) < len(free)


def test_from_pretrained_run_directory(run_dir, predictor, tmp_path):
  import glidre_jax
  assert glidre_jax.GLiDRE is GLiDREPredictor
  loaded = glidre_jax.GLiDRE.from_pretrained(run_dir)
  np.testing.assert_allclose(loaded.scores([RAW], LABELS)[0], predictor.scores([RAW], LABELS)[0],
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(FileNotFoundError, match="neither a glidre-jax run directory"):
    GLiDREPredictor.from_pretrained(tmp_path)
  # The τ stored with the best checkpoint is predict's default; an explicit one wins.
  assert loaded.threshold == STORED_TAU and predictor.threshold == 0.5  # eval.threshold
  assert loaded.predict([RAW], LABELS) == loaded.predict([RAW], LABELS, threshold=STORED_TAU)
  assert GLiDREPredictor.from_pretrained(run_dir, threshold=0.3).threshold == 0.3
  with pytest.raises(FileNotFoundError, match=f"{run_dir}: this run has no latest checkpoint"):
    GLiDREPredictor.from_pretrained(run_dir, "latest")


def test_from_pretrained_official_directory(minilm_dir, tmp_path):
  import transformers

  from converters import official
  from converters.export_official import export_glidre
  from glidre_jax import encoders
  from glidre_jax.model.config import GLiDREConfig
  from glidre_jax.model.glidre import build_glidre
  bert = tmp_path / "bert"
  transformers.BertModel(transformers.BertConfig(
      vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=512)).save_pretrained(bert)
  official.copy_tokenizer(minilm_dir, bert)
  cfg = encoders.config_from_hf(encoders.common.read_hf_config(bert))
  model = build_glidre(GLiDREConfig(hidden_size=40), cfg, cfg, seed=1)
  out = export_glidre(model, tmp_path / "official", bert, bert, safetensors=False)
  buckets = featurize_lib.Buckets((128,), (128,), (8,))
  imported = GLiDREPredictor.from_pretrained(out, buckets=buckets, batch_size=1)
  config = imported.config
  ours = GLiDREPredictor.from_model(model, config, buckets=buckets, batch_size=1)
  np.testing.assert_allclose(imported.scores([RAW], LABELS)[0], ours.scores([RAW], LABELS)[0],
                             rtol=1e-5, atol=1e-6)


# -- CLI --------------------------------------------------------------------------


def _write(tmp_path, docs, labels="country\n# comment\n\nplace of birth\n"):
  (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
  (tmp_path / "labels.txt").write_text(labels)
  return ["--input", str(tmp_path / "docs.jsonl"), "--labels", str(tmp_path / "labels.txt"),
          "--output", str(tmp_path / "out.jsonl")]


def test_cli(run_dir, dev_docs, tmp_path, capsys, predictor):
  args = _write(tmp_path, [dict(RAW, id=7), dev_docs[0]])
  assert predict_cli.main(["--checkpoint", str(run_dir), *args, "--threshold", "0.4"]) == 0
  lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [x["title"] for x in lines] == ["curie", dev_docs[0]["title"]] and lines[0]["id"] == 7
  assert all(r["label"] in ("country", "place of birth") and r["score"] > 0.4
             for x in lines for r in x["relations"])
  assert "wrote" in capsys.readouterr().out
  # Without --threshold: the τ stored with the run's best checkpoint.
  assert predict_cli.main(["--checkpoint", str(run_dir), *args]) == 0
  lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
  expected = predictor.predict([RAW, dev_docs[0]], ["country", "place of birth"],
                               threshold=STORED_TAU)
  assert [x["relations"] for x in lines] == expected and any(expected)


@pytest.mark.parametrize("docs, labels, message", [
    ([RAW], None, "label file .* does not exist"),
    ([RAW], "# nothing\n\n", "empty label list"),
    ([dict(RAW, entities=[])], "country\n", "no entities"),
    ([RAW, dict(RAW, entities=[[[1, 4]]])], "country\n", r"document 1 .*start 1 is not the start"),
])
def test_cli_bad_input(tmp_path, capsys, docs, labels, message):
  args = _write(tmp_path, docs, labels or "")
  if labels is None:
    (tmp_path / "labels.txt").unlink()
  assert predict_cli.main(["--checkpoint", str(tmp_path / "nowhere"), *args]) == 2
  assert __import__("re").search(message, capsys.readouterr().err)


@pytest.mark.parametrize("case", ["missing checkpoint", "latest of a best-only run",
                                  "invalid JSON input", "constraints: invalid JSON",
                                  "constraints: not an object", "constraints: unknown label",
                                  "constraints: bad spec", "label thresholds: unknown label"])
def test_cli_errors_after_input_parsing(run_dir, tmp_path, capsys, case):
  """Each exits with status 2 and a message naming the file at fault."""
  import re
  args = _write(tmp_path, [RAW])
  checkpoint, extra, culprit = run_dir, [], None
  options = tmp_path / "options.json"
  if case == "missing checkpoint":
    checkpoint = culprit = tmp_path / "nowhere"
  elif case == "latest of a best-only run":
    extra, culprit = ["--which", "latest"], run_dir
  elif case == "invalid JSON input":
    (tmp_path / "docs.jsonl").write_text(json.dumps(RAW) + "\n{\"text\": \n")
    culprit = tmp_path / "docs.jsonl"
  else:
    flag = "--label_thresholds" if case.startswith("label thresholds") else "--constraints"
    options.write_text({"constraints: invalid JSON": '{"country": [["LOC"], ',
                        "constraints: not an object": '[["LOC"], ["LOC"]]',
                        "constraints: unknown label": '{"spouse": [null, null]}',
                        "constraints: bad spec": '{"country": ["LOC"]}',
                        "label thresholds: unknown label": '{"spouse": 0.3}'}[case])
    extra, culprit = [flag, str(options)], options
  assert predict_cli.main(["--checkpoint", str(checkpoint), *args, *extra]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and re.search(re.escape(str(culprit)), err), err
  assert not (tmp_path / "out.jsonl").exists()


def test_decoding_leaves_the_garbage_collector_as_it_was():
  """Decoding pauses Python's cyclic GC (many small dicts) and restores it,
  also after an error, and leaves a disabled collector disabled."""
  import gc
  assert gc.isenabled()
  with pytest.raises(RuntimeError):
    with decoding.gc_paused():
      assert not gc.isenabled()
      raise RuntimeError("in decoding")
  assert gc.isenabled()
  gc.disable()
  try:
    with decoding.gc_paused():
      pass
    assert not gc.isenabled()
  finally:
    gc.enable()

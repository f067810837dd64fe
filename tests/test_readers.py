"""Readers, writers, schema and validation messages (offline, fast)."""
from __future__ import annotations

import copy
import json
import re
import warnings

import pytest

from glidre_jax.data.assets import asset_path
from glidre_jax.data.documents import Document, Entity, Mention, Relation
from glidre_jax.data.readers import DataError, normalize_cdr, read_docred, read_glidre
from glidre_jax.data.writers import to_docred_dict, to_glidre_dict, write_docred, write_glidre
from glidre_jax.data.relations import RelationSchema, UnknownRelationError

from conftest import SHARED_DATA as SHARED
from conftest import packaged_or_shared as _data




@pytest.fixture(scope="module")
def cdr_schema():
  return RelationSchema.from_file(_data("cdr", "rel_info.json"), exclude=["NR"])


@pytest.fixture(scope="module")
def dev_raw():
  return json.loads(_data("redocred", "dev_revised.json").read_text(encoding="utf-8"))


# -- schema ------------------------------------------------------------------


def test_schema_from_rel_info(schema):
  assert schema.num_labels == 96 == len(schema.names)
  assert schema.ids[:2] == ("P6", "P17")  # file order
  assert schema.name("P17") == "country" and schema.id("country") == "P17"
  assert schema.index("country") == 1
  assert all(n == n.lower() for n in schema.names)


def test_schema_unknown_id_names_file_and_key(schema):
  with pytest.raises(UnknownRelationError) as e:
    schema.name("P999")
  assert "P999" in str(e.value) and "rel_info.json" in str(e.value)


def test_schema_cdr_lowercased_and_without(cdr_schema):
  full = RelationSchema.from_file(_data("cdr", "rel_info.json"))
  assert full.names == ("chemical induces disease", "no relation")
  assert cdr_schema == full.without("NR")
  assert cdr_schema.ids == ("CID",)
  with pytest.raises(UnknownRelationError):
    full.without("XX")


def test_schema_from_names_and_duplicates():
  s = RelationSchema.from_names(["Founded By", "country"])
  assert s.ids == s.names == ("Founded By", "country") and s.id("country") == "country"
  with pytest.raises(ValueError, match="duplicate relation name"):
    RelationSchema.from_dict({"P1": "X", "P2": "x"})


def test_asset_path_missing():
  with pytest.raises(FileNotFoundError, match="no packaged asset"):
    asset_path("nope", "missing.json")


# -- real data ---------------------------------------------------------------


def test_read_redocred_dev(dev_docs, dev_raw, schema):
  assert len(dev_docs) == 500
  assert sum(len(d.relations) for d in dev_docs) == sum(len(d["labels"]) for d in dev_raw)
  mixed = 0
  for doc, raw in zip(dev_docs, dev_raw):
    assert doc.title == raw["title"]
    for ent, raw_ent in zip(doc.entities, raw["vertexSet"], strict=True):
      assert ent.type == raw_ent[0]["type"]  # first mention's type, as the reference does
      mixed += len({m["type"] for m in raw_ent}) > 1
      for m, rm in zip(ent.mentions, raw_ent, strict=True):
        s, e = rm["pos"]
        assert doc.words[m.start:m.end] == tuple(raw["sents"][rm["sent_id"]][s:e])
        assert m.sent_id == rm["sent_id"] and m.name == rm["name"]
    for rel, lab in zip(doc.relations, raw["labels"], strict=True):
      assert (rel.head, rel.tail, rel.label) == (lab["h"], lab["t"], schema.name(lab["r"]))
  assert mixed == 9  # Document keeps one type per entity; these 9 lose per-mention types


def test_docred_round_trip(dev_docs, dev_raw, schema, tmp_path):
  for doc, raw in zip(dev_docs, dev_raw):
    out = to_docred_dict(doc, schema)
    assert out["title"] == raw["title"] and out["sents"] == raw["sents"]
    assert out["labels"] == [{k: lab[k] for k in ("h", "t", "r", "evidence")}
                             for lab in raw["labels"]]
    for ent, raw_ent in zip(out["vertexSet"], raw["vertexSet"], strict=True):
      for m, rm in zip(ent, raw_ent, strict=True):
        assert {k: m[k] for k in ("name", "sent_id", "pos")} == \
            {k: rm[k] for k in ("name", "sent_id", "pos")}
        assert m["type"] == raw_ent[0]["type"]
  path = tmp_path / "out" / "dev.json"
  write_docred(dev_docs, path, schema)
  assert read_docred(path, schema) == dev_docs
  # A second write is byte-identical: the format round-trips exactly.
  write_docred(read_docred(path, schema), tmp_path / "again.json", schema)
  assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("name", ["docs.json", "docs.jsonl"])
def test_glidre_round_trip(dev_docs, tmp_path, name):
  docs = dev_docs[:40]
  path = tmp_path / name
  write_glidre(docs, path, ids=[10 + i for i in range(len(docs))])
  back = read_glidre(path)
  for doc, b in zip(docs, back, strict=True):
    assert b.title == str(10 + docs.index(doc)) and b.sents == (doc.words,)
    assert [[(m.start, m.end, m.name) for m in e.mentions] for e in b.entities] == \
        [[(m.start, m.end, m.name) for m in e.mentions] for e in doc.entities]
    assert all(m.sent_id == -1 for e in b.entities for m in e.mentions)
    assert [(r.head, r.label, r.tail) for r in b.relations] == \
        [(r.head, r.label, r.tail) for r in doc.relations]
  again = tmp_path / ("again" + path.suffix)
  write_glidre(back, again, ids=[int(d.title) for d in back])
  assert again.read_bytes() == path.read_bytes()
  assert read_glidre(again) == back


def test_glidre_dict_inclusive_end_and_to_docred(dev_docs, schema):
  doc = dev_docs[0]
  g = to_glidre_dict(doc, 7)
  m = doc.entities[0].mentions[0]
  assert g["id"] == 7 and g["mentions"][0]["mentions"][0]["end"] == m.end - 1
  one = Document("t", (("a", "b", "c"),), (Entity((Mention(1, 3, -1, "b c"),), "X"),),
                 (Relation(0, 0, "country"),))
  d = to_docred_dict(one, schema)
  assert d["vertexSet"] == [[{"name": "b c", "sent_id": 0, "pos": [1, 3], "type": "X"}]]
  assert d["labels"] == [{"h": 0, "t": 0, "r": "P17", "evidence": []}]


def test_cdr_train(cdr_schema):
  path = SHARED / "cdr" / "train.json"
  if not path.exists():
    pytest.skip("CDR train not available")
  # The file repeats 16 CID labels: strict mode names the first offender.
  with pytest.raises(DataError) as e:
    read_docred(path, cdr_schema)
  assert "document 10 (title '2505783')" in str(e.value) and "'labels[1]'" in str(e.value)
  with pytest.warns(UserWarning, match="dropped 16 duplicate labels"):
    docs = read_docred(path, cdr_schema, strict=False)
  assert len(docs) == 500
  rels = [(d, r) for d in docs for r in d.relations]
  assert len(rels) == 1022 and {r.label for _, r in rels} == {"chemical induces disease"}
  flipped = sum(d.entities[r.head].type == "DISE" for d, r in rels)
  assert flipped > 250
  norm = normalize_cdr(docs)
  assert sum(len(d.relations) for d in norm) == 1022
  for d in norm:
    for r in d.relations:
      assert (d.entities[r.head].type, d.entities[r.tail].type) == ("CHEM", "DISE")


def _cdr_doc(relations, types=("CHEM", "DISE", "CHEM")):
  ents = tuple(Entity((Mention(i, i + 1, 0, f"w{i}"),), t) for i, t in enumerate(types))
  return Document("cdr", (("w0", "w1", "w2"),), ents, tuple(relations))


def test_normalize_cdr_collapses_and_rejects():
  doc = _cdr_doc([Relation(1, 0, "cid", (0,)), Relation(0, 1, "cid", (1,)), Relation(2, 1, "cid")])
  with pytest.warns(UserWarning, match="dropped 1 duplicate"):
    (out,) = normalize_cdr([doc])
  assert out.relations == (Relation(0, 1, "cid", (0, 1)), Relation(2, 1, "cid"))
  bad = _cdr_doc([Relation(0, 1, "cid"), Relation(0, 2, "cid")])
  with pytest.raises(DataError) as e:
    normalize_cdr([doc, bad])
  msg = str(e.value)
  assert "document 1 (title 'cdr')" in msg and "'relations[1]'" in msg and "CHEM" in msg


# -- malformed DocRED input --------------------------------------------------


def _good():
  return {"title": "bad",
          "sents": [["Paris", "is", "in", "France", "."], ["It", "is", "big", "."]],
          "vertexSet": [[{"name": "Paris", "sent_id": 0, "pos": [0, 1], "type": "LOC"},
                         {"name": "It", "sent_id": 1, "pos": [0, 1], "type": "LOC"}],
                        [{"name": "France", "sent_id": 0, "pos": [3, 4], "type": "LOC"}]],
          "labels": [{"h": 0, "t": 1, "r": "P17", "evidence": [0]}]}


def _set(path, value):
  def mutate(doc):
    *keys, last = path
    obj = doc
    for k in keys:
      obj = obj[k]
    if value is _DELETE:
      del obj[last]
    else:
      obj[last] = value
  return mutate


_DELETE = object()

BAD_DOCRED = {
    "sents_not_list": (_set(["sents"], "Paris is"), "sents", "expected list"),
    "vertexset_not_list": (_set(["vertexSet"], {}), "vertexSet", "expected list"),
    "labels_not_list": (_set(["labels"], {"h": 0}), "labels", "expected list"),
    "entity_not_list": (_set(["vertexSet", 1], {}), "vertexSet[1]", "expected list"),
    "missing_sents": (_set(["sents"], _DELETE), "sents", "missing key"),
    "missing_vertexset": (_set(["vertexSet"], _DELETE), "vertexSet", "missing key"),
    "missing_pos": (_set(["vertexSet", 0, 1, "pos"], _DELETE), "vertexSet[0][1].pos", "missing"),
    "missing_r": (_set(["labels", 0, "r"], _DELETE), "labels[0].r", "missing key"),
    "empty_sents": (_set(["sents"], []), "sents", "empty"),
    "empty_vertexset": (_set(["vertexSet"], []), "vertexSet", "empty"),
    "empty_sentence": (_set(["sents", 1], []), "sents[1]", "empty sentence"),
    "sent_id_out_of_range": (_set(["vertexSet", 1, 0, "sent_id"], 2),
                             "vertexSet[1][0].sent_id", "out of range"),
    "pos_outside_sentence": (_set(["vertexSet", 0, 1, "pos"], [3, 5]),
                             "vertexSet[0][1].pos", "inside sentence 1"),
    "pos_empty_span": (_set(["vertexSet", 0, 0, "pos"], [2, 2]), "vertexSet[0][0].pos", "[2, 2)"),
    "pos_not_pair": (_set(["vertexSet", 0, 0, "pos"], [1]), "vertexSet[0][0].pos", "[start, end]"),
    "entity_no_mentions": (_set(["vertexSet", 1], []), "vertexSet[1]", "no mentions"),
    "label_h_out_of_range": (_set(["labels", 0, "h"], 2), "labels[0].h", "out of range"),
    "label_t_negative": (_set(["labels", 0, "t"], -1), "labels[0].t", "out of range"),
    "label_h_bool": (_set(["labels", 0, "h"], True), "labels[0].h", "expected int"),
    "unknown_relation": (_set(["labels", 0, "r"], "P999"), "labels[0].r", "P999"),
    "bad_evidence": (_set(["labels", 0, "evidence"], [5]), "labels[0].evidence", "sentence"),
    "duplicate_label": (lambda d: d["labels"].append(dict(d["labels"][0], evidence=[1])),
                        "labels[1]", "duplicate label"),
}


@pytest.mark.parametrize("kind", sorted(BAD_DOCRED))
def test_docred_malformed(kind, schema, tmp_path):
  mutate, field, fragment = BAD_DOCRED[kind]
  bad = _good()
  mutate(bad)
  path = tmp_path / f"{kind}.json"
  path.write_text(json.dumps([dict(_good(), title="ok"), bad]))
  with pytest.raises(DataError) as e:
    read_docred(path, schema)
  msg = str(e.value)
  assert str(path) in msg and "document 1 (title 'bad')" in msg, msg
  assert f"field {field!r}" in msg and fragment in msg, msg
  assert e.value.doc_index == 1 and e.value.field == field


def test_docred_missing_title_and_not_object(schema, tmp_path):
  path = tmp_path / "t.json"
  doc = _good()
  del doc["title"]
  path.write_text(json.dumps([doc]))
  with pytest.raises(DataError, match=r"document 0: field 'title': missing key"):
    read_docred(path, schema)
  path.write_text(json.dumps([_good(), 3]))
  with pytest.raises(DataError, match=r"document 1: expected a JSON object"):
    read_docred(path, schema)


def test_docred_bad_json_and_top_level(schema, tmp_path):
  path = tmp_path / "broken.json"
  path.write_text('[\n{"title": "x",,}]')
  with pytest.raises(DataError, match=r"broken\.json: invalid JSON at line 2 column"):
    read_docred(path, schema)
  path.write_text(json.dumps(_good()))
  with pytest.raises(DataError, match=r"broken\.json: top level must be a JSON list.*dict"):
    read_docred(path, schema)


def test_docred_lenient_dedup_test_split_and_nr(schema, cdr_schema, tmp_path):
  doc = _good()
  doc["labels"].append(dict(doc["labels"][0], evidence=[1, 0]))
  path = tmp_path / "d.json"
  path.write_text(json.dumps([doc]))
  with pytest.warns(UserWarning, match="dropped 1 duplicate labels in 1 documents"):
    (d,) = read_docred(path, schema, strict=False)
  assert d.relations == (Relation(0, 1, "country", (0, 1)),)
  del doc["labels"]  # test split
  path.write_text(json.dumps([doc]))
  assert read_docred(path, schema)[0].relations == ()
  doc["labels"] = [{"h": 0, "t": 1, "r": "NR", "evidence": [None]},
                   {"h": 1, "t": 0, "r": "CID", "evidence": [None]},
                   {"h": 0, "t": 1, "r": "NR", "evidence": [None]}]  # repeated NR is ignored
  path.write_text(json.dumps([doc]))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    (d,) = read_docred(path, cdr_schema)
  assert d.relations == (Relation(1, 0, "chemical induces disease"),)


# -- malformed GLiDRE input --------------------------------------------------


def _glidre_good():
  return {"id": 3, "tokenized_text": ["Paris", "is", "in", "France"],
          "mentions": [{"id": 0, "type": "LOC", "mentions": [{"value": "Paris", "start": 0,
                                                                "end": 0}]},
                       {"id": 1, "type": "LOC", "mentions": [{"value": "France", "start": 3,
                                                                "end": 3}]}],
          "relations": [[0, "country", 1]]}


BAD_GLIDRE = {
    "missing_text": (_set(["tokenized_text"], _DELETE), "tokenized_text", "missing key"),
    "empty_text": (_set(["tokenized_text"], []), "tokenized_text", "empty"),
    "mentions_not_list": (_set(["mentions"], {}), "mentions", "expected list"),
    "empty_entities": (_set(["mentions"], []), "mentions", "empty"),
    "entity_id_order": (_set(["mentions", 1, "id"], 5), "mentions[1].id", "0..E-1"),
    "entity_no_mentions": (_set(["mentions", 0, "mentions"], []), "mentions[0].mentions",
                           "no mentions"),
    "mention_outside_text": (_set(["mentions", 1, "mentions", 0, "end"], 4),
                             "mentions[1].mentions[0]", "outside the text of 4 words"),
    "mention_start_after_end": (_set(["mentions", 1, "mentions", 0, "start"], 4),
                                "mentions[1].mentions[0]", "empty or outside"),
    "missing_value": (_set(["mentions", 0, "mentions", 0, "value"], _DELETE),
                      "mentions[0].mentions[0].value", "missing key"),
    "relation_not_triple": (_set(["relations", 0], [0, "country"]), "relations[0]",
                            "[head, relation name, tail]"),
    "relation_entity_out_of_range": (_set(["relations", 0, 2], 2), "relations[0][2]",
                                     "out of range"),
    "relation_duplicate": (lambda d: d["relations"].append([0, "country", 1]), "relations[1]",
                           "duplicate label"),
}


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("kind", sorted(BAD_GLIDRE))
def test_glidre_malformed(kind, suffix, tmp_path):
  mutate, field, fragment = BAD_GLIDRE[kind]
  bad = _glidre_good()
  mutate(bad)
  records = [dict(_glidre_good(), id=0), bad]
  path = tmp_path / f"{kind}{suffix}"
  if suffix == ".json":
    path.write_text(json.dumps(records))
  else:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
  with pytest.raises(DataError) as e:
    read_glidre(path)
  msg = str(e.value)
  assert str(path) in msg and "document 1 (title '3')" in msg, msg
  assert f"field {field!r}" in msg and fragment in msg, msg


def test_glidre_bad_json_lines_and_defaults(tmp_path):
  path = tmp_path / "g.jsonl"
  path.write_text(json.dumps(_glidre_good()) + "\n\n{oops\n")
  with pytest.raises(DataError, match=r"g\.jsonl: invalid JSON on line 3 column 2"):
    read_glidre(path)
  path.write_text('[{"id": 1,]')
  with pytest.raises(DataError, match=r"invalid JSON at line 1 column"):
    read_glidre(path)
  path.write_text("  \n")
  with pytest.raises(DataError, match="empty file"):
    read_glidre(path)
  rec = _glidre_good()
  del rec["relations"]  # inference input
  path.write_text(json.dumps(copy.deepcopy(rec)) + "\n")
  (doc,) = read_glidre(path)
  assert doc.relations == () and doc.title == "3" and doc.sents == (tuple(rec["tokenized_text"]),)
  assert doc.entities[1].mentions == (Mention(3, 4, -1, "France"),)


# -- documents the scorer cannot tell apart, empty words ---------------------


def test_repeated_titles_and_ids_are_errors(schema, tmp_path):
  path = tmp_path / "twice.json"
  path.write_text(json.dumps([dict(_good(), title="A"), dict(_good(), title="B"),
                              dict(_good(), title="A")]))
  with pytest.raises(DataError) as e:
    read_docred(path, schema)
  msg = str(e.value)
  assert str(path) in msg and "document 2 (title 'A')" in msg and "field 'title'" in msg, msg
  assert "repeats that of document 0" in msg, msg
  path = tmp_path / "twice.jsonl"
  path.write_text("".join(json.dumps(dict(_glidre_good(), id=i)) + "\n" for i in (4, 5, 4)))
  with pytest.raises(DataError, match=r"twice\.jsonl: document 2 \(title '4'\): field 'id': "
                                      r"id '4' repeats that of document 0"):
    read_glidre(path)


def test_tfds_records_refuse_repeated_titles(tmp_path):
  from glidre_jax.data import tfds_builders
  path = tmp_path / "dev.json"
  path.write_text(json.dumps([dict(_good(), title="A"), dict(_good(), title="A")]))
  with pytest.raises(DataError, match=r"dev\.json: document 1 \(title 'A'\).*repeats"):
    list(tfds_builders._JsonDocsBuilder._generate_examples(None, path))


@pytest.mark.parametrize("fmt", ["docred", "glidre"])
def test_empty_word_is_an_error(fmt, schema, tmp_path):
  path = tmp_path / f"{fmt}.json"
  if fmt == "docred":
    bad = _good()
    bad["sents"][1][1] = ""
    path.write_text(json.dumps([dict(_good(), title="ok"), bad]))
    field, read = "sents[1][1]", lambda: read_docred(path, schema)
  else:
    bad = _glidre_good()
    bad["tokenized_text"][2] = ""
    path.write_text(json.dumps([dict(_glidre_good(), id=0), bad]))
    field, read = "tokenized_text[2]", lambda: read_glidre(path)
  with pytest.raises(DataError, match=rf"document 1 .*field '{re.escape(field)}': empty word"):
    read()


def test_shipped_and_shared_data_load_cleanly(schema, cdr_schema, redocred_dev_path):
  """No repeated titles or empty words in the real files (a "\\xa0" word is fine)."""
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    docs = read_docred(redocred_dev_path, schema)
  assert len(docs) == 500 and sum("\xa0" in d.words for d in docs) == 30
  for split in ("train", "dev"):
    path = SHARED / "cdr" / f"{split}.json"
    if path.exists():
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CDR files' duplicate-label notes
        assert len(read_docred(path, cdr_schema, strict=False)) == 500

"""Readers and writers for the DocRED / Re-DocRED format and the reference
GLiDRE format (spec §4), with validation that names file, document and field.

Both formats become `Document`s: word offsets are document-level and
end-exclusive, relation labels are lowercased names (through a
`RelationSchema` for DocRED ids).
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterable, Sequence

from glidre_jax.data.documents import Document, Entity, Mention, Relation
from glidre_jax.data.relations import RelationSchema, UnknownRelationError


class DataError(ValueError):
  """Malformed input; the message says file, document (index and title) and field."""

  def __init__(self, message: str, *, path: str | None = None, doc_index: int | None = None,
               title: str | None = None, field: str | None = None):
    self.path, self.doc_index, self.title, self.field = path, doc_index, title, field
    where = []
    if path is not None:
      where.append(str(path))
    if doc_index is not None:
      where.append(f"document {doc_index}" + (f" (title {title!r})" if title is not None else ""))
    if field:
      where.append(f"field {field!r}")
    super().__init__(": ".join(where + [message]))


@dataclasses.dataclass
class _Where:
  """Which document is being read, so every error can say so."""
  path: str | None
  index: int | None
  title: str | None = None

  def error(self, field: str | None, message: str) -> DataError:
    return DataError(message, path=self.path, doc_index=self.index, title=self.title, field=field)


_KINDS = {"list": list, "dict": dict, "str": str, "int": int}


def _check(value, kind: str, where: _Where, field: str):
  # bool is an int subclass in Python; true/false is never a valid index.
  ok = isinstance(value, _KINDS[kind]) and not (kind == "int" and isinstance(value, bool))
  if not ok:
    raise where.error(field, f"expected {'a JSON object' if kind == 'dict' else kind}, "
                             f"got {type(value).__name__} {_short(value)}")
  return value


def _get(obj: dict, key: str, kind: str, where: _Where, prefix: str = ""):
  field = f"{prefix}.{key}" if prefix else key
  if key not in obj:
    raise where.error(field, "missing key")
  return _check(obj[key], kind, where, field)


def _get_items(obj: dict, key: str, where: _Where, what: str) -> list:
  """A non-empty list at `key` (a document needs at least one `what`)."""
  items = _get(obj, key, "list", where)
  if not items:
    raise where.error(key, f"empty: a document needs at least one {what}")
  return items


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


def json_records(text: str, path) -> list:
  """The values of a JSON list, or of JSON lines (blank lines skipped), in
  `text` read from `path` (named in every error)."""
  if text.lstrip().startswith("["):
    try:
      return json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}",
                      path=os.fspath(path)) from e
  records = []
  for line_no, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON on line {line_no} column {e.colno}: {e.msg}",
                        path=os.fspath(path)) from e
  return records


def _load_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path=path) from e
  except UnicodeDecodeError as e:
    raise DataError(f"not UTF-8 text: {e}", path=path) from e


def _dedup(relations: list[tuple[str, str, Relation]], where: _Where, strict: bool) -> tuple[
    tuple[Relation, ...], int]:
  """Drop repeated (head, tail, label); strict mode refuses them instead.

  `relations` holds (field it came from, relation as the file spells it,
  relation). A dropped duplicate's evidence is merged into the first one.
  """
  first: dict[tuple[int, int, str], int] = {}
  out: list[Relation] = []
  for field, shown, rel in relations:
    key = (rel.head, rel.tail, rel.label)
    if key not in first:
      first[key] = len(out)
      out.append(rel)
      continue
    if strict:
      raise where.error(field, f"duplicate label (h={rel.head}, t={rel.tail}, r={shown!r}); "
                               "pass strict=False to drop duplicates")
    kept = out[first[key]]
    extra = tuple(e for e in rel.evidence if e not in kept.evidence)
    out[first[key]] = dataclasses.replace(kept, evidence=kept.evidence + extra)
  return tuple(out), len(relations) - len(out)


def _warn_dups(path: str | None, counts: list[tuple[int, str, int]]):
  # One warning per file, not per document: CDR alone has a dozen such documents.
  if counts:
    total = sum(n for _, _, n in counts)
    i, title, _ = counts[0]
    warnings.warn(f"{path}: dropped {total} duplicate labels in {len(counts)} documents "
                  f"(first: document {i}, title {title!r})", stacklevel=3)


def check_unique_titles(titles: Iterable[str], path: str | None, *, key: str = "title"):
  """Every document of a file needs its own title (GLiDRE format: id): the
  scorer keys gold facts and predictions on it, so two documents sharing one
  would merge their facts and score wrongly. None: no title (checked elsewhere)."""
  first: dict[str, int] = {}
  for i, title in enumerate(titles):
    if title is None:
      continue
    if title in first:
      raise DataError(f"{key} {title!r} repeats that of document {first[title]}; gold facts "
                      f"are keyed on the {key}, so every document needs its own",
                      path=path, doc_index=i, title=title, field=key)
    first[title] = i


def _check_words(words: list, where: _Where, field: str):
  for w, word in enumerate(words):
    _check(word, "str", where, f"{field}[{w}]")
    if not word:
      raise where.error(f"{field}[{w}]", "empty word: a word needs at least one character")


# -- DocRED / Re-DocRED ------------------------------------------------------


def read_docred(path: str | os.PathLike, schema: RelationSchema, *,
                drop_relations: Iterable[str] = ("NR",), strict: bool = True) -> list[Document]:
  """Read a DocRED-format split (Re-DocRED, DocRED, CDR).

  Labels whose id is in `drop_relations` (CDR's explicit "NR" no-relation)
  are dropped before the schema lookup. Duplicate (h, t, r) labels raise
  unless `strict=False`, which drops them with one warning. An entity's type
  is its first mention's type (as the reference GLiDRE converter does).
  Titles must be unique within the file; words must not be empty strings.
  """
  path = os.fspath(path)
  data = _load_json(path)
  if not isinstance(data, list):
    raise DataError(f"top level must be a JSON list of documents, got {type(data).__name__}",
                    path=path)
  drop = frozenset(drop_relations)
  docs, dups = [], []
  for i, raw in enumerate(data):
    doc, n = _docred_doc(raw, _Where(path, i), schema, drop, strict)
    docs.append(doc)
    if n:
      dups.append((i, doc.title, n))
  check_unique_titles((d.title for d in docs), path)
  _warn_dups(path, dups)
  return docs


def docred_document(raw, schema: RelationSchema, *, index: int | None = None,
                    drop_relations: Iterable[str] = ("NR",), strict: bool = True) -> Document:
  """One DocRED-format document (a dict of a split file), validated as `read_docred`."""
  return _docred_doc(raw, _Where(None, index), schema, frozenset(drop_relations), strict)[0]


def _docred_doc(raw, where: _Where, schema: RelationSchema, drop: frozenset[str],
                strict: bool) -> tuple[Document, int]:
  _check(raw, "dict", where, None)
  where.title = _get(raw, "title", "str", where)
  sents = _get_items(raw, "sents", where, "sentence")
  for k, sent in enumerate(sents):
    _check(sent, "list", where, f"sents[{k}]")
    if not sent:
      raise where.error(f"sents[{k}]", "empty sentence")
    _check_words(sent, where, f"sents[{k}]")
  starts = [0]
  for sent in sents[:-1]:
    starts.append(starts[-1] + len(sent))

  vertex_set = _get_items(raw, "vertexSet", where, "entity")
  entities = []
  for e, ent in enumerate(vertex_set):
    field = f"vertexSet[{e}]"
    _check(ent, "list", where, field)
    if not ent:
      raise where.error(field, "entity has no mentions")
    mentions = []
    for m, raw_m in enumerate(ent):
      mf = f"{field}[{m}]"
      _check(raw_m, "dict", where, mf)
      name = _get(raw_m, "name", "str", where, mf)
      sid = _get(raw_m, "sent_id", "int", where, mf)
      pos = _get(raw_m, "pos", "list", where, mf)
      _get(raw_m, "type", "str", where, mf)
      if not 0 <= sid < len(sents):
        raise where.error(f"{mf}.sent_id", f"sentence {sid} out of range "
                                           f"(document has {len(sents)} sentences)")
      if len(pos) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pos):
        raise where.error(f"{mf}.pos", f"expected [start, end] integers, got {_short(pos)}")
      s, t = pos
      if not 0 <= s < t <= len(sents[sid]):
        raise where.error(f"{mf}.pos", f"[{s}, {t}) is not a non-empty span inside sentence "
                                       f"{sid} ({len(sents[sid])} words)")
      mentions.append(Mention(starts[sid] + s, starts[sid] + t, sid, name))
    entities.append(Entity(tuple(mentions), ent[0]["type"]))

  labels = _check(raw.get("labels", []), "list", where, "labels")  # test splits have none
  relations = []
  for j, lab in enumerate(labels):
    lf = f"labels[{j}]"
    _check(lab, "dict", where, lf)
    h = _get(lab, "h", "int", where, lf)
    t = _get(lab, "t", "int", where, lf)
    r = _get(lab, "r", "str", where, lf)
    for key, idx in (("h", h), ("t", t)):
      if not 0 <= idx < len(entities):
        raise where.error(f"{lf}.{key}", f"entity {idx} out of range ({len(entities)} entities)")
    if r in drop:
      continue
    try:
      name = schema.name(r)
    except UnknownRelationError as err:
      raise where.error(f"{lf}.r", str(err)) from None
    evidence = _check(lab.get("evidence", []), "list", where, f"{lf}.evidence")
    ev = []
    for x in evidence:
      if x is None:
        continue  # CDR writes [None]: "not annotated", same as no evidence
      if not (isinstance(x, int) and not isinstance(x, bool) and 0 <= x < len(sents)):
        raise where.error(f"{lf}.evidence", f"{_short(x)} is not a sentence index "
                                            f"(document has {len(sents)} sentences)")
      ev.append(x)
    relations.append((lf, r, Relation(h, t, name, tuple(ev))))
  rels, n_dups = _dedup(relations, where, strict)
  doc = Document(where.title, tuple(tuple(s) for s in sents), tuple(entities), rels)
  return doc, n_dups


# -- reference GLiDRE format -------------------------------------------------


def read_glidre(path: str | os.PathLike, *, strict: bool = True) -> list[Document]:
  """Read the reference GLiDRE format: a JSON list or JSONL of documents.

  Mention `end` is inclusive there and becomes exclusive here; the text is
  one sentence (sent_id -1); the title is str(id), unique within the file.
  """
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise DataError(f"not UTF-8 text: {e}", path=path) from e
  body = text.lstrip()
  if not body:
    raise DataError("empty file (expected a JSON list or JSON lines)", path=path)
  data = json_records(text, path)
  if not isinstance(data, list):
    raise DataError(f"top level must be a JSON list of documents, got {type(data).__name__}",
                    path=path)
  docs, dups = [], []
  for i, raw in enumerate(data):
    doc, n = _glidre_doc(raw, _Where(path, i), strict)
    docs.append(doc)
    if n:
      dups.append((i, doc.title, n))
  check_unique_titles((d.title for d in docs), path, key="id")
  _warn_dups(path, dups)
  return docs


def glidre_document(raw, *, index: int | None = None, strict: bool = True) -> Document:
  """One reference-GLiDRE-format document dict, validated as `read_glidre`."""
  return _glidre_doc(raw, _Where(None, index), strict)[0]


def _glidre_doc(raw, where: _Where, strict: bool) -> tuple[Document, int]:
  _check(raw, "dict", where, None)
  if "id" not in raw:
    raise where.error("id", "missing key")
  if not isinstance(raw["id"], (int, str)) or isinstance(raw["id"], bool):
    raise where.error("id", f"expected an int or string, got {_short(raw['id'])}")
  where.title = str(raw["id"])
  words = _get_items(raw, "tokenized_text", where, "word")
  _check_words(words, where, "tokenized_text")
  raw_ents = _get_items(raw, "mentions", where, "entity")
  entities = []
  for k, ent in enumerate(raw_ents):
    field = f"mentions[{k}]"
    _check(ent, "dict", where, field)
    eid = _get(ent, "id", "int", where, field)
    if eid != k:
      # Relations refer to entities by id; ids must be list positions 0..E-1.
      raise where.error(f"{field}.id", f"entity ids must be 0..E-1 in list order: "
                                       f"expected {k}, got {eid}")
    etype = _get(ent, "type", "str", where, field)
    raw_ms = _get(ent, "mentions", "list", where, field)
    if not raw_ms:
      raise where.error(f"{field}.mentions", "entity has no mentions")
    mentions = []
    for m, raw_m in enumerate(raw_ms):
      mf = f"{field}.mentions[{m}]"
      _check(raw_m, "dict", where, mf)
      value = _get(raw_m, "value", "str", where, mf)
      start = _get(raw_m, "start", "int", where, mf)
      end = _get(raw_m, "end", "int", where, mf)
      if not 0 <= start <= end < len(words):
        raise where.error(mf, f"span [{start}, {end}] (end inclusive) is empty or outside the "
                              f"text of {len(words)} words")
      mentions.append(Mention(start, end + 1, -1, value))
    entities.append(Entity(tuple(mentions), etype))

  raw_rels = _check(raw.get("relations", []), "list", where, "relations")  # absent at inference
  relations = []
  for j, rel in enumerate(raw_rels):
    rf = f"relations[{j}]"
    if not (isinstance(rel, list) and len(rel) == 3):
      raise where.error(rf, f"expected [head, relation name, tail], got {_short(rel)}")
    h = _check(rel[0], "int", where, f"{rf}[0]")
    name = _check(rel[1], "str", where, f"{rf}[1]")
    t = _check(rel[2], "int", where, f"{rf}[2]")
    if not name:
      raise where.error(f"{rf}[1]", "empty relation name")
    for pos, idx in ((0, h), (2, t)):
      if not 0 <= idx < len(entities):
        raise where.error(f"{rf}[{pos}]", f"entity {idx} out of range ({len(entities)} entities)")
    relations.append((rf, name, Relation(h, t, name)))
  rels, n_dups = _dedup(relations, where, strict)
  return Document(where.title, (tuple(words),), tuple(entities), rels), n_dups


# -- CDR ---------------------------------------------------------------------

# CDR's relations are oriented chemical -> disease, and only such pairs are
# candidates (data/featurize.py's cdr_pair_filter).
CDR_ORIENTATION = ("CHEM", "DISE")


def normalize_cdr(docs: Iterable[Document], *, chemical: str = CDR_ORIENTATION[0],
                  disease: str = CDR_ORIENTATION[1]) -> list[Document]:
  """Orient every relation chemical -> disease (CDR files mix both directions).

  A relation between two entities that are not one chemical and one disease
  is an error. A fact given in both directions collapses to one.
  """
  out, dups = [], []
  for i, doc in enumerate(docs):
    where = _Where(None, i, doc.title)
    rels = []
    for j, rel in enumerate(doc.relations):
      th, tt = doc.entities[rel.head].type, doc.entities[rel.tail].type
      if (th, tt) == (disease, chemical):
        rel = dataclasses.replace(rel, head=rel.tail, tail=rel.head)
      elif (th, tt) != (chemical, disease):
        raise where.error(f"relations[{j}]", f"relation {rel.label!r} joins entity {rel.head} "
                                             f"({th}) and entity {rel.tail} ({tt}); expected "
                                             f"one {chemical} and one {disease}")
      rels.append((f"relations[{j}]", rel.label, rel))
    merged, n = _dedup(rels, where, strict=False)
    if n:
      dups.append((i, doc.title, n))
    out.append(dataclasses.replace(doc, relations=merged))
  _warn_dups("normalize_cdr", dups)
  return out

"""Prediction inputs -> `Document`s: DocRED dicts, reference GLiDRE dicts, or raw
text with entities given as character-offset mentions.

Raw text is split into words by `split_words`, the official GLiDRE's
splitter (GLiNER's "whitespace" WordsSplitter: runs of word characters, which
may be joined by single hyphens or underscores, and every other non-space
character alone), so an official checkpoint sees the words it would see
through its own API; a mention must start and end on word boundaries of that
split.

    {"title": "t1", "text": "Marie Curie was born in Warsaw.",
     "entities": [{"type": "PER", "mentions": [[0, 11]]},
                  {"type": "LOC", "mentions": [{"start": 24, "end": 30}]}]}

Offsets are Python string (code point) offsets, end-exclusive.
"""
from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Mapping, Sequence

from glidre_jax.data import readers
from glidre_jax.data.documents import Document, Entity, Mention
from glidre_jax.data.relations import RelationSchema

# GLiNER's WhitespaceTokenSplitter pattern ("New-York", "foo_bar" are one word).
_WORD = re.compile(r"\w+(?:[-_]\w+)*|\S")
_NO_SCHEMA = RelationSchema((), (), "<predict: gold labels ignored>")


class InputError(ValueError):
  """A prediction input that cannot be read; the message names document and field."""


@dataclasses.dataclass(frozen=True)
class Words:
  """Words of a text with their [start, end) character offsets."""
  words: tuple[str, ...]
  starts: tuple[int, ...]
  ends: tuple[int, ...]


def split_words(text: str) -> Words:
  spans = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]
  return Words(*(tuple(col) for col in zip(*spans))) if spans else Words((), (), ())


def to_documents(items: Sequence) -> list[Document]:
  """Every prediction input as a Document without gold relations."""
  if isinstance(items, (str, Mapping, Document)):
    raise TypeError("pass a list of documents (a single one as [doc])")
  return [to_document(item, i) for i, item in enumerate(items)]


def to_document(item, index: int = 0) -> Document:
  """One input: Document, DocRED dict ("vertexSet"), GLiDRE dict
  ("tokenized_text") or raw text dict ("text" + "entities")."""
  if isinstance(item, Document):
    doc = item
  elif isinstance(item, Mapping):
    # Gold labels are irrelevant here (and may use ids outside any schema).
    raw = {k: v for k, v in item.items() if k not in ("labels", "relations")}
    try:
      if "vertexSet" in raw:
        doc = readers.docred_document(raw, _NO_SCHEMA, index=index)
      elif "tokenized_text" in raw:
        doc = readers.glidre_document(raw, index=index)
      elif "text" in raw:
        doc = document_from_text(raw, index)
      else:
        raise InputError(f"document {index}: expected a DocRED dict (vertexSet), a GLiDRE "
                         f"dict (tokenized_text) or raw text (text + entities); got keys "
                         f"{sorted(raw)}")
    except readers.DataError as err:
      raise InputError(str(err)) from None
  else:
    raise InputError(f"document {index}: expected a Document or a dict, "
                     f"got {type(item).__name__}")
  if not doc.entities:
    raise InputError(f"document {index} ({doc.title!r}): no entities, nothing to predict")
  return dataclasses.replace(doc, relations=())


def document_from_text(raw: Mapping, index: int = 0) -> Document:
  """{"text", "entities", optional "title"/"id"} -> Document (one sentence)."""
  text = raw["text"]
  title = str(raw.get("title", raw.get("id", f"document {index}")))
  where = f"document {index} ({title!r})"
  if not isinstance(text, str) or not text.strip():
    raise InputError(f"{where}: field 'text' must be a non-empty string")
  entities = raw.get("entities")
  if not isinstance(entities, list) or not entities:
    raise InputError(f"{where}: field 'entities' must be a non-empty list "
                     "(no entities, nothing to predict)")
  words = split_words(text)
  out = []
  for e, ent in enumerate(entities):
    field = f"{where}: entities[{e}]"
    etype, raw_mentions = _entity_parts(ent, field)
    spans = [_span(m, f"{field}.mentions[{j}]") for j, m in enumerate(raw_mentions)]
    mentions = []
    for j, (s, t) in enumerate(spans):
      mf = f"{field}.mentions[{j}]"
      first, last = _word_span(words, text, s, t, mf)
      for k, (s2, t2) in enumerate(spans[:j]):  # few mentions per entity
        if s < t2 and s2 < t:
          raise InputError(f"{mf} [{s}, {t}) {text[s:t]!r} overlaps mentions[{k}] "
                           f"[{s2}, {t2}) of the same entity")
      mentions.append(Mention(first, last, 0, text[s:t]))
    out.append(Entity(tuple(mentions), etype))
  return Document(title, (words.words,), tuple(out), ())


def _entity_parts(ent, field: str) -> tuple[str, list]:
  """(type, mentions) of {"mentions": [...], "type"}, {"start", "end", "type"}
  (one mention) or a bare list of mentions."""
  if isinstance(ent, list):
    etype, mentions = "", ent
  elif isinstance(ent, Mapping):
    etype = ent.get("type", ent.get("label", ""))
    mentions = ent["mentions"] if "mentions" in ent else [ent] if "start" in ent else None
    if not isinstance(etype, str):
      raise InputError(f"{field}.type: expected a string, got {etype!r}")
  else:
    mentions = None
  if not isinstance(mentions, list) or not mentions:
    raise InputError(f"{field}: expected {{'mentions': [[start, end], ...], 'type': ...}} "
                     f"with at least one mention, got {_short(ent)}")
  return etype, mentions


def _span(m, field: str) -> tuple[int, int]:
  pair = (m.get("start"), m.get("end")) if isinstance(m, Mapping) else m
  if not (isinstance(pair, (list, tuple)) and len(pair) == 2
          and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)):
    raise InputError(f"{field}: expected [start, end] or {{'start', 'end'}} character offsets, "
                     f"got {_short(m)}")
  return pair[0], pair[1]


def _word_span(words: Words, text: str, s: int, t: int, field: str) -> tuple[int, int]:
  """Word range [first, last) of the character span [s, t), or a clear error."""
  if not 0 <= s < t <= len(text):
    raise InputError(f"{field}: [{s}, {t}) is not a non-empty span inside the text "
                     f"({len(text)} characters)")
  first = bisect.bisect_left(words.starts, s)
  if first == len(words.starts) or words.starts[first] != s:
    raise InputError(f"{field} [{s}, {t}) {text[s:t]!r}: start {s} is not the start of a "
                     f"word{_around(words, s)}")
  last = bisect.bisect_left(words.ends, t)
  if last == len(words.ends) or words.ends[last] != t:
    raise InputError(f"{field} [{s}, {t}) {text[s:t]!r}: end {t} is not the end of a "
                     f"word{_around(words, t)}")
  return first, last + 1


def _around(words: Words, offset: int) -> str:
  """Which word an offset falls into, for error messages."""
  i = bisect.bisect_right(words.starts, offset) - 1
  if 0 <= i < len(words.words) and words.starts[i] <= offset < words.ends[i]:
    return f" (inside {words.words[i]!r} at [{words.starts[i]}, {words.ends[i]}))"
  return " (it falls on whitespace)"


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."

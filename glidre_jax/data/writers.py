"""Documents back to files: DocRED and reference GLiDRE JSON (what
`data/readers.py` reads)."""
from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Sequence

from glidre_jax.data.documents import Document, Mention
from glidre_jax.data.relations import RelationSchema, UnknownRelationError


def _sentence_of(doc: Document, mention: Mention) -> int:
  """Sentence holding a mention read from a sentence-less format (sent_id -1)."""
  return bisect.bisect_right(doc.sent_starts, mention.start) - 1


def to_docred_dict(doc: Document, schema: RelationSchema) -> dict:
  """Document -> DocRED dict (`pos` back to sentence offsets, names back to ids)."""
  starts = doc.sent_starts
  vertex_set = []
  for e, ent in enumerate(doc.entities):
    mentions = []
    for m in ent.mentions:
      sid = m.sent_id if m.sent_id >= 0 else _sentence_of(doc, m)
      s0 = starts[sid]
      if not s0 <= m.start < m.end <= s0 + len(doc.sents[sid]):
        raise ValueError(f"document {doc.title!r}: entity {e} mention {m} does not lie inside "
                         f"sentence {sid}; DocRED positions are per sentence")
      mentions.append({"name": m.name, "sent_id": sid, "pos": [m.start - s0, m.end - s0],
                       "type": ent.type})
    vertex_set.append(mentions)
  labels = []
  for rel in doc.relations:
    try:
      rid = schema.id(rel.label)
    except UnknownRelationError as err:
      raise ValueError(f"document {doc.title!r}: {err}") from None
    labels.append({"h": rel.head, "t": rel.tail, "r": rid, "evidence": list(rel.evidence)})
  return {"title": doc.title, "sents": [list(s) for s in doc.sents],
          "vertexSet": vertex_set, "labels": labels}


def write_docred(docs: Iterable[Document], path: str | os.PathLike,
                 schema: RelationSchema) -> None:
  """Write a DocRED-format JSON list."""
  _write_json([to_docred_dict(d, schema) for d in docs], path)


def _write_json(obj, path: str | os.PathLike):
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False)


def to_glidre_dict(doc: Document, id: int | str) -> dict:  # noqa: A002 (the format's key)
  """Document -> reference GLiDRE dict (mention end inclusive, one word list)."""
  mentions = [{"id": k, "type": ent.type,
               "mentions": [{"value": m.name, "start": m.start, "end": m.end - 1}
                            for m in ent.mentions]}
              for k, ent in enumerate(doc.entities)]
  return {"id": id, "tokenized_text": list(doc.words), "mentions": mentions,
          "relations": [[r.head, r.label, r.tail] for r in doc.relations]}


def write_glidre(docs: Sequence[Document], path: str | os.PathLike, *,
                 ids: Sequence[int | str] | None = None) -> None:
  """Write the GLiDRE format; JSON lines when the path ends in .jsonl.

  `ids` defaults to positions 0..N-1 (what the reference converter writes).
  """
  docs = list(docs)
  ids = list(range(len(docs))) if ids is None else list(ids)
  if len(ids) != len(docs):
    raise ValueError(f"{len(ids)} ids for {len(docs)} documents")
  records = [to_glidre_dict(d, i) for d, i in zip(docs, ids)]
  if os.fspath(path).endswith(".jsonl"):
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      for rec in records:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
  else:
    _write_json(records, path)

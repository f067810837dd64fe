"""A user's own documents in the reference GLiDRE format, split by file.

`data.dataset = "glidre"` reads JSON / JSONL files (spec §4) into memory:
`train_file`, `eval_file` and optionally `test_file` are the splits "train",
"dev" and "test", sliced like TFDS splits ("train[:100]", "dev[-50:]").
Relation names are free text and are used as given (they are the ids too).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

from glidre_jax.data import readers
from glidre_jax.data.documents import Document
from glidre_jax.data.relations import RelationSchema

_SPLIT = re.compile(r"^\s*(\w+)\s*(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?\s*$")


def parse_split(spec: str) -> tuple[str, slice]:
  """"dev[400:]" -> ("dev", slice(400, None))."""
  match = _SPLIT.match(spec)
  if not match:
    raise ValueError(f"split {spec!r}: expected NAME or NAME[start:end] with integer bounds")
  name, start, end = match.groups()
  as_int = lambda v: int(v) if v not in (None, "") else None
  return name, slice(as_int(start), as_int(end))


class GLiDREFiles:
  """Named splits backed by GLiDRE-format files, read once each."""

  def __init__(self, files: Mapping[str, str | os.PathLike | None]):
    self.files = {name: os.fspath(path) for name, path in files.items() if path}
    self._docs: dict[str, list[Document]] = {}

  def documents(self, name: str) -> list[Document]:
    if name not in self.files:
      raise ValueError(f"split {name!r}: no file configured (known splits: {sorted(self.files)}; "
                       "set data.train_file / data.eval_file / data.test_file)")
    if name not in self._docs:
      path = self.files[name]
      if not os.path.exists(path):
        raise FileNotFoundError(f"split {name!r}: {path} does not exist")
      self._docs[name] = readers.read_glidre(path)
    return self._docs[name]

  def source(self, split: str) -> list[Document]:
    name, part = parse_split(split)
    docs = self.documents(name)[part]
    if not docs:
      raise ValueError(f"split {split!r} of {self.files[name]} selects no documents")
    return docs


def relation_names(docs: Iterable[Document]) -> tuple[str, ...]:
  """The distinct relation names of some documents, sorted."""
  return tuple(sorted({r.label for doc in docs for r in doc.relations}))


def read_label_file(path: str | os.PathLike) -> tuple[str, ...]:
  """One relation name per line (blank lines and '#' comments skipped);
  duplicates are an error. The one reader of label files (data.labels_file,
  the predict CLI's --labels)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"label file {path} does not exist")
  with open(path, encoding="utf-8") as f:
    names = [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]
  if not names:
    raise ValueError(f"label file {path} holds no label names (empty label list)")
  seen = set()
  for name in names:
    if name in seen:
      raise ValueError(f"label file {path}: duplicate label {name!r}")
    seen.add(name)
  return tuple(names)


def schema_of(names: Sequence[str], source: str) -> RelationSchema:
  if not names:
    raise ValueError(f"{source}: no relation names (documents without relations and no "
                     "data.labels_file)")
  return RelationSchema.from_names(names, source=source)

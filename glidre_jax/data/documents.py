"""In-memory documents: the one representation every reader produces and every
featurizer consumes. Word offsets are document-level and end-exclusive."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mention:
  start: int  # first word, document offset
  end: int  # one past the last word (exclusive)
  sent_id: int  # sentence index (-1 when the source format has no sentences)
  name: str  # surface string as given by the source (DocRED "name")


@dataclasses.dataclass(frozen=True)
class Entity:
  mentions: tuple[Mention, ...]
  type: str


@dataclasses.dataclass(frozen=True)
class Relation:
  head: int  # entity index
  tail: int  # entity index
  label: str  # relation *name* as the model sees it (lowercased), e.g. "country"
  evidence: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Document:
  title: str
  sents: tuple[tuple[str, ...], ...]  # sentences of words; one sentence when unknown
  entities: tuple[Entity, ...]
  relations: tuple[Relation, ...]  # de-duplicated (head, tail, label)

  @property
  def words(self) -> tuple[str, ...]:
    return tuple(w for s in self.sents for w in s)

  @property
  def sent_starts(self) -> tuple[int, ...]:
    starts, offset = [], 0
    for s in self.sents:
      starts.append(offset)
      offset += len(s)
    return tuple(starts)

  @property
  def num_words(self) -> int:
    return sum(len(s) for s in self.sents)

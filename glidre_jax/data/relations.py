"""Relation schemas: the ordered label set a dataset is trained and scored on.

Files store relation *ids* (DocRED "P17", CDR "CID"); the model sees relation
*names* (lowercased, as the reference GLiDRE feeds them to its label encoder).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping


class UnknownRelationError(KeyError):
  """A relation id or name that the schema does not know."""

  def __str__(self) -> str:
    # KeyError.__str__ would repr() the message and hide the newline-free text.
    return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class RelationSchema:
  """Relation ids and names in label order (the order of the source file)."""
  ids: tuple[str, ...]
  names: tuple[str, ...]
  # Where it came from, for error messages only; not part of equality.
  source: str = dataclasses.field(default="<memory>", compare=False)

  def __post_init__(self):
    if len(self.ids) != len(self.names):
      raise ValueError(f"{self.source}: {len(self.ids)} relation ids but {len(self.names)} names")
    for kind, values in (("id", self.ids), ("name", self.names)):
      seen = set()
      for v in values:
        if not isinstance(v, str) or not v:
          raise ValueError(f"{self.source}: relation {kind} {v!r} is not a non-empty string")
        if v in seen:
          # Two ids mapping to one name would make name->id ambiguous.
          raise ValueError(f"{self.source}: duplicate relation {kind} {v!r}")
        seen.add(v)
    # Lookup tables; frozen dataclass, so set through object.__setattr__.
    object.__setattr__(self, "_id_to_name", dict(zip(self.ids, self.names)))
    object.__setattr__(self, "_name_to_id", dict(zip(self.names, self.ids)))
    object.__setattr__(self, "_name_to_index", {n: i for i, n in enumerate(self.names)})

  # -- constructors ---------------------------------------------------------

  @classmethod
  def from_dict(cls, mapping: Mapping[str, str], *, source: str = "<dict>",
                exclude: Iterable[str] = ()) -> RelationSchema:
    """{id: name} in insertion order; names lowercased; `exclude` drops ids."""
    exclude = set(exclude)
    ids, names = [], []
    for rid, name in mapping.items():
      if not isinstance(rid, str) or not isinstance(name, str):
        raise ValueError(f"{source}: relation entry {rid!r}: {name!r} is not a string pair")
      if rid in exclude:
        continue
      ids.append(rid)
      names.append(name.strip().lower())
    return cls(tuple(ids), tuple(names), source)

  @classmethod
  def from_file(cls, path: str | os.PathLike, *, exclude: Iterable[str] = ()) -> RelationSchema:
    """Load a rel_info.json ({"P17": "country", ...})."""
    path = os.fspath(path)
    try:
      with open(path, encoding="utf-8") as f:
        mapping = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(mapping, dict):
      raise ValueError(f"{path}: expected a JSON object {{relation id: name}}, "
                       f"got {type(mapping).__name__}")
    return cls.from_dict(mapping, source=path, exclude=exclude)

  @classmethod
  def from_names(cls, names: Iterable[str], *, source: str = "<names>") -> RelationSchema:
    """Open label set: the names are their own ids (used as given, not lowercased)."""
    names = tuple(names)
    return cls(names, names, source)

  # -- lookups --------------------------------------------------------------

  @property
  def num_labels(self) -> int:
    return len(self.names)

  def __len__(self) -> int:
    return len(self.names)

  def has_id(self, rel_id: str) -> bool:
    return rel_id in self._id_to_name

  def has_name(self, name: str) -> bool:
    return name in self._name_to_id

  def name(self, rel_id: str) -> str:
    """Relation id -> lowercased name."""
    try:
      return self._id_to_name[rel_id]
    except (KeyError, TypeError):
      raise UnknownRelationError(
          f"unknown relation id {rel_id!r} (not in {self.source}; "
          f"{self.num_labels} known ids, e.g. {list(self.ids[:3])})") from None

  def id(self, name: str) -> str:
    """Relation name -> id."""
    try:
      return self._name_to_id[name]
    except (KeyError, TypeError):
      raise UnknownRelationError(f"unknown relation name {name!r} (not in {self.source})") from None

  def index(self, name: str) -> int:
    """Position of a name in the model's label order."""
    try:
      return self._name_to_index[name]
    except (KeyError, TypeError):
      raise UnknownRelationError(f"unknown relation name {name!r} (not in {self.source})") from None

  def without(self, *rel_ids: str) -> RelationSchema:
    """The schema minus some ids (e.g. CDR's explicit "NR" non-relation)."""
    for r in rel_ids:
      self.name(r)  # raise on typos rather than silently keeping everything
    keep = [i for i, r in enumerate(self.ids) if r not in set(rel_ids)]
    return RelationSchema(tuple(self.ids[i] for i in keep), tuple(self.names[i] for i in keep),
                          self.source)

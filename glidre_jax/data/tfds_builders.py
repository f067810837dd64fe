"""TFDS builders for Re-DocRED and CDR, prepared as array_record files.

Each example is one source document kept verbatim as a JSON string (plus its
title and position in the file): the relation schema is applied when
records are decoded, by the same readers as for plain JSON files (each
dataset's relation file and normaliser: `data.registry`). Shuffling
at write time is off, so `dev[:400]` is the file's first 400 documents.

Works offline: pass `local_dir` (a directory holding the split files) and
nothing is downloaded. Re-DocRED without `local_dir` downloads the official
files (or takes them from TFDS's manual_dir when they are there).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import pathlib
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from glidre_jax.data import readers
from glidre_jax.data.documents import Document
from glidre_jax.data.relations import RelationSchema

REDOCRED_URL = "https://raw.githubusercontent.com/tonytan48/Re-DocRED/main/data/{split}_revised.json"
_REDOCRED_FILES = {"train": "train_revised.json", "dev": "dev_revised.json",
                   "test": "test_revised.json"}
_CDR_FILES = {"train": "train.json", "dev": "dev.json", "test": "test.json"}


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "title": tfds.features.Text(),
      "index": tfds.features.Scalar(dtype=np.int64),  # position in the source file
      "document": tfds.features.Text(),  # the source JSON object, verbatim
  })


class _JsonDocsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic: one JSON list per split -> one record per document."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Documents stored as verbatim JSON strings."}
  FILES: Mapping[str, str] = {}

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS resolves this through importlib.resources, which fails on an
    # editable install seen as a namespace package; the file is what it wants.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, local_dir: str | os.PathLike | None = None, **kwargs):
    # Set before super().__init__, which may already look at the builder.
    self._local_dir = None if local_dir is None else pathlib.Path(local_dir)
    if self._local_dir is not None and not self._local_dir.is_dir():
      raise FileNotFoundError(f"local_dir {self._local_dir} is not a directory")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly: dataset_info_from_configs looks for README/CITATION
    # files through importlib.resources (see code_path).
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__, features=_features(),
        disable_shuffling=True)  # keep file order: dev[:400] means the first 400

  def _local_files(self, directory: pathlib.Path) -> dict[str, pathlib.Path]:
    files = {split: directory / name for split, name in self.FILES.items()
             if (directory / name).exists()}
    if not files:
      raise FileNotFoundError(f"{directory} holds none of {sorted(self.FILES.values())}")
    return files

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = self._source_files(dl_manager)
    return {split: self._generate_examples(path) for split, path in files.items()}

  def _source_files(self, dl_manager) -> Mapping[str, pathlib.Path]:
    if self._local_dir is None:
      raise ValueError(f"{self.name} needs local_dir (a directory with "
                       f"{sorted(self.FILES.values())})")
    return self._local_files(self._local_dir)

  def _generate_examples(self, path):
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if not isinstance(data, list):
      raise readers.DataError("top level must be a JSON list of documents", path=path)
    titles = [raw.get("title") if isinstance(raw, dict) else None for raw in data]
    readers.check_unique_titles(titles, path)  # the scorer keys gold facts on titles
    for i, (raw, title) in enumerate(zip(data, titles)):
      yield i, {"title": "" if title is None else str(title), "index": i,
                "document": json.dumps(raw, ensure_ascii=False)}


class ReDocRED(_JsonDocsBuilder):
  """Re-DocRED (Tan et al., 2022): train / dev / test in DocRED format."""
  name = "glidre_redocred"
  FILES = _REDOCRED_FILES
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Optional: place train_revised.json, dev_revised.json and "
                                  "test_revised.json from github.com/tonytan48/Re-DocRED here.")

  def _source_files(self, dl_manager) -> Mapping[str, pathlib.Path]:
    if self._local_dir is not None:
      return self._local_files(self._local_dir)
    manual = _manual_dir(dl_manager)
    if manual is not None and all((manual / n).exists() for n in self.FILES.values()):
      return self._local_files(manual)
    urls = {split: REDOCRED_URL.format(split=split) for split in self.FILES}
    return {split: pathlib.Path(p) for split, p in dl_manager.download(urls).items()}


class CDR(_JsonDocsBuilder):
  """BC5CDR chemical-disease relations in DocRED format, from a local directory."""
  name = "glidre_cdr"
  FILES = _CDR_FILES


def _manual_dir(dl_manager) -> pathlib.Path | None:
  try:
    manual = dl_manager.manual_dir
  except (AssertionError, ValueError, AttributeError):  # no manual_dir configured
    return None
  return pathlib.Path(manual) if manual is not None and os.path.isdir(manual) else None


def prepare(builder_cls: type[_JsonDocsBuilder], *, data_dir: str | os.PathLike | None = None,
            local_dir: str | os.PathLike | None = None) -> _JsonDocsBuilder:
  """Build (once) and return a builder whose array_record files are ready.

  `data_dir` defaults to TFDS's (~/tensorflow_datasets). Data prepared from
  a `local_dir` lives in a subdirectory named by the source files' path, size
  and modification time: TFDS reuses prepared data by builder name alone, so
  another directory (or an edited file) must not be served the old copy.
  """
  if local_dir is not None:
    base = pathlib.Path(data_dir) if data_dir is not None else pathlib.Path(
        tfds.core.constants.DATA_DIR).expanduser()
    data_dir = base / f"local-{source_fingerprint(builder_cls, local_dir)}"
  builder = builder_cls(data_dir=None if data_dir is None else os.fspath(data_dir),
                        local_dir=local_dir, file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  return builder


def source_fingerprint(builder_cls: type[_JsonDocsBuilder], local_dir: str | os.PathLike) -> str:
  """A short hash of a local source directory's split files (path, size, mtime)."""
  directory = pathlib.Path(local_dir).resolve()
  digest = hashlib.sha256(str(directory).encode())
  for name in sorted(builder_cls.FILES.values()):
    path = directory / name
    if path.exists():
      stat = path.stat()
      digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
  return digest.hexdigest()[:12]


def data_source(builder: _JsonDocsBuilder, split: str):
  """Random-access records of a split expression, e.g. "dev[:400]", "dev[400:]"."""
  return builder.as_data_source(split=split)


# -- decoding ------------------------------------------------------------------


def _text(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if hasattr(value, "item"):  # numpy scalar / 0-d array
    return _text(value.item())
  return str(value)


def decode_docred_record(record: Mapping, schema: RelationSchema, *,
                         drop_relations=("NR",), strict: bool = False) -> Document:
  """A stored record -> Document, validated like `readers.read_docred`.

  strict=False: duplicate labels are dropped (one reader warning per record).
  """
  raw = json.loads(_text(record["document"]))
  index = int(record["index"]) if "index" in record else None
  # readers validates and converts one DocRED dict here; the path-level
  # read_docred is this function applied to every element of a file.
  return readers.docred_document(raw, schema, index=index, drop_relations=drop_relations,
                                 strict=strict)

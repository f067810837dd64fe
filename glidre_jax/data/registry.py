"""The datasets a config can name, and the data policy of a run.

One entry per dataset (its TFDS builder, relation file, dropped relations,
candidate pairs); `data_setup` turns a config into tokenizers, relation
schema and split readers; `zero_shot_split` applies the held-out relation
policy. Re-DocRED and CDR are read through TFDS builders
(`data/tfds_builders.py`, the [tfds] extra), imported only when data is read:
prediction never needs tensorflow-datasets.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from glidre_jax import distributed
from glidre_jax.data import assets, batching, local_files, pipeline, readers
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data.documents import Document
from glidre_jax.data.open_labels import OpenLabels
from glidre_jax.data.relations import RelationSchema
from glidre_jax.data.tokenize import load_tokenizers


@dataclasses.dataclass(frozen=True)
class Dataset:
  builder: str  # its class in data/tfds_builders.py
  rel_info: tuple[str, ...]  # the shipped relation file (data/assets.py), unless data.rel_info
  dropped: tuple[str, ...]  # relation ids that are no fact (CDR's "NR")
  pair_filter: featurize_lib.PairFilter | None  # candidate pairs (None: all)
  shipped_dir: tuple[str, ...] | None  # shipped files, else data.data_dir is needed
  normalize: Callable[[list[Document]], list[Document]] | None  # e.g. CHEM -> DISE


DATASETS = {
    "redocred": Dataset("ReDocRED", ("docred", "rel_info.json"), (), None, ("redocred",), None),
    "cdr": Dataset("CDR", ("cdr", "rel_info.json"), ("NR",), featurize_lib.cdr_pair_filter, None,
                   readers.normalize_cdr),
}
OPEN_DATASET = "glidre"  # the user's own GLiDRE-format files (data/local_files.py)


def tfds_builders():
  """glidre_jax.data.tfds_builders, or an error saying which extra provides it."""
  try:
    from glidre_jax.data import tfds_builders as builders  # lazy: the [tfds] extra
  except ModuleNotFoundError as err:
    if err.name not in ("tensorflow_datasets", "etils", "array_record"):
      raise
    raise ImportError(f"reading Re-DocRED / CDR needs tensorflow-datasets ({err.name} is not "
                      "installed): pip install 'glidre-jax[tfds]'") from err
  return builders


def pair_filter(config) -> featurize_lib.PairFilter | None:
  """Candidate pairs: the dataset's rule, without (e, e) unless model.self_pairs
  (one rule for the loss, evaluation and prediction)."""
  spec = DATASETS.get(config.data.dataset)
  base = spec.pair_filter if spec else None
  return base if config.model.self_pairs else featurize_lib.without_self_pairs(base)


@dataclasses.dataclass
class DataSetup:
  """Tokenizers, relation schema and split readers of a config.

  `builder` is a prepared TFDS builder, or `local_files.GLiDREFiles`;
  `eval_schema` is set when evaluation uses other labels than training.
  """
  config: ml_collections.ConfigDict
  schema: RelationSchema
  tokenizer: object
  label_tokenizer: object
  builder: object
  decode: object
  eval_schema: RelationSchema | None = None

  @property
  def buckets(self) -> featurize_lib.Buckets:
    return featurize_lib.Buckets.from_config(self.config.data)

  @property
  def pair_filter(self):
    return pair_filter(self.config)

  @property
  def open_labels(self) -> OpenLabels | None:
    """Per-batch label sets for training (data.open_labels), else None."""
    d = self.config.data
    if not d.open_labels:
      return None
    return OpenLabels(tuple(d.label_buckets), d.fill_negatives, d.shuffle_seed)

  def source(self, split: str):
    if isinstance(self.builder, local_files.GLiDREFiles):
      return self.builder.source(split)
    return tfds_builders().data_source(self.builder, split)

  def read_split(self, split: str) -> list[Document]:
    return [self.decode(record) for record in self.source(split)]

  def train_docs(self) -> list[Document]:
    """The training documents (data.train_split, its data.subset_size subset)."""
    d = self.config.data
    source = self.source(d.train_split)
    subset = pipeline.subset_indices(len(source), d.subset_size or None, d.subset_seed)
    return [self.decode(source[int(i)]) for i in subset]

  def features(self, docs: Sequence[Document]) -> list[dict]:
    """Evaluation features: documents over max_length subwords are windowed
    when data.window_stride > 0 (no mention is lost), truncated otherwise."""
    index = {name: k for k, name in enumerate(self.schema.names)}
    d = self.config.data
    return [batching.featurize_long(doc, self.tokenizer, index, d.max_length, d.window_stride,
                                    pair_filter=self.pair_filter)
            for doc in docs]

  def label_batch(self) -> dict:
    return featurize_lib.label_batch(self.label_tokenizer, list(self.schema.names),
                                     max_length=self.config.model.label_max_length)

  def restricted(self, relation_ids: Sequence[str]) -> DataSetup:
    """The same data seen through a subset of the relations: the label set
    shrinks and documents lose the facts of the other relations."""
    schema = self.schema.without(*(r for r in self.schema.ids if r not in set(relation_ids)))
    names = frozenset(schema.names)
    decode = self.decode
    return dataclasses.replace(self, schema=schema, decode=lambda record: dataclasses.replace(
        doc := decode(record), relations=tuple(r for r in doc.relations if r.label in names)))


def held_out_relations(config, schema: RelationSchema) -> tuple[str, ...]:
  """Relation ids kept out of training and evaluated alone (zero-shot).

  `data.held_out_relations`: "" (none), "P17,P131,..." or "random:N" (N ids
  drawn with data.subset_seed).
  """
  spec = (config.data.held_out_relations or "").strip()
  if not spec:
    return ()
  if spec.startswith("random:"):
    count = int(spec.split(":", 1)[1])
    if not 0 < count < schema.num_labels:
      raise ValueError(f"data.held_out_relations={spec!r}: N must be in [1, {schema.num_labels})")
    picked = set(np.random.default_rng(config.data.subset_seed).choice(
        schema.ids, count, replace=False).tolist())
    return tuple(r for r in schema.ids if r in picked)
  ids = tuple(r.strip() for r in spec.split(",") if r.strip())
  schema.without(*ids)  # unknown ids raise, naming the id
  return ids


def zero_shot_split(data: DataSetup) -> tuple[DataSetup, DataSetup]:
  """(training data, evaluation data) of a config; the same object twice
  unless relations are held out or evaluation has its own label set."""
  held = held_out_relations(data.config, data.schema)
  if held:
    if data.eval_schema is not None:
      raise ValueError("data.held_out_relations needs one label set for training and "
                       "evaluation; this config evaluates on its own (data.eval_file labels)")
    seen = [r for r in data.schema.ids if r not in held]
    return data.restricted(seen), data.restricted(held)
  if data.eval_schema is not None and data.eval_schema != data.schema:
    return data, dataclasses.replace(data, schema=data.eval_schema)
  return data, data


def _dataset(config) -> Dataset:
  name = config.data.dataset
  if name not in DATASETS:
    raise ValueError(f"data.dataset must be one of {sorted(DATASETS) + [OPEN_DATASET]}, "
                     f"got {name!r}")
  return DATASETS[name]


def load_schema(config) -> RelationSchema:
  """The relation label set of a config's dataset (for open labels: the
  training vocabulary)."""
  d = config.data
  if d.dataset == OPEN_DATASET:
    return _glidre_schemas(config, _glidre_files(config))[0]
  _dataset(config)  # a known name
  return dataset_schema(d.dataset, d.rel_info)


def dataset_schema(name: str, rel_info: str | None = None) -> RelationSchema:
  """The relations of a dataset of DATASETS: its shipped relation file (or
  `rel_info`) without the ones that are no fact."""
  spec = DATASETS[name]
  return RelationSchema.from_file(rel_info or assets.asset_path(*spec.rel_info)
                                  ).without(*spec.dropped)


def record_decoder(name: str, schema: RelationSchema | None = None
                   ) -> Callable[[dict], Document]:
  """Stored TFDS record -> Document for a dataset of DATASETS, validated by
  the DocRED reader and normalised as the dataset says (default schema: its
  `dataset_schema`)."""
  spec, decode_record = DATASETS[name], tfds_builders().decode_docred_record
  schema = schema or dataset_schema(name)
  if spec.normalize is None:
    return lambda record: decode_record(record, schema)
  return lambda record: spec.normalize([decode_record(record, schema)])[0]


def _glidre_files(config) -> local_files.GLiDREFiles:
  d = config.data
  if not d.train_file:
    raise ValueError("data.dataset='glidre' needs data.train_file (GLiDRE-format JSON/JSONL)")
  return local_files.GLiDREFiles({"train": d.train_file, "dev": d.eval_file,
                                  "test": d.test_file})


def _glidre_schemas(config, files: local_files.GLiDREFiles
                    ) -> tuple[RelationSchema, RelationSchema | None]:
  """(training labels, evaluation labels or None for the same).

  data.labels_file fixes both. Otherwise training uses the names found in the
  training file; with open labels, evaluation uses those of the eval file
  (which may hold names never trained on), else the training ones.
  """
  d = config.data
  if d.labels_file:
    return local_files.schema_of(local_files.read_label_file(d.labels_file), d.labels_file), None
  train = local_files.schema_of(local_files.relation_names(files.documents("train")),
                                f"relation names of {d.train_file}")
  if d.open_labels and d.eval_file:
    return train, local_files.schema_of(local_files.relation_names(files.documents("dev")),
                                        f"relation names of {d.eval_file}")
  return train, None


def data_setup(config) -> DataSetup:
  d = config.data
  if d.dataset == OPEN_DATASET:
    files = _glidre_files(config)
    schema, eval_schema = _glidre_schemas(config, files)
    return DataSetup(config, schema, *load_tokenizers(config), files, lambda doc: doc,
                     eval_schema)
  spec = _dataset(config)
  schema = load_schema(config)
  if spec.shipped_dir is None and not d.data_dir:
    raise ValueError(f"data.dataset={d.dataset!r} needs data.data_dir (a directory with "
                     "train.json / dev.json in DocRED format)")
  local_dir = d.data_dir or assets.asset_path(*spec.shipped_dir)
  # Process 0 prepares the array_record files; the others then open them.
  builders = tfds_builders()
  prepare = lambda: builders.prepare(getattr(builders, spec.builder),
                                     data_dir=d.tfds_dir, local_dir=local_dir)
  builder = prepare() if jax.process_index() == 0 else None
  distributed.barrier("tfds_prepared")
  builder = builder or prepare()
  return DataSetup(config, schema, *load_tokenizers(config), builder,
                   record_decoder(d.dataset, schema))

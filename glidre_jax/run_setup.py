"""Turns a config into the parts of a run: encoders, tokenizers, model, data.

Shared by `train`, `evaluate` and the benchmarks so that a run directory can
always be rebuilt from its saved `config.json`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from glidre_jax import encoders, hub
from glidre_jax.data import assets, local_files, windows
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data.open_labels import OpenLabels
from glidre_jax.data.documents import Document
from glidre_jax.data.relations import RelationSchema
from glidre_jax.data.tokenize import load_tokenizer, minilm_path
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import GLiDRE

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Read through TFDS builders (glidre_jax.data.tfds_builders, the [tfds] extra),
# imported only when data is read: prediction never needs tensorflow-datasets.
DATASETS = {"redocred": "ReDocRED", "cdr": "CDR"}
OPEN_DATASET = "glidre"  # the user's own GLiDRE-format files (data/local_files.py)


def progress_bar(desc: str):
  """tqdm over an iterable when attached to a terminal or CI log; plain otherwise."""
  from tqdm.auto import tqdm
  return functools.partial(tqdm, desc=desc, file=sys.stdout, dynamic_ncols=True,
                           mininterval=2.0)


def resolve_encoder_dir(name: str, weights: bool = True) -> pathlib.Path:
  """'minilm' (shipped offline), a local HF model directory or a Hub id
  (`glidre_jax.hub`; `weights=False` fetches config and tokenizer only)."""
  if name == "minilm":
    return minilm_path()
  return hub.encoder_dir(name, weights=weights)


def tfds_builders():
  """glidre_jax.data.tfds_builders, or an error saying which extra provides it."""
  try:
    from glidre_jax.data import tfds_builders as builders
  except ModuleNotFoundError as err:
    if err.name not in ("tensorflow_datasets", "etils", "array_record"):
      raise
    raise ImportError(f"reading Re-DocRED / CDR needs tensorflow-datasets ({err.name} is not "
                      "installed): pip install 'glidre-jax[tfds]'") from err
  return builders


def compute_dtype(config) -> jnp.dtype:
  if config.compute_dtype not in DTYPES:
    raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, "
                     f"got {config.compute_dtype!r}")
  return DTYPES[config.compute_dtype]


def model_config(config) -> GLiDREConfig:
  return GLiDREConfig(**config.model.to_dict())


def build_model(config, *, pretrained_encoders: bool = True) -> GLiDRE:
  """GLiDRE with encoders from their HF checkpoints (or random, same shapes)."""
  dtype = compute_dtype(config)
  overrides = {}
  if config.get("encoder_attention_dropout") is not None:
    overrides["attention_probs_dropout_prob"] = config.encoder_attention_dropout
  parts = []
  for offset, name in enumerate((config.text_encoder, config.label_encoder)):
    path = resolve_encoder_dir(name, weights=pretrained_encoders)
    if pretrained_encoders:
      parts.append(encoders.load_encoder(path, dtype=dtype, seed=config.seed + offset,
                                         **overrides))
    else:
      hf = encoders.common.read_hf_config(path)
      parts.append(encoders.new_encoder(encoders.config_from_hf(hf, **overrides),
                                        dtype=dtype, seed=config.seed + offset))
  return GLiDRE(model_config(config), *parts, dtype=dtype,
                rngs=nnx.Rngs(config.seed))


def abstract_model(config) -> GLiDRE:
  """Shapes only (nothing allocated): the restore target of checkpoints."""
  return nnx.eval_shape(lambda: build_model(config, pretrained_encoders=False))


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
    d = self.config.data
    return featurize_lib.Buckets(tuple(d.seq_buckets), tuple(d.word_buckets),
                                 tuple(d.entity_buckets))

  @property
  def pair_filter(self):
    base = (featurize_lib.type_pair_filter([("CHEM", "DISE")])
            if self.config.data.dataset == "cdr" else None)
    # model.self_pairs, one rule for the loss, evaluation and prediction.
    return base if model_config(self.config).self_pairs else featurize_lib.without_self_pairs(base)

  @property
  def open_labels(self) -> OpenLabels | None:
    """Per-batch label sets for training (data.open_labels), else None."""
    d = self.config.data
    if not d.get("open_labels", False):
      return None
    return OpenLabels(tuple(d.label_buckets), d.fill_negatives, d.shuffle_seed)

  def source(self, split: str):
    if isinstance(self.builder, local_files.GLiDREFiles):
      return self.builder.source(split)
    return tfds_builders().data_source(self.builder, split)

  def read_split(self, split: str) -> list[Document]:
    return [self.decode(record) for record in self.source(split)]

  def features(self, docs: Sequence[Document]) -> list[dict]:
    """Evaluation features: documents over max_length subwords are windowed
    when data.window_stride > 0 (no mention is lost), truncated otherwise."""
    index = {name: k for k, name in enumerate(self.schema.names)}
    d = self.config.data
    return [windows.featurize_long(doc, self.tokenizer, index, d.max_length,
                                   d.get("window_stride", 0), pair_filter=self.pair_filter)
            for doc in docs]

  def label_batch(self) -> dict:
    return featurize_lib.label_batch(self.label_tokenizer, list(self.schema.names),
                                     max_length=self.config.model.label_max_length)

  def restricted(self, relation_ids: Sequence[str]) -> "DataSetup":
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
  spec = (config.data.get("held_out_relations") or "").strip()
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


def load_schema(config) -> RelationSchema:
  """The relation label set of a config's dataset (for open labels: the
  training vocabulary)."""
  d = config.data
  if d.dataset == OPEN_DATASET:
    return _glidre_schemas(config, _glidre_files(config))[0]
  if d.dataset not in DATASETS:
    raise ValueError(f"data.dataset must be one of {sorted(DATASETS) + [OPEN_DATASET]}, "
                     f"got {d.dataset!r}")
  if d.dataset == "redocred":
    return RelationSchema.from_file(d.rel_info or assets.asset_path("docred", "rel_info.json"))
  return RelationSchema.from_file(d.rel_info or assets.asset_path("cdr", "rel_info.json")
                                  ).without("NR")


def load_tokenizers(config) -> tuple[object, object]:
  """(text tokenizer, label tokenizer); one object when both encoders agree."""
  text_tok = load_tokenizer(resolve_encoder_dir(config.text_encoder, weights=False))
  label_tok = (text_tok if config.label_encoder == config.text_encoder
               else load_tokenizer(resolve_encoder_dir(config.label_encoder, weights=False)))
  return text_tok, label_tok


def _glidre_files(config) -> local_files.GLiDREFiles:
  d = config.data
  if not d.get("train_file"):
    raise ValueError("data.dataset='glidre' needs data.train_file (GLiDRE-format JSON/JSONL)")
  return local_files.GLiDREFiles({"train": d.train_file, "dev": d.get("eval_file"),
                                  "test": d.get("test_file")})


def _glidre_schemas(config, files: local_files.GLiDREFiles
                    ) -> tuple[RelationSchema, RelationSchema | None]:
  """(training labels, evaluation labels or None for the same).

  data.labels_file fixes both. Otherwise training uses the names found in the
  training file; with open labels, evaluation uses those of the eval file
  (which may hold names never trained on), else the training ones.
  """
  d = config.data
  if d.get("labels_file"):
    return local_files.schema_of(local_files.read_label_file(d.labels_file), d.labels_file), None
  train = local_files.schema_of(local_files.relation_names(files.documents("train")),
                                f"relation names of {d.train_file}")
  if d.get("open_labels") and d.get("eval_file"):
    return train, local_files.schema_of(local_files.relation_names(files.documents("dev")),
                                        f"relation names of {d.eval_file}")
  return train, None


def data_setup(config) -> DataSetup:
  d = config.data
  if d.dataset == OPEN_DATASET:
    files = _glidre_files(config)
    schema, eval_schema = _glidre_schemas(config, files)
    text_tok, label_tok = load_tokenizers(config)
    return DataSetup(config, schema, text_tok, label_tok, files, lambda doc: doc, eval_schema)
  schema = load_schema(config)
  if d.dataset == "redocred":
    local_dir = d.data_dir or assets.asset_path("redocred")
  else:
    if not d.data_dir:
      raise ValueError("data.dataset='cdr' needs data.data_dir (a directory with "
                       "train.json / dev.json in DocRED format)")
    local_dir = d.data_dir
  # Process 0 prepares the array_record files; the others then open them.
  from glidre_jax import distributed
  builders = tfds_builders()
  prepare = lambda: builders.prepare(getattr(builders, DATASETS[d.dataset]),
                                     data_dir=d.get("tfds_dir"), local_dir=local_dir)
  builder = prepare() if jax.process_index() == 0 else None
  distributed.barrier("tfds_prepared")
  builder = builder or prepare()
  text_tok, label_tok = load_tokenizers(config)
  return DataSetup(config, schema, text_tok, label_tok, builder,
                   builders.record_decoder(d.dataset, schema))


def save_config(config, workdir: pathlib.Path) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  # Written whole or not at all: a run killed here keeps its previous config.json.
  tmp = workdir / "config.json.tmp"
  tmp.write_text(config.to_json_best_effort(indent=2))
  tmp.replace(workdir / "config.json")


# Top-level fields every run config has (configs/default.py).
_RUN_CONFIG_FIELDS = ("text_encoder", "label_encoder", "model", "data", "train")


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{workdir}: no config.json (not a glidre_jax.train run directory)")
  fix = ("glidre_jax.train writes it when a run starts: rerun the training command with the "
         "same --config and --workdir (it resumes from the checkpoints), or restore the file "
         "from a copy")
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: the run's config is not valid JSON ({e}); the file is damaged "
                     f"or was cut short. {fix}.") from None
  missing = [k for k in _RUN_CONFIG_FIELDS if not isinstance(value, dict) or k not in value]
  if missing:
    raise ValueError(f"{path}: not a glidre_jax.train run config (missing "
                     f"{', '.join(missing)}). {fix}.")
  return ml_collections.ConfigDict(value)



@dataclasses.dataclass
class LoadedRun:
  """A trained run rebuilt from its directory: config, data, weights, predictor."""
  config: ml_collections.ConfigDict
  data: DataSetup  # evaluation view (held-out or eval-file labels)
  params: object
  rest: object
  predictor: object
  train_data: DataSetup | None = None  # training view (default: `data`)

  @property
  def schema(self) -> RelationSchema:
    return self.data.schema

  def read_split(self, split: str) -> list[Document]:
    return self.data.read_split(split)

  def train_docs(self) -> list[Document]:
    """The documents the run trained on (their facts define Ign F1)."""
    from glidre_jax.data import pipeline
    d, data = self.config.data, self.train_data or self.data
    source = data.source(d.train_split)
    subset = pipeline.subset_indices(len(source), d.subset_size or None, d.subset_seed)
    return [data.decode(source[int(i)]) for i in subset]

  def train_facts(self):
    """Training facts for Ign F1, named as the training label set names them."""
    from glidre_jax import metrics
    return metrics.train_facts(self.train_docs(), (self.train_data or self.data).schema)

  def score(self, docs: Sequence[Document], progress=None):
    from glidre_jax import evaluate
    return evaluate.score_split(self.predictor, self.params, self.rest, self.data,
                                self.data.features(docs), progress=progress)


def restore_weights(workdir, which: str = "best", config=None):
  """(config, eval graphdef, params, rest) of a run directory, without its data."""
  from glidre_jax import checkpointing, trainer, weights
  workdir = pathlib.Path(workdir)
  config = load_config(workdir) if config is None else config
  model = abstract_model(config)
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  checkpoints = checkpointing.RunCheckpoints(workdir, save_every=1)
  try:
    state_like = trainer.abstract_state(nnx.as_pure(params), nnx.as_pure(rest), config.train)
    params = checkpoints.restore_params(which, state_like)
  finally:
    checkpoints.close()
  return config, graphdef, params, weights.materialize(nnx.as_pure(rest), config.seed)


def load_run(workdir, which: str = "best", *, data_dir: str | None = None) -> LoadedRun:
  """Rebuilds a `glidre_jax.train` run from `workdir` with its best/latest weights."""
  from glidre_jax import trainer
  config = load_config(pathlib.Path(workdir))
  if data_dir is not None:
    config.data.data_dir = data_dir
  config, graphdef, params, rest = restore_weights(workdir, which, config)
  train_data, eval_data = zero_shot_split(data_setup(config))  # held-out relations, if any
  return LoadedRun(config, eval_data, params, rest, trainer.Predictor(graphdef), train_data)

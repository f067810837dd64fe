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

from glidre_jax import encoders
from glidre_jax.data import assets, tfds_builders
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data.documents import Document
from glidre_jax.data.relations import RelationSchema
from glidre_jax.data.tokenize import load_tokenizer, minilm_path
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import GLiDRE

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DATASETS = {"redocred": tfds_builders.ReDocRED, "cdr": tfds_builders.CDR}


def progress_bar(desc: str):
  """tqdm over an iterable when attached to a terminal or CI log; plain otherwise."""
  from tqdm.auto import tqdm
  return functools.partial(tqdm, desc=desc, file=sys.stdout, dynamic_ncols=True,
                           mininterval=2.0)


def resolve_encoder_dir(name: str) -> pathlib.Path:
  """'minilm' (shipped offline) or a local HF model directory."""
  if name == "minilm":
    return minilm_path()
  path = pathlib.Path(name).expanduser()
  if not (path / "config.json").exists():
    raise FileNotFoundError(
        f"encoder {name!r}: not a local model directory with config.json. Nothing "
        "is downloaded at run time: fetch the model once (e.g. huggingface-cli "
        "download) and pass its directory, or use 'minilm'.")
  return path


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
    path = resolve_encoder_dir(name)
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
  """Tokenizers, relation schema and split readers of a config."""
  config: ml_collections.ConfigDict
  schema: RelationSchema
  tokenizer: object
  label_tokenizer: object
  builder: object
  decode: object

  @property
  def buckets(self) -> featurize_lib.Buckets:
    d = self.config.data
    return featurize_lib.Buckets(tuple(d.seq_buckets), tuple(d.word_buckets),
                                 tuple(d.entity_buckets))

  @property
  def pair_filter(self):
    if self.config.data.dataset == "cdr":
      return featurize_lib.type_pair_filter([("CHEM", "DISE")])
    return None

  def source(self, split: str):
    return tfds_builders.data_source(self.builder, split)

  def read_split(self, split: str) -> list[Document]:
    return [self.decode(record) for record in self.source(split)]

  def features(self, docs: Sequence[Document]) -> list[dict]:
    index = {name: k for k, name in enumerate(self.schema.names)}
    return [featurize_lib.featurize(doc, self.tokenizer, index,
                                    self.config.data.max_length,
                                    pair_filter=self.pair_filter) for doc in docs]

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
  unless relations are held out."""
  held = held_out_relations(data.config, data.schema)
  if not held:
    return data, data
  seen = [r for r in data.schema.ids if r not in held]
  return data.restricted(seen), data.restricted(held)


def load_schema(config) -> RelationSchema:
  """The relation label set of a config's dataset."""
  d = config.data
  if d.dataset not in DATASETS:
    raise ValueError(f"data.dataset must be one of {sorted(DATASETS)}, got {d.dataset!r}")
  if d.dataset == "redocred":
    return RelationSchema.from_file(d.rel_info or assets.asset_path("docred", "rel_info.json"))
  return RelationSchema.from_file(d.rel_info or assets.asset_path("cdr", "rel_info.json")
                                  ).without("NR")


def load_tokenizers(config) -> tuple[object, object]:
  """(text tokenizer, label tokenizer); one object when both encoders agree."""
  text_tok = load_tokenizer(resolve_encoder_dir(config.text_encoder))
  label_tok = (text_tok if config.label_encoder == config.text_encoder
               else load_tokenizer(resolve_encoder_dir(config.label_encoder)))
  return text_tok, label_tok


def data_setup(config) -> DataSetup:
  d = config.data
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
  prepare = lambda: tfds_builders.prepare(DATASETS[d.dataset], data_dir=d.get("tfds_dir"),
                                         local_dir=local_dir)
  builder = prepare() if jax.process_index() == 0 else None
  distributed.barrier("tfds_prepared")
  builder = builder or prepare()
  text_tok, label_tok = load_tokenizers(config)
  return DataSetup(config, schema, text_tok, label_tok, builder,
                   tfds_builders.record_decoder(d.dataset, schema))


def save_config(config, workdir: pathlib.Path) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{workdir}: no config.json (not a glidre_jax.train run directory)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))



@dataclasses.dataclass
class LoadedRun:
  """A trained run rebuilt from its directory: config, data, weights, predictor."""
  config: ml_collections.ConfigDict
  data: DataSetup
  params: object
  rest: object
  predictor: object

  @property
  def schema(self) -> RelationSchema:
    return self.data.schema

  def read_split(self, split: str) -> list[Document]:
    return self.data.read_split(split)

  def train_docs(self) -> list[Document]:
    """The documents the run trained on (their facts define Ign F1)."""
    from glidre_jax.data import pipeline
    d = self.config.data
    source = self.data.source(d.train_split)
    subset = pipeline.subset_indices(len(source), d.subset_size or None, d.subset_seed)
    return [self.data.decode(source[int(i)]) for i in subset]

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
  _, eval_data = zero_shot_split(data_setup(config))  # held-out relations, if any
  return LoadedRun(config, eval_data, params, rest, trainer.Predictor(graphdef))

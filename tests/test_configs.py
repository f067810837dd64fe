"""Every shipped config and variant builds, and the CDR setup reads its data."""
from __future__ import annotations

import importlib

import pytest

from conftest import SHARED_DATA
from glidre_jax import run_dir
from glidre_jax.data import registry

VARIANTS = {"default": ("", "tiny", "zeroshot"), "redocred": ("", "accum"), "cdr": ("", "paper"),
            "pretrain": ("", "files"), "custom": ("", "open")}


@pytest.mark.parametrize("name,variant", [(n, v) for n, vs in VARIANTS.items() for v in vs])
def test_config_variants_build(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  run_dir.model_config(config)  # the model section is a valid GLiDREConfig
  assert config.train.steps > 0 and config.data.batch_size > 0
  with pytest.raises(ValueError, match="unknown config variant"):
    importlib.import_module(f"configs.{name}").get_config("no-such-variant")


def test_cdr_setup_scores_chemical_disease_pairs_only(tmp_path):
  from configs import cdr
  if not (SHARED_DATA / "cdr" / "train.json").exists():
    pytest.skip("CDR data not available")
  config = cdr.get_config()
  config.data.data_dir = str(SHARED_DATA / "cdr")
  config.data.tfds_dir = str(tmp_path / "tfds")
  data = registry.data_setup(config)
  assert data.schema.ids == ("CID",)
  docs = data.read_split("dev[:20]")
  for doc in docs:
    for rel in doc.relations:  # normalized chemical -> disease
      assert (doc.entities[rel.head].type, doc.entities[rel.tail].type) == ("CHEM", "DISE")
  feats = data.features(docs)
  for doc, f in zip(docs, feats):
    types = [e.type for e in doc.entities]
    allowed = {(h, t) for h in range(len(types)) for t in range(len(types))
               if (types[h], types[t]) == ("CHEM", "DISE")}
    assert {tuple(x) for x in zip(*f["pair_mask"].nonzero())} == allowed
    assert len(f["relations"]) == len(doc.relations)
  config.data.data_dir = None
  with pytest.raises(ValueError, match="needs data.data_dir"):
    registry.data_setup(config)


# -- command-line overrides (the absl flag parsing of glidre_jax.train) ---------


def _leaves(config, prefix=""):
  """(dotted path, value, declared type, may be None) of every leaf field."""
  import ml_collections
  from ml_collections import config_dict
  for key, field in config.items(preserve_field_references=True):
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      nullable = isinstance(field, config_dict.FieldReference) or value is None
      yield f"{prefix}{key}", value, config.get_type(key), nullable


def _changed(value, kind):
  """Another value of the field's type, and how to write it on the command line."""
  if kind is bool:
    return (not value), str(not value).lower()
  if kind is int:
    return value + 1, str(value + 1)
  if kind is float:
    new = 0.25 if value is None else value * 2 + 0.25
    return new, repr(new)
  if kind is str:
    new = "x" if value is None else value + "_x"
    return new, new
  if kind is tuple:
    new = value + (value[-1],)
    return new, repr(new)
  raise AssertionError(f"field of type {kind} cannot be given on the command line")


def _parse(config_arg, overrides):
  """The train CLI's parsing (cli_config.parse_flags over absl + ml_collections)
  on fresh flag values; the resulting config."""
  from absl import flags
  from ml_collections import config_flags

  from glidre_jax import cli_config
  argv = ["train", f"--config={config_arg}", *overrides]
  values = flags.FlagValues()
  # sys_argv: what ml_collections reads overrides from (sys.argv in the CLI).
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values, sys_argv=argv)
  cli_config.parse_flags(argv, values)
  return values["config"].value


@pytest.mark.parametrize("name,variant", [(n, v) for n, vs in VARIANTS.items() for v in vs])
def test_every_field_can_be_set_on_the_command_line(name, variant):
  from conftest import REPO
  config_arg = f"{REPO / 'configs' / name}.py" + (f":{variant}" if variant else "")
  shipped = importlib.import_module(f"configs.{name}").get_config(variant)
  leaves = list(_leaves(shipped))
  expected = {path: _changed(value, kind) for path, value, kind, _ in leaves}
  config = _parse(config_arg, [f"--config.{p}={text}" for p, (_, text) in expected.items()])
  for path, (value, _) in expected.items():
    assert _get(config, path) == value, path
  # ... and every field that may be None back to None, both spellings.
  nullable = [path for path, _, _, may_be_none in leaves if may_be_none]
  assert "encoder_attention_dropout" in nullable and "data.data_dir" in nullable
  args = [f"--config.{p}={text}" for p, (_, text) in expected.items()]
  for i, path in enumerate(nullable):
    args += [f"--config.{path}=None"] if i % 2 else [f"--config.{path}", "None"]
  config = _parse(config_arg, args)
  for path in nullable:
    assert _get(config, path) is None, path


def _get(config, path):
  for part in path.split("."):
    config = config[part]
  return config


def test_none_is_refused_where_a_field_cannot_be_none():
  from conftest import REPO
  with pytest.raises(SystemExit, match="'train.steps' .* cannot be None"):
    _parse(f"{REPO / 'configs' / 'default.py'}", ["--config.train.steps=None"])
  with pytest.raises(SystemExit, match="stpes"):
    _parse(f"{REPO / 'configs' / 'default.py'}", ["--config.train.stpes=None"])

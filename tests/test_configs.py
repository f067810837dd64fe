"""Every shipped config and variant builds, and the CDR setup reads its data."""
from __future__ import annotations

import importlib

import pytest

from conftest import SHARED_DATA
from glidre_jax import run_setup

VARIANTS = {"default": ("", "tiny", "zeroshot"), "redocred": ("", "accum"), "cdr": ("", "paper"),
            "pretrain": ("", "files"), "custom": ("", "open")}


@pytest.mark.parametrize("name,variant", [(n, v) for n, vs in VARIANTS.items() for v in vs])
def test_config_variants_build(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  run_setup.model_config(config)  # the model section is a valid GLiDREConfig
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
  data = run_setup.data_setup(config)
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
    assert f["labels"].sum() == len(doc.relations)
  config.data.data_dir = None
  with pytest.raises(ValueError, match="needs data.data_dir"):
    run_setup.data_setup(config)

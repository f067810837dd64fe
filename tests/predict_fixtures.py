"""What the prediction tests share: inputs, and the module-scoped fixtures
(model, predictor, run directory, raw dev documents) that test_predict.py
and test_predict_windows.py import, so each module builds its own."""
from __future__ import annotations

import json

import pytest
from flax import nnx

from glidre_jax import checkpointing, run_dir as run_dir_lib
from glidre_jax.api import GLiDREPredictor
from tiny_model import small_config

LABELS = ["country", "place of birth", "located in"]
TEXT = "Marie Curie was born in Warsaw, Poland. Later she moved to Paris."
RAW = {"title": "curie", "text": TEXT,
       "entities": [{"mentions": [[0, 11], [46, 49]], "type": "PER"},
                    {"mentions": [[24, 30]], "type": "LOC"},
                    {"mentions": [{"start": 32, "end": 38}], "type": "LOC"},
                    {"start": 59, "end": 64, "type": "LOC"}]}

STORED_TAU = 0.6  # the τ the run directory's best checkpoint was "selected" at


@pytest.fixture(scope="module")
def model():
  return run_dir_lib.build_model(small_config(48))


@pytest.fixture(scope="module")
def predictor(model):
  return GLiDREPredictor.from_model(model, small_config(48))


@pytest.fixture(scope="module")
def dev_docs(redocred_dev_path):
  """The first five shipped dev documents as raw JSON (the inputs users give)."""
  return json.loads(redocred_dev_path.read_text())[:5]


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
  """A run directory holding `model` as its best checkpoint (no training)."""
  path = tmp_path_factory.mktemp("run")
  config = small_config(48)
  config.workdir = str(path)
  run_dir_lib.save_config(config, path)
  checkpoints = checkpointing.RunCheckpoints(path, save_every=1)
  try:
    checkpoints.save_best(0, nnx.as_pure(nnx.split(model, nnx.Param, ...)[1]),
                          {"f1": 0.0, "selected_threshold": STORED_TAU})
    checkpoints.wait()
  finally:
    checkpoints.close()
  return path

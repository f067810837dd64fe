"""Hub ids, save_pretrained / from_pretrained, push_to_hub's folder, model cards.

Hub ids are read offline from HF cache directories laid out here in the
library's own layout (tests/hf_cache.py) and read by the real huggingface_hub.
"""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from glidre_jax import checkpointing, hub, pretrained, run_dir as run_dir_lib
from glidre_jax.data import tokenize
from glidre_jax.api import GLiDREPredictor
from glidre_jax.encoders import load_encoder
from glidre_jax.weights import flat_params
from hf_cache import folder_files, lay_out
from tiny_model import small_config

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
LABELS = ["country", "place of birth", "located in"]
TEXT = "Marie Curie was born in Warsaw, Poland. Later she moved to Paris."
RAW = {"title": "curie", "text": TEXT,
       "entities": [{"id": "Q7186", "mentions": [[0, 11], [46, 49]], "type": "PER"},
                    {"mentions": [[24, 30]], "type": "LOC"},
                    {"mentions": [[32, 38]], "type": "LOC"}]}


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
  """An empty HF home, offline."""
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  return tmp_path / "hf"


def minilm_files(minilm_dir, weights=True):
  names = [n for n in hub.ENCODER_CONFIG if (minilm_dir / n).is_file()]
  files = {n: minilm_dir / n for n in names}
  if weights:
    files["model.safetensors"] = minilm_dir / "model.safetensors"
  return files


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run directory: MiniLM GLiDRE as its best checkpoint, with dev scores."""
  path = tmp_path_factory.mktemp("run")
  config = small_config(8)
  config.workdir = str(path)
  run_dir_lib.save_config(config, path)
  model = run_dir_lib.build_model(config)
  checkpoints = checkpointing.RunCheckpoints(path, save_every=1)
  try:
    checkpoints.save_best(4, nnx.as_pure(nnx.split(model, nnx.Param, ...)[1]),
                          {"f1": 0.25, "ign_f1": 0.2, "precision": 0.5, "recall": 0.125,
                           "threshold": 0.5, "best_f1": 0.3, "best_threshold": 0.4, "step": 4})
    checkpoints.wait()
  finally:
    checkpoints.close()
  (path / "summary.json").write_text(json.dumps({"wall_seconds": 12.5}))
  return path


@pytest.fixture(scope="module")
def from_run(run_dir):
  return GLiDREPredictor.from_pretrained(run_dir)


def test_hub_id_syntax(tmp_path, monkeypatch):
  assert hub.parse_hub_id("BAAI/bge-large-en-v1.5") == ("BAAI/bge-large-en-v1.5", None)
  assert hub.parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
  for not_an_id in ("minilm", "./org/name", "/abs/dir", "~/x/y", "a/b/c", "org/na me"):
    assert hub.parse_hub_id(not_an_id) is None, not_an_id
  monkeypatch.chdir(tmp_path)
  (tmp_path / "org" / "name").mkdir(parents=True)
  assert hub.resolve("org/name").resolve() == tmp_path / "org" / "name"  # a local dir wins
  with pytest.raises(FileNotFoundError, match="no such local directory, and not a Hugging"):
    hub.resolve("no_such_dir")


def test_encoder_hub_id_from_cache(hf_home, minilm_dir):
  snapshot = lay_out(hf_home / "hub", MINILM_ID, minilm_files(minilm_dir))
  found = hub.encoder_dir(MINILM_ID)
  assert found == snapshot and (found / "config.json").resolve().parent.name == "blobs"
  ours = flat_params(load_encoder(MINILM_ID))
  reference = flat_params(load_encoder(minilm_dir))
  assert ours.keys() == reference.keys()
  assert all(np.array_equal(ours[k], reference[k]) for k in ours)
  commit = snapshot.name
  assert hub.encoder_dir(f"{MINILM_ID}@{commit}") == snapshot  # a revision by commit


def test_offline_errors_name_the_id(hf_home, minilm_dir):
  with pytest.raises(hub.HubError, match=r"'BAAI/bge-large-en-v1.5'.*no local directory.*not "
                                         r"in the Hugging Face cache.*HF_HUB_OFFLINE=1.*"
                                         r"hf download"):
    hub.encoder_dir("BAAI/bge-large-en-v1.5")
  lay_out(hf_home / "hub", MINILM_ID, minilm_files(minilm_dir, weights=False))
  assert hub.encoder_dir(MINILM_ID, weights=False).is_dir()  # config + tokenizer suffice
  with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
    hub.encoder_dir(MINILM_ID)  # the weights were never cached
  with pytest.raises(hub.HubError, match="revision v9"):
    hub.encoder_dir(f"{MINILM_ID}@v9", weights=False)


def test_config_encoders_by_hub_id(hf_home, minilm_dir, from_run):
  lay_out(hf_home / "hub", MINILM_ID, minilm_files(minilm_dir))
  by_id = small_config(8)
  by_id.text_encoder = by_id.label_encoder = MINILM_ID
  model = run_dir_lib.build_model(by_id)  # the run's model was built from 'minilm'
  built = dict(jax.tree_util.tree_leaves_with_path(nnx.as_pure(nnx.state(model, nnx.Param))))
  run = jax.tree_util.tree_leaves_with_path(from_run.params)
  assert len(built) == len(run) and all(np.array_equal(v, built[k]) for k, v in run)
  text_tok, label_tok = tokenize.load_tokenizers(by_id)
  assert text_tok is label_tok and text_tok("Warsaw").input_ids == (
      from_run.tokenizer("Warsaw").input_ids)


def test_save_pretrained_roundtrip_is_exact(from_run, run_dir, tmp_path):
  folder = from_run.save_pretrained(tmp_path / "saved")
  assert sorted(folder_files(folder)) == sorted(
      [pretrained.CONFIG_FILE, pretrained.WEIGHTS_FILE, pretrained.CARD_FILE]
      + [f"{sub}/{n}" for sub in ("text_encoder", "label_encoder")
         for n in ("config.json", "special_tokens_map.json", "tokenizer.json",
                   "tokenizer_config.json", "vocab.txt")])
  moved = tmp_path / "elsewhere"
  shutil.move(str(folder), moved)  # portable: nothing points back at the run directory
  loaded = GLiDREPredictor.from_pretrained(moved)
  ref = jax.tree_util.tree_leaves_with_path(from_run.params)
  got = dict(jax.tree_util.tree_leaves_with_path(loaded.params))
  assert len(ref) == len(got)
  assert all(np.array_equal(np.asarray(v), np.asarray(got[k])) and got[k].dtype == v.dtype
             for k, v in ref)
  np.testing.assert_array_equal(loaded.scores([RAW], LABELS)[0], from_run.scores([RAW], LABELS)[0])
  assert loaded.predict([RAW], LABELS, 0.3) == from_run.predict([RAW], LABELS, 0.3)
  assert loaded.train_labels() == from_run.train_labels() and len(loaded.train_labels()) == 96

  meta = json.loads((moved / pretrained.CONFIG_FILE).read_text())
  assert meta["config"]["text_encoder"] == "text_encoder"
  assert meta["encoders"] == {"text_encoder": MINILM_ID, "label_encoder": MINILM_ID}
  assert meta["training"]["step"] == 4 and meta["training"]["steps"] == 200
  card = (moved / pretrained.CARD_FILE).read_text()
  assert card.startswith("---\nlibrary_name: glidre-jax\nlicense: apache-2.0\n")
  assert f"base_model: [{MINILM_ID}]" in card
  assert "| dev (dev[400:]) | 0.5 | 50.00 | 12.50 | 25.00 | 20.00 | 0.4 | 30.00 |" in card
  assert "`place of birth`" in card and "## Labels (96)" in card
  assert "weights of the best dev step 4" in card and "Intended use" in card

  # Saving a loaded folder again keeps its record (and adds given evaluations).
  again = loaded.save_pretrained(tmp_path / "again", scores={"test": {"f1": 0.5}})
  card = (again / pretrained.CARD_FILE).read_text()
  assert "| dev (dev[400:]) |" in card and "| test | – | – | – | 50.00 |" in card


def test_saved_folder_by_hub_id(from_run, hf_home, tmp_path):
  folder = from_run.save_pretrained(tmp_path / "saved", model_id="glidre-test/tiny")
  assert 'GLiDRE.from_pretrained("glidre-test/tiny")' in (folder / "README.md").read_text()
  snapshot = lay_out(hf_home / "hub", "glidre-test/tiny", folder_files(folder))
  shutil.rmtree(folder)
  loaded = GLiDREPredictor.from_pretrained("glidre-test/tiny")
  np.testing.assert_array_equal(loaded.scores([RAW], LABELS)[0], from_run.scores([RAW], LABELS)[0])
  pinned = GLiDREPredictor.from_pretrained("glidre-test/tiny", revision=snapshot.name)
  assert pathlib.Path(pinned.config.text_encoder).parent.name == snapshot.name  # that commit
  with pytest.raises(hub.HubError, match="GLiDRE model 'glidre-test/other'.*HF_HUB_OFFLINE"):
    GLiDREPredictor.from_pretrained("glidre-test/other")


def test_push_to_hub_offline_is_a_clear_error(from_run, hf_home):
  with pytest.raises(hub.HubError, match=r"push_to_hub\('me/model'\) needs the network"):
    from_run.push_to_hub("me/model")
  with pytest.raises(ValueError, match="not a Hub repository id"):
    from_run.push_to_hub("no-org")


def test_official_layout_flag_and_hub_import(from_run, hf_home, tmp_path):
  pytest.importorskip("torch")
  out = from_run.save_pretrained(tmp_path / "official", official=True)
  names = {p.name for p in out.iterdir()}
  assert {"glidre_config.json", "pytorch_model.bin", "model.safetensors", "README.md",
          "text_encoder", "labels_encoder"} <= names
  official = json.loads((out / "glidre_config.json").read_text())
  assert official["model_name"] == official["labels_encoder"] == MINILM_ID
  lay_out(hf_home / "hub", "glidre-test/official", folder_files(out))
  imported = GLiDREPredictor.from_pretrained("glidre-test/official")
  np.testing.assert_allclose(imported.scores([RAW], LABELS)[0], from_run.scores([RAW], LABELS)[0],
                             rtol=1e-5, atol=1e-6)

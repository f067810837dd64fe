"""Open-label training: per-batch label sets, custom GLiDRE-format data."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from configs import custom
from glidre_jax import evaluate
from glidre_jax.data import pairs, registry
from glidre_jax.data import local_files, open_labels, readers
from glidre_jax.data.assets import asset_path
from glidre_jax.data.featurize import Buckets
from glidre_jax.data.pipeline import build_dataset, make_iterator

BUCKETS = Buckets((128, 512), (64, 512), (8, 48))


def test_batch_names_bucket_and_negatives():
  spec = open_labels.OpenLabels(buckets=(4, 8), fill_negatives=True, seed=3)
  vocab = [f"rel{i}" for i in range(20)]
  names, k = spec.batch_names(["rel5", "rel2", "rel5"], vocab, batch_number=7)
  assert k == 4 and len(names) == 4
  assert names[:2] == ("rel2", "rel5")  # positives first, sorted, once each
  assert set(names[2:]) <= set(vocab) - {"rel2", "rel5"}  # negatives are not positives
  assert spec.batch_names(["rel5", "rel2"], vocab, 7) == (names, k)  # deterministic
  assert any(spec.batch_names(["rel5", "rel2"], vocab, b)[0] != names for b in range(8, 20))
  names, k = spec.batch_names([f"rel{i}" for i in range(5)], vocab, 0)
  assert k == 8 and len(names) == 8
  # Without filling, the bucket's tail is padding; a vocabulary too small leaves gaps.
  assert open_labels.OpenLabels((4, 8), fill_negatives=False).batch_names(["a"], vocab, 0) == (
      ("a",), 4)
  assert spec.batch_names(["a"], ["a", "b"], 0) == (("a", "b"), 4)
  with pytest.raises(ValueError, match="more than the largest label bucket 8.*'doc-x'"):
    spec.batch_names([f"rel{i}" for i in range(9)], vocab, 0, titles=["doc-x"])
  with pytest.raises(ValueError, match="positive"):
    open_labels.OpenLabels(buckets=(0, 4))


def test_remap_labels_moves_columns():
  rows = np.array([[0, 1, 0], [1, 0, 1]], np.int32)  # (0, b, 1), (1, d, 0)
  feat = {"relations": rows.copy(), "num_labels": 2, "label_names": ("b", "d"), "title": "t"}
  out = open_labels.remap_labels(feat, {"a": 0, "b": 1, "c": 2, "d": 3}, 5)
  assert out["num_labels"] == 5
  assert out["relations"].tolist() == [[0, 1, 1], [1, 0, 3]]
  assert (feat["relations"] == rows).all() and feat["num_labels"] == 2  # the cached feature is left alone


def _custom_docs():
  return readers.read_glidre(asset_path("examples", "custom_train.jsonl"))


def _open_dataset(docs, tok, shard=0, shards=1, **kw):
  vocab = local_files.relation_names(docs)
  return build_dataset(docs, tokenizer=tok, label_names=vocab, batch_size=2, buckets=BUCKETS,
                       train=True, seed=1, shard_index=shard, num_shards=shards,
                       open_labels=open_labels.OpenLabels((4, 8, 16), seed=1), **kw)


def test_open_label_batches_carry_their_documents_facts(tok):
  docs = _custom_docs()
  batches = [next(it) for it in [make_iterator(_open_dataset(docs, tok), num_threads=1)]
             for _ in range(8)]
  label_sets = set()
  for batch in batches:
    names = batch["meta"]["label_names"]
    k = batch["label_mask"].shape[0]
    assert k in (4, 8, 16) and batch["pair_labels"].shape[-1] == k
    assert batch["label_input_ids"].shape[0] == k
    label_sets.add(names)
    gold = set()
    for row, index in enumerate(batch["meta"]["doc_index"]):
      for rel in docs[index].relations:
        gold.add((row, rel.head, names.index(rel.label), rel.tail))
    found = {(b, h, k, t) for b, h, t, k in np.argwhere(pairs.dense(batch["pair_labels"], batch))}
    assert found == gold  # every fact, in its name's column, and nothing else
    own = {n for i in batch["meta"]["doc_index"] for r in docs[i].relations for n in [r.label]}
    assert own <= set(names) and int(batch["label_mask"].sum()) == len(names)
  assert len(label_sets) > 1  # label sets differ between batches


def test_open_label_sets_agree_across_processes(tok):
  """Two processes hold different documents of a global batch but must build
  the same (replicated) label side."""
  docs = _custom_docs()
  per_process = [[next(it) for _ in range(4)] for it in
                 (make_iterator(_open_dataset(docs, tok, p, 2), num_threads=1) for p in (0, 1))]
  for b0, b1 in zip(*per_process):
    assert set(b0["meta"]["doc_index"]).isdisjoint(b1["meta"]["doc_index"])
    assert b0["meta"]["label_names"] == b1["meta"]["label_names"]
    np.testing.assert_array_equal(b0["label_input_ids"], b1["label_input_ids"])


def test_open_labels_only_for_training(tok):
  with pytest.raises(ValueError, match="fixed label set"):
    build_dataset(_custom_docs(), tokenizer=tok, label_names=("x",), batch_size=2,
                  open_labels=open_labels.OpenLabels(), shard_index=0, num_shards=1)


def test_parse_split():
  assert local_files.parse_split("dev") == ("dev", slice(None, None))
  assert local_files.parse_split("train[:100]") == ("train", slice(None, 100))
  assert local_files.parse_split(" dev[-5:] ") == ("dev", slice(-5, None))
  with pytest.raises(ValueError, match="NAME\\[start:end\\]"):
    local_files.parse_split("dev[1.5:]")


def test_custom_config_data_setup_and_errors(tmp_path):
  config = custom.get_config()
  data = registry.data_setup(config)
  names = data.schema.names
  assert names == tuple(sorted(names)) and "founded by" in names and len(names) == 10
  assert len(data.source("train")) == 8 and len(data.source("train[:3]")) == 3
  assert data.open_labels is None and data.eval_schema is None

  labels = tmp_path / "labels.txt"
  labels.write_text("founded by\n\nborn in\n")
  config.data.labels_file = str(labels)
  assert registry.load_schema(config).names == ("founded by", "born in")
  labels.write_text("born in\nborn in\n")
  with pytest.raises(ValueError, match="duplicate label 'born in'"):
    registry.load_schema(config)
  labels.write_text("\n")
  with pytest.raises(ValueError, match="holds no label names"):
    registry.load_schema(config)
  config.data.labels_file = str(tmp_path / "missing.txt")
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    registry.load_schema(config)

  config = custom.get_config()
  config.data.train_file = None
  with pytest.raises(ValueError, match="needs data.train_file"):
    registry.data_setup(config)
  config = custom.get_config()
  config.data.eval_file = None
  with pytest.raises(ValueError, match="split 'dev': no file configured"):
    registry.data_setup(config).source("dev")
  with pytest.raises(ValueError, match="selects no documents"):
    registry.data_setup(custom.get_config()).source("train[8:]")


def test_fixed_label_set_rejects_unknown_eval_label(tmp_path, tok):
  """A dev relation name outside the training label set is named, with its document."""
  doc = json.loads(pathlib.Path(asset_path("examples", "custom_dev.jsonl")).read_text()
                   .splitlines()[0])
  doc["relations"].append([0, "spouse", 1])
  path = tmp_path / "dev.jsonl"
  path.write_text(json.dumps(doc) + "\n")
  config = custom.get_config()
  config.data.eval_file = str(path)
  data = registry.data_setup(config)
  with pytest.raises(ValueError, match="document '100': relation 'spouse' is not in the label"):
    data.features(data.source("dev"))


def test_open_config_evaluates_on_the_eval_files_names():
  config = custom.get_config("open")
  train_data, eval_data = registry.zero_shot_split(registry.data_setup(config))
  assert train_data.open_labels == open_labels.OpenLabels((8, 16, 32, 64), True, 0)
  assert eval_data.schema.names == local_files.relation_names(
      readers.read_glidre(asset_path("examples", "custom_dev.jsonl"))) != train_data.schema.names
  config.data.held_out_relations = "founded by"
  with pytest.raises(ValueError, match="held_out_relations"):
    registry.zero_shot_split(registry.data_setup(config))


def test_open_label_training_end_to_end(tmp_path):
  """configs/custom.py:open trains, evaluates on the dev file's names, and
  the run reloads for evaluation with its training facts."""
  from glidre_jax import evaluate, train as train_lib
  config = custom.get_config("open")
  config.data.batch_size = 4  # 8 documents: all names of a batch fit bucket 8 or 16
  config.data.seq_buckets, config.data.word_buckets = (128,), (64,)
  config.train.steps = 3
  config.train.log_every = 1
  config.train.eval_every = 3
  summary = train_lib.train(config, tmp_path / "run")
  losses = [loss for _, loss in summary["logged_losses"]]
  assert len(losses) == 3 and np.all(np.isfinite(losses))
  # One compilation per (entity bucket, label bucket) pair reached.
  assert 1 <= summary["train_step_compilations"] <= 3
  assert summary["best_dev"]["num_gold"] == 7
  run = evaluate.load_run(tmp_path / "run")
  assert run.schema.names == local_files.relation_names(run.read_split("dev"))
  docs = run.read_split("dev")
  result = evaluate.evaluate_candidates(run.score(docs), docs, run.schema, run.train_facts(),
                                        0.5, (0.5,))
  # The reloaded best checkpoint scores exactly what training measured at its step.
  best = summary["best_dev"]
  for key in ("num_pred", "num_gold", "f1", "ign_f1", "precision", "recall"):
    assert result[key] == pytest.approx(best[key], abs=1e-9), key

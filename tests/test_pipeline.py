from __future__ import annotations

import itertools
import json
import shutil

import jax
import numpy as np

from glidre_jax.data import batch as batch_lib
from glidre_jax.data import registry
from glidre_jax.data.featurize import Buckets
from glidre_jax.data.pipeline import build_dataset, make_iterator, subset_indices, to_device


def _ds(docs, tok, schema, **kw):
  kw.setdefault("batch_size", 4)
  return build_dataset(docs, tokenizer=tok, label_names=schema.names, shard_index=0,
                       num_shards=1, **kw)


def _shape(b):
  return b["input_ids"].shape[1], b["word_index"].shape[1], b["entity_mask"].shape[1]


def _doc_ids(batches):
  return [int(i) for b in batches for i in b["meta"]["doc_index"] if i >= 0]


def test_distinct_batch_shapes_over_dev(tok, schema, dev_docs):
  buckets = Buckets()
  ds = _ds(dev_docs, tok, schema, buckets=buckets)
  batches = list(make_iterator(ds))
  shapes = {}
  for b in batches:
    shapes[_shape(b)] = shapes.get(_shape(b), 0) + 1
    assert set(b) == set(batch_lib.DOC_FIELDS + batch_lib.LABEL_FIELDS + ("meta",))
  print(f"\n{len(shapes)} distinct batch shapes over {len(batches)} dev batches "
        f"(of {buckets.num_combinations} bucket combinations): {shapes}")
  assert len(shapes) <= buckets.num_combinations
  assert all(s[0] in buckets.seq_len and s[1] in buckets.words and s[2] in buckets.entities
             for s in shapes)
  assert _doc_ids(batches) == list(range(len(dev_docs)))  # evaluation: every doc once, in order


def test_tfds_builder_local_dir(tmp_path, tok, schema, dev_docs, redocred_dev_path):
  from glidre_jax.data import tfds_builders as tb

  local = tmp_path / "src"
  local.mkdir()
  shutil.copy(redocred_dev_path, local / "dev_revised.json")
  builder = tb.prepare(tb.ReDocRED, data_dir=tmp_path / "tfds", local_dir=local)
  assert list(builder.info.splits) == ["dev"]
  train_src, sel_src = tb.data_source(builder, "dev[:400]"), tb.data_source(builder, "dev[400:]")
  assert (len(train_src), len(sel_src)) == (400, 100)
  decode = registry.record_decoder("redocred")
  assert decode(train_src[0]) == dev_docs[0] and decode(sel_src[0]) == dev_docs[400]
  assert decode(sel_src[99]) == dev_docs[499]
  # Prepared data is reused for the same sources, and not for other ones.
  again = tb.prepare(tb.ReDocRED, data_dir=tmp_path / "tfds", local_dir=local)
  assert again.data_dir == builder.data_dir and len(tb.data_source(again, "dev")) == 500
  raw = json.loads((local / "dev_revised.json").read_text())
  (local / "dev_revised.json").write_text(json.dumps(raw[:10]))
  edited = tb.prepare(tb.ReDocRED, data_dir=tmp_path / "tfds", local_dir=local)
  assert edited.data_dir != builder.data_dir and len(tb.data_source(edited, "dev")) == 10
  ds = build_dataset(sel_src, decode=decode, tokenizer=tok, label_names=schema.names,
                     batch_size=4, shard_index=0, num_shards=1)
  assert len(ds) == 25 and ds[0]["meta"]["titles"][0] == dev_docs[400].title


def test_cdr_builder(tmp_path, redocred_dev_path):
  from glidre_jax.data import tfds_builders as tb

  local = tmp_path / "cdr"
  local.mkdir()
  raw = json.loads(redocred_dev_path.read_text())[:3]
  for doc in raw:  # a tiny CDR-like file: one CHEM and one DISE entity, one CID fact
    doc["vertexSet"] = doc["vertexSet"][:2]
    doc["vertexSet"][0] = [dict(m, type="DISE") for m in doc["vertexSet"][0]]
    doc["vertexSet"][1] = [dict(m, type="CHEM") for m in doc["vertexSet"][1]]
    doc["labels"] = [{"h": 0, "t": 1, "r": "CID", "evidence": []},
                     {"h": 1, "t": 0, "r": "NR", "evidence": []}]
  (local / "train.json").write_text(json.dumps(raw))
  builder = tb.prepare(tb.CDR, data_dir=tmp_path / "tfds", local_dir=local)
  doc = registry.record_decoder("cdr")(tb.data_source(builder, "train")[2])
  assert [(r.head, r.tail, r.label) for r in doc.relations] == [(1, 0, "chemical induces disease")]


def test_subset_deterministic_and_seeded(tok, schema, dev_docs):
  def docs_of(seed):
    ds = _ds(dev_docs, tok, schema, subset_size=5, subset_seed=seed, batch_size=5)
    return _doc_ids([ds[0]])

  a, b, c = docs_of(0), docs_of(0), docs_of(1)
  assert a == b and len(a) == 5 and a != c
  assert set(subset_indices(500, 5, 3)) <= set(subset_indices(500, 10, 3))  # nested


def test_training_epochs_reshuffle_fixed_subset(tok, schema, dev_docs):
  ds = _ds(dev_docs, tok, schema, subset_size=6, subset_seed=7, train=True, seed=1,
           batch_size=3)
  epochs = [_doc_ids([ds[2 * e], ds[2 * e + 1]]) for e in range(3)]
  assert all(sorted(e) == sorted(subset_indices(500, 6, 7).tolist()) for e in epochs)
  assert len({tuple(e) for e in epochs}) > 1  # a new order each epoch


def test_iterator_state_resumes_exactly(tok, schema, dev_docs):
  ds = _ds(dev_docs[:40], tok, schema, train=True, seed=3, batch_size=4)
  it = make_iterator(ds, num_threads=2)
  for _ in range(8):
    next(it)
  state = it.get_state()
  json.dumps(state)  # small and serializable: goes into the training checkpoint
  expected = [next(it) for _ in range(4)]  # crosses the epoch boundary at batch 10
  resumed = make_iterator(ds, num_threads=2)
  resumed.set_state(state)
  for want, got in zip(expected, (next(resumed) for _ in range(4))):
    assert want["meta"]["doc_index"].tolist() == got["meta"]["doc_index"].tolist()
    for name in batch_lib.DOC_FIELDS:
      np.testing.assert_array_equal(want[name], got[name])


def test_process_shards_partition_documents(tok, schema, dev_docs):
  docs = dev_docs[:11]
  shards = [list(_ds_shard(docs, tok, schema, i)) for i in range(3)]
  assert len({len(s) for s in shards}) == 1  # same number of batches on every process
  ids = sorted(itertools.chain.from_iterable(_doc_ids(s) for s in shards))
  assert ids == list(range(11))


def _ds_shard(docs, tok, schema, i):
  return build_dataset(docs, tokenizer=tok, label_names=schema.names, batch_size=2,
                       shard_index=i, num_shards=3)


def test_to_device_single_process(tok, schema, dev_docs):
  import jax

  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = _ds(dev_docs[:4], tok, schema)[0]
  out = to_device(batch, sharding)
  assert set(out) == set(batch_lib.DOC_FIELDS + batch_lib.LABEL_FIELDS)
  for name, arr in out.items():
    assert arr.shape == batch[name].shape and arr.dtype == batch[name].dtype
    np.testing.assert_array_equal(np.asarray(arr), batch[name])
  assert out["label_mask"].sharding.is_fully_replicated


def test_sorted_windows_keep_epochs_complete_and_batches_homogeneous():
  from glidre_jax.data.pipeline import EpochOrder
  indices = np.arange(40)
  sizes = {i: (i * 37) % 101 for i in range(40)}
  order = EpochOrder(indices, sizes, batch_size=4, window=5, seed=3, num_epochs=None)
  for epoch in range(2):
    seen = [order[epoch * 40 + k] for k in range(40)]
    assert sorted(seen) == list(range(40))  # every document once per epoch
  plain = np.random.default_rng([3, 0]).permutation(indices)
  spread = lambda seq: np.mean([np.ptp([sizes[i] for i in seq[k:k + 4]]) for k in range(0, 40, 4)])
  assert spread([order[k] for k in range(40)]) < spread(plain) / 2
  assert [order[k] for k in range(40)] != [order[40 + k] for k in range(40)]


def test_process_slices_rebuild_the_single_process_batches():
  from glidre_jax.data.pipeline import EpochOrder, ProcessSlice
  order = EpochOrder(np.arange(20), None, batch_size=4, window=0, seed=1, num_epochs=2)
  single = ProcessSlice(order, 4, 0, 1)
  halves = [ProcessSlice(order, 2, p, 2) for p in range(2)]
  for b in range(10):
    merged = [halves[p][2 * b + r] for p in range(2) for r in range(2)]
    assert merged == [single[4 * b + r] for r in range(4)]


def test_windowed_training_batches_keep_every_fact(tok, schema, dev_docs):
  """With window_stride, documents over max_length subwords come in windows
  and lose no gold fact; without it, truncation masks some."""
  docs = dev_docs[:4]
  kw = dict(max_length=128, buckets=Buckets((128,), (128, 512), (48,)), batch_size=2,
            train=True, seed=0)
  windowed = next(make_iterator(_ds(docs, tok, schema, window_stride=64, **kw), num_threads=1))
  assert windowed["input_ids"].ndim == 3 and windowed["input_ids"].shape[2] == 128
  assert windowed["window_word_mask"].shape[:2] == windowed["input_ids"].shape[:2]
  gold = sum(len(docs[i].relations) for i in windowed["meta"]["doc_index"])
  assert windowed["pair_labels"].sum() == gold and windowed["meta"]["masked_labels"] == 0
  truncated = next(make_iterator(_ds(docs, tok, schema, **kw), num_threads=1))
  assert truncated["input_ids"].ndim == 2 and truncated["meta"]["masked_labels"] > 0
  placed = to_device(windowed, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  assert placed["window_word_mask"].shape == windowed["window_word_mask"].shape

"""Run with 4 CPU devices: train steps on a (2, 2) mesh, and with FSDP on a
(4, 1) mesh, equal one device; FSDP's per-device memory falls with the shards.

XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/scripts/mesh_check.py
Prints one JSON line with the differences and the observed shardings.
"""
import json

import jax
import ml_collections
import numpy as np

from glidre_jax import sharding, trainer as trainer_lib
from glidre_jax.data import label_split, pairs
from glidre_jax.data import batch as batch_lib
from glidre_jax.encoders.bert import BertConfig, BertModel
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import GLiDREModel
from flax import nnx


def make_model():
  enc = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0, max_position_embeddings=32)
  return GLiDREModel(GLiDREConfig(hidden_size=24, dropout=0.0), BertModel(enc, rngs=nnx.Rngs(1)),
                BertModel(enc, rngs=nnx.Rngs(2)), rngs=nnx.Rngs(3))


def make_batch(b=4, l=16, w=8, e=4, k=5, t=4, shards=2):
  """One pair shard per device of the mesh's data axis (as train.pair_shards)."""
  r = np.random.RandomState(0)
  return {"input_ids": r.randint(1, 50, (b, l)).astype(np.int32),
          "attention_mask": np.ones((b, l), np.int32),
          "word_index": np.tile(np.arange(1, w + 1), (b, 1)).astype(np.int32),
          "word_mask": np.ones((b, w), np.int32),
          "entity_word_weights": (r.rand(b, e, w) < 0.3).astype(np.float32),
          "entity_mask": np.ones((b, e), np.int32),
          **pairs.from_dense(np.ones((b, e, e), np.int32),
                             (r.rand(b, e, e, k) < 0.2).astype(np.int32), shards=shards),
          "doc_mask": np.ones((b,), np.int32),
          # One long name among short ones: the label side comes split by length.
          **label_split.split_by_length(
              r.randint(1, 50, (k, t)).astype(np.int32),
              (np.arange(t) < np.where(np.arange(k) == k - 1, t, 1)[:, None]).astype(np.int32),
              np.ones((k,), np.int32))}


def run(mesh, fsdp=False, staged=False):
  cfg = run_config()
  cfg.stage_encoders = staged
  # fsdp_min_size=0: the tiny model's arrays are all below the default size.
  trainer = trainer_lib.Trainer(make_model(), cfg, mesh, fsdp=fsdp, fsdp_min_size=0)
  state = trainer.initial_state
  batch = make_batch(shards=mesh.shape[sharding.DATA])
  for _ in range(2):
    state = trainer.train_step(state, trainer.place(batch))
  metrics, state = trainer.fetch_metrics(state)
  return metrics["loss"], jax.device_get(state.params), trainer, state


def run_config():
  return ml_collections.ConfigDict(dict(
      steps=10, grad_accum=1, lr_encoder=1e-3, lr_head=1e-3, weight_decay=0.01,
      warmup_fraction=0.1, clip_norm=10.0, loss="focal", focal_alpha=0.8, focal_gamma=3.0,
      freeze_label_encoder=False, stage_encoders=False))


def param_delta(params_a, params_b) -> float:
  # Attention key biases have an exactly-zero gradient (softmax ignores a
  # constant per query); Adam turns their float noise into ±lr steps, so they
  # are left out of the comparison.
  deltas = {jax.tree_util.keystr(path): float(np.abs(a - b).max()) for (path, a), b in
            zip(jax.tree_util.tree_leaves_with_path(params_a), jax.tree.leaves(params_b))}
  return max(v for k, v in deltas.items() if not k.endswith("['key']['bias']"))


def fsdp_memory(devices: int) -> dict:
  """Per-device bytes of the AOT-compiled FSDP step on `devices` devices."""
  mesh = sharding.make_mesh(devices, 1, jax.devices()[:devices])
  trainer = trainer_lib.Trainer(make_model(), run_config(), mesh, fsdp=True, fsdp_min_size=0)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding if k in
                                   batch_lib.DOC_FIELDS else sharding.named(mesh))
           for k, v in make_batch(shards=devices).items()}
  mem = trainer.lower(trainer.abstract_state, batch).compile().memory_analysis()
  return {"argument": mem.argument_size_in_bytes, "temp": mem.temp_size_in_bytes}


def main():
  assert len(jax.devices()) == 4, jax.devices()
  loss_1, params_1, _, _ = run(sharding.make_mesh(1, 1, jax.devices()[:1]))
  mesh = sharding.make_mesh(2, 2)
  loss_4, params_4, trainer, state = run(mesh)
  loss_fsdp, params_fsdp, fsdp_trainer, fsdp_state = run(sharding.make_mesh(4, 1), fsdp=True)
  kernel = fsdp_state.params["span_rep_layer"]["projection"]["dense_in"]["kernel"]
  # train.stage_encoders: the encoders' VJP across executables, on both meshes.
  loss_staged, params_staged, _, _ = run(mesh, staged=True)
  loss_fsdp_staged, params_fsdp_staged, _, _ = run(sharding.make_mesh(4, 1), fsdp=True,
                                                   staged=True)

  # The pair logits of the sharded model: split over 'data' and 'model'.
  model = trainer.predictor.model(state.params, state.rest)
  batch = trainer.place(make_batch())

  @jax.jit
  def pair_logits(batch):
    ctx = model.entity_context(batch).by_shard(2)
    labels = model.encode_labels(batch)
    return model.score_pairs(ctx, batch["pair_doc"], batch["pair_head"], batch["pair_tail"],
                             labels).logits

  with jax.set_mesh(mesh):
    compiled = pair_logits.lower(batch).compile()  # one compile: run it and read its HLO
    logits, hlo = compiled(batch), compiled.as_text()
  print(json.dumps({"loss_1": loss_1, "loss_4": loss_4,
                    "param_delta": param_delta(params_1, params_4),
                    "loss_fsdp": loss_fsdp, "fsdp_param_delta": param_delta(params_1, params_fsdp),
                    "loss_staged": loss_staged,
                    "staged_param_delta": param_delta(params_1, params_staged),
                    "loss_fsdp_staged": loss_fsdp_staged,
                    "fsdp_staged_param_delta": param_delta(params_1, params_fsdp_staged),
                    "fsdp_kernel_spec": str(kernel.sharding.spec),
                    "fsdp_kernel_shard_shape": list(kernel.addressable_shards[0].data.shape),
                    "fsdp_memory": {n: fsdp_memory(n) for n in (1, 4)},
                    "logits_spec": str(logits.sharding.spec),
                    "logits_shard_shape": list(logits.addressable_shards[0].data.shape),
                    "hlo_has_sharding": "sharding={devices=" in hlo}))


if __name__ == "__main__":
  main()

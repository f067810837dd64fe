"""Shared by the training tests: a tiny random GLiDRE (one-layer BERT of
width 32 with MiniLM's vocabulary and tokenizer) and real batches of shipped
Re-DocRED dev documents, small enough for many train steps on a CPU."""
from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp

from configs import default
from glidre_jax import encoders
from glidre_jax.data import assets, featurize as featurize_lib, pairs
from glidre_jax.data.readers import read_docred
from glidre_jax.data.relations import RelationSchema
from glidre_jax.data.tokenize import load_tokenizer, minilm_path
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import build_glidre

NUM_LABELS = 12
BUCKETS = featurize_lib.Buckets((128,), (128,), (48,))


def rounding_noise(name: str) -> bool:
  """Parameters whose updates two orders of the same sums may not share: an
  attention key bias has a zero gradient in exact arithmetic (the softmax
  over keys ignores a shift shared by all keys), and Adam's normalised step
  follows the rounding noise of that zero (the split train step
  differentiates the encoders apart from the pair scoring)."""
  return name.endswith("['key']['bias']")


def encoder_config(**overrides):
  hf = encoders.common.read_hf_config(minilm_path())
  return encoders.config_from_hf(dict(hf, hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=4, intermediate_size=64, **overrides))


def tiny_model(dtype=jnp.float32, seed: int = 0, dropout: float = 0.0):
  """hidden 40 != 32: the encoders' projections exist (token_rep_layer.*)."""
  cfg = encoder_config(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
  return build_glidre(GLiDREConfig(hidden_size=40, dropout=dropout), cfg, cfg, dtype=dtype,
                      seed=seed)


def train_config(**overrides):
  """The default config's train section with `overrides`."""
  c = default.get_config().train
  for key, value in overrides.items():
    c[key] = value
  return c


@functools.lru_cache(maxsize=1)
def batches(num: int = 4, batch_size: int = 2) -> tuple[dict, ...]:
  """`num` collated numpy batches of the first shipped dev documents."""
  schema = RelationSchema.from_file(assets.asset_path("docred", "rel_info.json"))
  docs = read_docred(assets.asset_path("redocred", "dev_revised.json"), schema)[:num * batch_size]
  tok = load_tokenizer(minilm_path())
  index = {n: k for k, n in enumerate(schema.names)}
  feats = [featurize_lib.featurize(d, tok, index, 128) for d in docs]
  feats = [featurize_lib.first_labels(f, NUM_LABELS) for f in feats]  # the first labels
  labels = featurize_lib.label_batch(tok, list(schema.names[:NUM_LABELS]))
  groups = [feats[i:i + batch_size] for i in range(0, len(feats), batch_size)]
  # One pair bucket above the fullest batch: every batch has one shape (one
  # compile per test) and some pair padding.
  most = max(sum(pairs.num_pairs(f) for f in g) for g in groups)
  buckets = dataclasses.replace(BUCKETS, pairs=(most // 64 * 64 + 64,))
  return tuple(featurize_lib.collate(g, buckets, labels, batch_size=batch_size) for g in groups)

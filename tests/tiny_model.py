"""Tiny random GLiDREs for tests that exercise code paths, not accuracy.

One-layer BERTs with MiniLM's vocabulary (30 522 ids), so the shipped MiniLM
tokenizer and the shipped documents feed them; built in well under a second.
`small_config` is the default config (the shipped MiniLM encoders) cut down
for tests that build the real model.
"""
from __future__ import annotations

from configs import default
from glidre_jax.encoders.bert.modeling import BertConfig
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model.glidre import GLiDREModel, build_glidre


def tiny_bert(hidden: int = 32, dropout: float = 0.0) -> BertConfig:
  return BertConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                    intermediate_size=2 * hidden, hidden_dropout_prob=dropout,
                    attention_probs_dropout_prob=0.0)


def tiny_glidre(cfg: GLiDREConfig, *, seed: int = 0, text_hidden: int = 32,
                label_hidden: int = 32) -> GLiDREModel:
  """A random GLiDRE on tiny encoders (projections when widths differ from D)."""
  return build_glidre(cfg, tiny_bert(text_hidden), tiny_bert(label_hidden), seed=seed)


def small_config(entities: int):
  """The default config at 128 subwords and words, `entities` entities a
  document and evaluation batches of 2: one bucket shape (the pair bucket
  holds two documents' every pair)."""
  c = default.get_config()
  c.data.max_length = 128
  c.data.seq_buckets, c.data.word_buckets, c.data.entity_buckets = (128,), (128,), (entities,)
  c.data.eval_batch_size = 2
  c.data.pair_buckets = (2 * entities * entities,)
  return c

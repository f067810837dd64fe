"""Analytic FLOPs of a GLiDRE step and the machine's measured GEMM rate.

Matmul FLOPs only (2 per multiply-add); element-wise work, softmaxes and
LayerNorms are left out, so utilisation against these counts is a lower
bound. A training step costs 3× the forward of what trains (forward +
backward through activations and weights) and 1× the forward of what does
not (a frozen label encoder run in the step). Pair counts are inputs — the
real (document, head, tail) candidates and the pairs the layout executes
(B·E_bucket² for the dense layout, the padded packed total for a packed
one) — so the count serves either layout.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from glidre_jax.data import label_split


def encoder_flops(cfg, tokens: float, seq_len: int) -> float:
  """Forward FLOPs of a BERT / DeBERTa-v2 encoder over `tokens` tokens in
  sequences of `seq_len` (attention is quadratic in it)."""
  d, ff, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
  per_token = 8 * d * d + 4 * d * ff + 4 * seq_len * d  # QKVO, FFN, scores + context
  extra = 0.0
  if getattr(cfg, "relative_attention", False):  # DeBERTa's disentangled attention
    span = cfg.position_buckets if cfg.position_buckets > 0 else (
        cfg.max_relative_positions if cfg.max_relative_positions > 0
        else cfg.max_position_embeddings)
    kinds = len(cfg.pos_att_type)
    # c2p / p2c scores against 2·span relative positions, per token...
    per_token += kinds * 2 * (2 * span) * d
    # ...and the relative embeddings' key / query projections, per sequence.
    extra = (tokens / seq_len) * kinds * 2 * (2 * span) * d * d
  return layers * (tokens * per_token + extra)


@dataclasses.dataclass(frozen=True)
class StepShape:
  """What one step processes (totals over the batch)."""
  sequences: int  # encoder sequences (documents, or their windows), padding included
  seq_len: int  # subwords per (padded) sequence
  tokens_real: int  # sum of the documents' real subwords
  docs: int  # B, padding documents included
  words: int  # W per document (padded)
  entities: int  # entity slots in the batch (B·E)
  pairs_real: int  # real candidate pairs
  pairs_executed: int  # pairs the layout scores (padding included)
  labels: int  # K
  label_len: int  # T
  label_tokens_real: int  # real subwords of the label names (the rest is padding)
  long_labels: int = 0  # G names longer than T, encoded again whole (data/label_split.py)...
  long_label_len: int = 0  # ...at this width U
  shards: int = 1  # S pair shards of B/S documents each (the LOP context spans a shard)


def head_flops_per_pair(d: int, words: int, labels: int, lop: bool) -> float:
  """The GLiDRE head per pair (model/glidre.py RelRep + logits): the entity
  halves of the first FFN layers are computed per entity, not per pair."""
  ffn_right_half = 2 * d * 4 * d + 2 * 4 * d * d  # context / tail half + dense_out
  flops = 2 * 2 * d * 4 * d + 2 * 4 * d * d  # projection FFN(2D -> 4D -> D)
  if lop:
    flops += 2 * words * d + 2 * ffn_right_half  # LOP context, head + tail extractors
  else:
    flops = ffn_right_half  # projection with the head half per entity
  return flops + 2 * d * labels


def step_flops(model, shape: StepShape, *, train: bool, label_encoder_in_step: bool,
               label_encoder_trained: bool, label_vectors_given: bool = False) -> dict:
  """FLOPs of a step of `model` (a GLiDREModel) on `shape`: per component,
  'real' (real tokens and pairs: the floor) and 'executed' (padded).
  label_vectors_given: inference with cached label vectors (no label side)."""
  cfg = model.config
  d = cfg.hidden_size
  text = model.token_rep_layer.bert_layer.model
  label = model.token_rep_layer.labels_encoder.model
  mult = 3.0 if train else 1.0
  s = shape
  text_exec = encoder_flops(text.config, s.sequences * s.seq_len, s.seq_len)
  text_real = encoder_flops(text.config, s.tokens_real, s.seq_len)
  if model.token_rep_layer.projection is not None:
    text_exec += 2 * s.docs * s.words * text.hidden_size * d
    text_real += 2 * s.docs * s.words * text.hidden_size * d
  label_fwd = encoder_flops(label.config, s.labels * s.label_len, s.label_len)
  if s.long_labels:
    label_fwd += encoder_flops(label.config, s.long_labels * s.long_label_len, s.long_label_len)
  label_real = encoder_flops(label.config, s.label_tokens_real, s.label_len)
  label_mult = 0.0 if not label_encoder_in_step else (mult if label_encoder_trained else 1.0)
  prompt = 0.0 if label_vectors_given else s.labels * (2 * d * 4 * d * 2
                                                        + 2 * label.hidden_size * d)
  per_entity = 2 * s.words * (d + s.words)  # pooling of vectors and attention rows
  if cfg.lop:
    per_entity += 2 * 2 * d * 4 * d  # head / tail halves of the extractors
  else:
    per_entity += 2 * d * 4 * d
  per_pair = head_flops_per_pair(d, s.words, s.labels, cfg.lop)
  parts = {"text_encoder": mult * text_exec, "label_encoder": label_mult * label_fwd,
           "labels_head": mult * prompt, "entities": mult * s.entities * per_entity,
           "pairs_real": mult * s.pairs_real * per_pair,
           "pairs_padding": mult * (s.pairs_executed - s.pairs_real) * per_pair}
  if cfg.lop:  # the context matmul spans all B/S documents of a pair's shard
    # (model/glidre.lop_context): 2·W·D a pair for each document beyond its own.
    parts["lop_spread"] = mult * s.pairs_executed * 2 * (s.docs // s.shards - 1) * s.words * d
  real = (mult * text_real + label_mult * label_real + parts["labels_head"] + parts["entities"]
          + parts["pairs_real"])
  return {**parts, "per_pair": per_pair, "real": real, "executed": sum(
      v for k, v in parts.items())}


def batch_pair_counts(batch: dict) -> tuple[int, int]:
  """(real, executed) pairs of a collated batch: the packed pair list
  (pair_mask [S, P], 1 on real pairs) scores all S·P slots."""
  mask = np.asarray(batch["pair_mask"])
  return int(mask.sum()), int(mask.size)


def batch_shape(batch: dict, pairs: tuple[int, int] | None = None) -> StepShape:
  """The StepShape of a collated numpy batch; `pairs` (real, executed)
  defaults to `batch_pair_counts`."""
  ids = np.asarray(batch["input_ids"])
  docs = np.asarray(batch["doc_mask"]).astype(bool)
  labels = np.asarray(batch["label_mask"]).astype(bool)
  long_ids = np.asarray(batch["label_long_input_ids"])
  # Real label subwords: whole names (a long one's cut row is padding work).
  label_real = int(label_split.joined(batch)[1][labels].sum())
  real, executed = batch_pair_counts(batch) if pairs is None else pairs
  return StepShape(sequences=int(np.prod(ids.shape[:-1])), seq_len=ids.shape[-1],
                   tokens_real=int(np.asarray(batch["attention_mask"])[docs].sum()),
                   docs=len(docs), words=np.asarray(batch["word_mask"]).shape[1],
                   entities=int(np.asarray(batch["entity_mask"]).size), pairs_real=real,
                   pairs_executed=executed, labels=np.asarray(batch["label_input_ids"]).shape[0],
                   label_len=np.asarray(batch["label_input_ids"]).shape[1],
                   label_tokens_real=label_real, long_labels=long_ids.shape[0],
                   long_label_len=long_ids.shape[1],
                   shards=np.asarray(batch["pair_mask"]).shape[0])


def gemm_flops_per_s(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
  """Measured matmul rate of the default device: median of `repeats` jitted
  [n, n] @ [n, n] products (after a compiling call)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t)
  return 2.0 * n ** 3 / float(np.median(times))


def utilisation(flops: dict, seconds: float, peak: float) -> dict:
  """MFU against the real work (the floor) and against the executed work."""
  return {"gflop_real": flops["real"] / 1e9, "gflop_executed": flops["executed"] / 1e9,
          "floor_s": flops["real"] / peak, "mfu_real": flops["real"] / (seconds * peak),
          "mfu_executed": flops["executed"] / (seconds * peak)}

"""Jitted inference: label vectors and relation probabilities of padded
batches, and the one loop that runs them over featurized documents.

Used by the predictor API (`glidre_jax.api`), `glidre_jax.evaluate` and the
trainer's dev evaluation; imports nothing of training.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from glidre_jax import sharding
from glidre_jax.data import batch as batch_lib
from glidre_jax.data import batching
from glidre_jax.data.featurize import Buckets
from glidre_jax.model import glidre


def predict_batches(predict: Callable[[dict], np.ndarray], features: Sequence[dict],
                    buckets: Buckets, label_batch: dict, batch_size: int, window: int,
                    progress: Callable | None = None
                    ) -> Iterator[tuple[list[int], dict, np.ndarray]]:
  """(document indices, padded batch, probabilities [B, E, E, K]) per batch.

  `predict`: padded batch -> probabilities. Each batch holds documents of
  one bucket (`data/batching.plan_batches`: no more padding per document
  than at batch 1); windowed documents (windows of `window` subwords) batch
  apart from the others.
  """
  chunks = batching.plan_batches(features, buckets, batch_size, window)
  for chunk, collate in (progress(chunks) if progress else chunks):
    batch = collate([features[i] for i in chunk], label_batch)
    yield chunk, batch, np.asarray(predict(batch))


class Predictor:
  """Jitted inference on (params, rest) of an eval-mode graph definition.

  Every process passes the same numpy batch; it is replicated over the mesh
  (pairs still split over 'model') and the probabilities come back whole.
  """

  def __init__(self, eval_graphdef, mesh: jax.sharding.Mesh | None = None):
    self.graphdef = eval_graphdef
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    replicated = sharding.named(self.mesh)
    self._label_jit = jax.jit(self._label_step, out_shardings=replicated)
    self._predict_jit = jax.jit(self._predict_step, out_shardings=replicated)
    self.num_traces = 0  # predict-step compilations

  def label_step(self, params, rest, label_batch) -> jax.Array:
    """Label vectors [K, D] (a replicated device array, reusable across calls)."""
    with jax.set_mesh(self.mesh):
      return self._label_jit(params, rest, sharding.replicate(dict(label_batch), self.mesh))

  def predict_step(self, params, rest, batch, label_vectors=None) -> np.ndarray:
    """Probabilities [B, E, E, K] of a numpy batch, as numpy (0 on pairs
    that are not scored)."""
    fields = {k: batch[k] for k in batch_lib.DOC_FIELDS + batch_lib.LABEL_FIELDS if k in batch}
    extra = {k: v for k, v in batch.items() if k not in fields and k != "meta"}
    with jax.set_mesh(self.mesh):
      probs = self._predict_jit(params, rest, sharding.replicate({**fields, **extra}, self.mesh),
                                label_vectors)
    return np.asarray(probs.addressable_data(0))

  def model(self, params, rest) -> nnx.Module:
    return nnx.merge(self.graphdef, params, rest)

  def _label_step(self, params, rest, label_batch):
    return self.model(params, rest).encode_labels(label_batch)

  def _predict_step(self, params, rest, batch, label_vectors=None):
    self.num_traces += 1  # runs at trace time only
    output = self.model(params, rest)(batch, label_vectors)
    if output.threshold_logits is not None:
      # Adaptive threshold: a relation holds when its logit beats the pair's
      # threshold logit, i.e. when this score is above 0.5.
      probs = jax.nn.sigmoid(output.logits - output.threshold_logits[..., None])
    else:
      probs = jax.nn.sigmoid(output.logits)
    return glidre.dense(probs, batch)  # the decoders' [B, E, E, K] view

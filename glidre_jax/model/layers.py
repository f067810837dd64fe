"""Small building blocks of the GLiDRE head."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glidre_jax.encoders import common


class FFN(nnx.Module):
  """Linear(in, 4·out) → ReLU → Dropout → Linear(4·out, out).

  GLiNER's `create_projection_layer`; torch indices `.0` and `.3`.
  """

  def __init__(self, d_in: int, d_out: int, dropout: float, *, dtype,
               rngs: nnx.Rngs):
    self.dense_in = nnx.Linear(d_in, 4 * d_out, dtype=dtype, rngs=rngs)
    self.dropout = common.Dropout(dropout, rngs=rngs)
    self.dense_out = nnx.Linear(4 * d_out, d_out, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.dense_out(self.dropout(jax.nn.relu(self.dense_in(x))))

  def call_on_concat(self, left: jax.Array, right: jax.Array) -> jax.Array:
    """self(concat([left, right], -1)) without materialising the concat.

    `left` may be broadcastable (e.g. one vector per entity against one per
    pair): its share of the first matmul is then done once, not E times.
    """
    kernel = self.dense_in.kernel[...].astype(self.dense_in.dtype or left.dtype)
    split = left.shape[-1]
    hidden = (left.astype(kernel.dtype) @ kernel[:split]
              + right.astype(kernel.dtype) @ kernel[split:]
              + self.dense_in.bias[...].astype(kernel.dtype))
    return self.dense_out(self.dropout(jax.nn.relu(hidden)))


def masked_mean(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """Mean of x over `axis` where mask (same shape minus x's last dim) is set."""
  m = mask.astype(x.dtype)[..., None]
  return (x * m).sum(axis) / jnp.maximum(m.sum(axis), 1e-9)

"""Small building blocks of the GLiDRE head."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glidre_jax.encoders import common


class FFN(nnx.Module):
  """Linear(in, hidden) → ReLU → Dropout → Linear(hidden, out); hidden = 4·out
  unless given.

  GLiNER's `create_projection_layer` (hidden 4·out); torch indices `.0` and `.3`.
  The official adaptive-threshold layer is the same shape with hidden = D.
  """

  def __init__(self, d_in: int, d_out: int, dropout: float, *, hidden: int | None = None,
               dtype, rngs: nnx.Rngs):
    hidden = 4 * d_out if hidden is None else hidden
    self.dense_in = nnx.Linear(d_in, hidden, dtype=dtype, rngs=rngs)
    self.dropout = common.Dropout(dropout, rngs=rngs)
    self.dense_out = nnx.Linear(hidden, d_out, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    return self._tail(self.dense_in(x), dropout_key)

  def _tail(self, hidden, dropout_key):
    return self.dense_out(self.dropout(jax.nn.relu(hidden), rngs=dropout_key))

  def left_part(self, left: jax.Array) -> jax.Array:
    """`left`'s share of the first matmul when the input is concat([left, right]).

    Computed once per entity, it is then gathered per pair (E, not E², matmuls).
    """
    kernel = self.dense_in.kernel[...]
    dtype = self.dense_in.dtype or left.dtype
    return left.astype(dtype) @ kernel[:left.shape[-1]].astype(dtype)

  def call_with_left_part(self, left_part: jax.Array, right: jax.Array,
                          dropout_key: jax.Array | None = None) -> jax.Array:
    """self(concat([left, right], -1)) given `left_part(left)`."""
    kernel = self.dense_in.kernel[...]
    dtype = left_part.dtype
    split = kernel.shape[0] - right.shape[-1]
    hidden = (left_part + right.astype(dtype) @ kernel[split:].astype(dtype)
              + self.dense_in.bias[...].astype(dtype))
    return self._tail(hidden, dropout_key)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """Mean of x over `axis` where mask (same shape minus x's last dim) is set."""
  m = mask.astype(x.dtype)[..., None]
  return (x * m).sum(axis) / jnp.maximum(m.sum(axis), 1e-9)

"""Device mesh and the one table of logical-axis rules.

Logical names describe what an array axis *is* (batch, pairs, labels, ...);
LOGICAL_AXIS_RULES says which mesh axis, if any, splits it. The quadratic
pair tensors ([B, E·E, D] relation vectors, [B, E·E, K] logits) are split
along 'pairs' over the 'model' axis; documents along 'batch' over 'data'.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, MODEL = "data", "model"

LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "batch": DATA,  # documents
    "pairs": MODEL,  # (head, tail) entity pairs: the E² axis
    "labels": None,  # relation labels K
    "entities": None,
    "words": None,
    "length": None,  # subwords
    "embed": None,  # hidden width D
    "mlp": None,  # FFN inner width 4D
    "heads": None,
}


def make_mesh(data: int = -1, model: int = 1, devices: Sequence | None = None) -> Mesh:
  """A (data, model) mesh; -1 takes the devices the other axis leaves."""
  devices = list(jax.devices() if devices is None else devices)
  if data == -1:
    if len(devices) % model:
      raise ValueError(f"mesh.model={model} does not divide the {len(devices)} devices")
    data = len(devices) // model
  if data * model != len(devices):
    raise ValueError(f"mesh data={data} × model={model} != {len(devices)} devices")
  return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def spec(*logical: str | None) -> PartitionSpec:
  """PartitionSpec of an array whose axes have these logical names."""
  unknown = [n for n in logical if n is not None and n not in LOGICAL_AXIS_RULES]
  if unknown:
    raise KeyError(f"unknown logical axis names {unknown}; known: {sorted(LOGICAL_AXIS_RULES)}")
  return PartitionSpec(*(None if n is None else LOGICAL_AXIS_RULES[n] for n in logical))


def named(mesh: Mesh, *logical: str | None) -> NamedSharding:
  return NamedSharding(mesh, spec(*logical))


def constrain(x: jax.Array, *logical: str | None) -> jax.Array:
  """Sharding constraint by logical names under the mesh set with
  `jax.set_mesh`; a no-op when no mesh (or a single device) is active."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, spec(*logical))


def replicate(tree, mesh: Mesh):
  """Host values (the same on every process) -> arrays replicated over `mesh`.

  Works across processes, where `jax.device_put` cannot reach other hosts'
  devices. Typed PRNG keys travel as their raw data.
  """
  replicated = named(mesh)

  def put(x):
    if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
      data = np.asarray(jax.random.key_data(x))
      return jax.random.wrap_key_data(
          jax.make_array_from_process_local_data(replicated, data, data.shape),
          impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_process_local_data(replicated, value, value.shape)
  return jax.tree.map(put, tree)

"""Device mesh and the one table of logical-axis rules.

Logical names describe what an array axis *is* (batch, pairs, labels, ...);
LOGICAL_AXIS_RULES says which mesh axis, if any, splits it. The pair
tensors (relation vectors [S, P, D] and logits [S, P, K] of the packed real
pairs, data/pairs.py) are split along 'pairs' over the 'model' axis;
documents (and the pair shards S) along 'batch' over 'data'.
With FSDP (ZeRO-3, `mesh.fsdp`), parameters and optimizer state are split
over 'data' too: each array's 'fsdp' axis (`fsdp_axes`) lives 1/data on each
device and the train step gathers the whole parameter for its forward and
backward pass, then reduce-scatters the gradient back to the shards.
"""
from __future__ import annotations

from collections.abc import Sequence

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, MODEL = "data", "model"

LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "batch": DATA,  # documents
    "pairs": MODEL,  # packed (document, head, tail) pairs: the P axis
    "labels": None,  # relation labels K
    "entities": None,
    "words": None,
    "length": None,  # subwords
    "embed": None,  # hidden width D
    "mlp": None,  # FFN inner width 4D
    "heads": None,
    "fsdp": DATA,  # the parameter / optimizer-state axis ZeRO-3 splits (fsdp_axes)
}
# Under FSDP, arrays smaller than this stay replicated (biases, LayerNorms,
# small kernels): gathering them would cost more latency than they save memory.
FSDP_MIN_SIZE = 2**16


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


def fsdp_axes(shape: Sequence[int], shards: int, min_size: int = FSDP_MIN_SIZE
              ) -> tuple[str | None, ...]:
  """Logical names of a parameter's axes under FSDP over `shards` devices:
  'fsdp' on its largest axis that `shards` divides (the first of equals),
  None elsewhere; all None when it is small or no axis divides."""
  axes: list[str | None] = [None] * len(shape)
  divisible = [i for i, n in enumerate(shape) if n % shards == 0]
  if shards > 1 and math.prod(shape) >= min_size and divisible:
    axes[max(divisible, key=lambda i: (shape[i], -i))] = "fsdp"
  return tuple(axes)


def state_shardings(tree, mesh: Mesh, fsdp: bool, min_size: int = FSDP_MIN_SIZE):
  """NamedShardings for a tree of arrays (or shapes): replicated, or with
  `fsdp` each array split along its `fsdp_axes` over the 'data' axis.
  Optimizer moments have their parameter's shape, hence its sharding."""
  shards = mesh.shape[DATA]

  def one(x):
    if not fsdp or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return named(mesh)
    return named(mesh, *fsdp_axes(x.shape, shards, min_size))
  return jax.tree.map(one, tree)


def gather(tree):
  """Whole (replicated) copies of FSDP-sharded arrays inside a jitted function
  under `jax.set_mesh`: the all-gather of ZeRO-3. Its transpose, in the
  backward pass, hands the gradient back replicated (all-reduced)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return tree
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, PartitionSpec()), tree)


def put(tree, shardings):
  """Host values (the same on every process) -> global arrays with
  `shardings` (a matching tree); each device takes its own slice."""
  def one(x, s):
    if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
      data = np.asarray(jax.random.key_data(x))
      return jax.random.wrap_key_data(
          jax.make_array_from_callback(data.shape, s, lambda idx: data[idx]),
          impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, s, lambda idx: value[idx])
  return jax.tree.map(one, tree, shardings)


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

"""Reading torch state dicts safely and moving flat weights in/out of NNX models."""
from __future__ import annotations

import os
import pathlib
from typing import Callable, Mapping, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glidre_jax import keymap

M = TypeVar("M", bound=nnx.Module)

SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"


class CheckpointError(ValueError):
  """A checkpoint file is missing, unreadable or not a plain state dict."""


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads `model.safetensors` (preferred) or `pytorch_model.bin` as numpy.

  `path` is a directory holding one of them, or the file itself. `.bin` files
  are opened with `torch.load(weights_only=True)`: never unpickle code.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    for name in (SAFETENSORS, TORCH_BIN):
      if (path / name).exists():
        return read_state_dict(path / name)
    raise CheckpointError(f"{path}: no {SAFETENSORS} or {TORCH_BIN} found")
  if not path.exists():
    raise CheckpointError(f"{path}: no such checkpoint file")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file
    try:
      return dict(load_file(str(path)))
    except Exception as e:  # safetensors raises several types on corrupt files
      raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
  import torch
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:
    raise CheckpointError(
        f"{path}: not a plain torch state dict loadable with weights_only=True "
        f"({type(e).__name__}: {e})") from e
  if not isinstance(state, Mapping) or not all(
      isinstance(v, torch.Tensor) for v in state.values()):
    raise CheckpointError(f"{path}: expected a dict of tensors, got "
                          f"{type(state).__name__}")
  return {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype
                           ).numpy() for k, v in state.items()}


def _path_str(path) -> str:
  return ".".join(str(getattr(p, "key", p)) for p in path)


def flat_params(model: nnx.Module) -> dict[str, jax.Array]:
  """Our params as {"a.b.0.kernel": array} (the `ours` side of a key table)."""
  state = nnx.state(model, nnx.Param)
  return {_path_str(path): leaf for path, leaf in
          jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(state))}


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  return {k: tuple(v.shape) for k, v in flat_params(model).items()}


def build_from_flat(make: Callable[[], M], flat: Mapping[str, np.ndarray],
                    param_dtype=jnp.float32, seed: int = 0) -> M:
  """Builds `make()` abstractly and fills its params from `flat` (all required)."""
  abstract = nnx.eval_shape(make)
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  pure = nnx.to_pure_dict(params)

  def fill(path, leaf):
    key = _path_str(path)
    if key not in flat:
      raise keymap.CheckpointMismatchError(f"no value for parameter {key}")
    value = np.asarray(flat[key])
    if value.shape != tuple(leaf.shape):
      raise keymap.CheckpointMismatchError(
          f"{key}: shape {value.shape} != expected {tuple(leaf.shape)}")
    return jnp.asarray(value, dtype=param_dtype)

  nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(fill, pure))
  return nnx.merge(graphdef, params, materialize(rest, seed))


def materialize(abstract_state, seed: int = 0):
  """Concrete values for abstract non-param state (rng keys and counters).

  It is tiny, so it is simply created: keys from `seed`, counters at zero.
  """
  def make(x):
    if not isinstance(x, jax.ShapeDtypeStruct):
      return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jnp.broadcast_to(jax.random.key(seed), x.shape)
    return jnp.zeros(x.shape, x.dtype)
  return jax.tree.map(make, abstract_state)

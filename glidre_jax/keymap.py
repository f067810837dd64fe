"""One key table per model, used in both directions.

A `Rule` pairs a PyTorch state-dict key template with our NNX parameter path
template; `{i}`-style placeholders match integers. The same rules load Hugging
Face / official GLiDRE checkpoints into our modules and export ours back, so
no mapping is ever written twice.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
  """How a tensor changes on its way from torch (`to_ours`) and back."""
  name: str
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda x: x, lambda x: x)
# torch Linear weight is [out, in]; flax kernel is [in, out].
LINEAR = Transform("linear", lambda x: np.ascontiguousarray(x.T),
                   lambda x: np.ascontiguousarray(x.T))
# torch Conv1d weight is [out, in, width]; flax Conv kernel is [width, in, out].
CONV1D = Transform("conv1d",
                   lambda x: np.ascontiguousarray(np.transpose(x, (2, 1, 0))),
                   lambda x: np.ascontiguousarray(np.transpose(x, (2, 1, 0))))


def _compile(template: str) -> re.Pattern:
  parts = re.split(r"\{(\w+)\}", template)
  regex = "".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>\\d+)"
                  for k, p in enumerate(parts))
  return re.compile(regex + r"\Z")


@dataclasses.dataclass(frozen=True)
class Rule:
  torch: str  # e.g. "encoder.layer.{i}.attention.self.query.weight"
  ours: str  # e.g. "encoder.layer.{i}.attention.self.query.kernel"
  transform: Transform = IDENTITY


class KeyTable:
  """Bidirectional torch-key <-> our-path mapping built from one rule list."""

  def __init__(self, rules: Iterable[Rule], ignore_torch: Iterable[str] = ()):
    self.rules = tuple(rules)
    self._torch_re = [(_compile(r.torch), r) for r in self.rules]
    self._ours_re = [(_compile(r.ours), r) for r in self.rules]
    self._ignore = [re.compile(p) for p in ignore_torch]

  def ignored(self, torch_key: str) -> bool:
    return any(p.fullmatch(torch_key) for p in self._ignore)

  def to_ours(self, torch_key: str) -> tuple[str, Transform] | None:
    for regex, rule in self._torch_re:
      if m := regex.match(torch_key):
        return rule.ours.format(**m.groupdict()), rule.transform
    return None

  def to_torch(self, our_key: str) -> tuple[str, Transform] | None:
    for regex, rule in self._ours_re:
      if m := regex.match(our_key):
        return rule.torch.format(**m.groupdict()), rule.transform
    return None

  def prefixed(self, torch_prefix: str, ours_prefix: str) -> "KeyTable":
    """The same table nested under a prefix on both sides (encoders in GLiDRE)."""
    rules = [Rule(torch_prefix + r.torch, ours_prefix + r.ours, r.transform)
             for r in self.rules]
    ignore = [re.escape(torch_prefix) + p.pattern for p in self._ignore]
    return KeyTable(rules, ignore)

  def __add__(self, other: "KeyTable") -> "KeyTable":
    return KeyTable(self.rules + other.rules,
                    [p.pattern for p in self._ignore + other._ignore])


class CheckpointMismatchError(ValueError):
  """Raised with the full list of keys that did not line up."""


def convert_to_ours(table: KeyTable, torch_state: Mapping[str, np.ndarray],
                    expected: Mapping[str, tuple[int, ...]],
                    source: str = "checkpoint") -> dict[str, np.ndarray]:
  """Maps a torch state dict onto our flat paths, checking every key and shape.

  `expected` holds our flat path -> shape (from an `nnx.eval_shape` skeleton).
  Errors list every unmapped torch key, missing parameter and shape mismatch.
  """
  ours: dict[str, np.ndarray] = {}
  unmapped, mismatched = [], []
  for key, value in torch_state.items():
    if table.ignored(key):
      continue
    hit = table.to_ours(key)
    if hit is None or hit[0] not in expected:
      unmapped.append(key)
      continue
    path, transform = hit
    array = transform.to_ours(np.asarray(value))
    if tuple(array.shape) != tuple(expected[path]):
      mismatched.append(f"{key} -> {path}: {tuple(array.shape)} != "
                        f"{tuple(expected[path])}")
      continue
    ours[path] = array
  missing = sorted(p for p in expected if p not in ours)
  problems = []
  if unmapped:
    problems.append("unmapped keys in the checkpoint: " + ", ".join(sorted(unmapped)))
  if missing:
    hints = [f"{p} (torch key {h[0]})" if (h := table.to_torch(p)) else p
             for p in missing]
    problems.append("parameters missing from the checkpoint: " + ", ".join(hints))
  if mismatched:
    problems.append("shape mismatches: " + "; ".join(mismatched))
  if problems:
    raise CheckpointMismatchError(f"{source}: " + " | ".join(problems))
  return ours


def convert_to_torch(table: KeyTable, ours: Mapping[str, np.ndarray]
                     ) -> dict[str, np.ndarray]:
  """Maps our flat params to torch keys; every parameter must have a rule."""
  out, unmapped = {}, []
  for path, value in ours.items():
    hit = table.to_torch(path)
    if hit is None:
      unmapped.append(path)
      continue
    key, transform = hit
    out[key] = transform.to_torch(np.asarray(value))
  if unmapped:
    raise CheckpointMismatchError(
        "parameters with no torch key: " + ", ".join(sorted(unmapped)))
  return out


def linear_rules(prefix: str) -> list[Rule]:
  """torch nn.Linear <-> nnx.Linear under the same dotted prefix."""
  return [Rule(prefix + ".weight", prefix + ".kernel", LINEAR),
          Rule(prefix + ".bias", prefix + ".bias")]


def layer_norm_rules(prefix: str) -> list[Rule]:
  """torch nn.LayerNorm <-> nnx.LayerNorm under the same dotted prefix."""
  return [Rule(prefix + ".weight", prefix + ".scale"),
          Rule(prefix + ".bias", prefix + ".bias")]


def ffn_rules(prefix: str) -> list[Rule]:
  """GLiNER's projection FFN: torch `.0` / `.3` <-> our `dense_in` / `dense_out`."""
  return [Rule(f"{prefix}.0.weight", f"{prefix}.dense_in.kernel", LINEAR),
          Rule(f"{prefix}.0.bias", f"{prefix}.dense_in.bias"),
          Rule(f"{prefix}.3.weight", f"{prefix}.dense_out.kernel", LINEAR),
          Rule(f"{prefix}.3.bias", f"{prefix}.dense_out.bias")]

"""GLiDRE head configuration (the encoders carry their own configs)."""
from __future__ import annotations

import dataclasses

POOLINGS = ("mean", "logsumexp")


@dataclasses.dataclass(frozen=True)
class GLiDREConfig:
  hidden_size: int = 768  # D: width of entity, relation and label vectors
  dropout: float = 0.4  # in the FFNs of the head (encoders keep their own)
  pooling: str = "mean"  # entity pooling over mention words
  lop: bool = True  # localized context pooling (ATLOP-style)
  adaptive_threshold: bool = False  # extra threshold logit per pair (spec §1.11)
  label_max_length: int = 16  # subwords per label name
  # Pairs scored per block (0: all E² at once). Bounds peak memory for
  # entity-dense documents; training rematerialises each block.
  pair_chunk_size: int = 0
  # Score (e, e) pairs? Off: they are out of the loss, of evaluation and of
  # predictions (Re-DocRED, DocRED and CDR have no self facts). The official
  # code scores them everywhere (as negatives in training).
  self_pairs: bool = False

  def __post_init__(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
    if self.hidden_size <= 0:
      raise ValueError(f"hidden_size must be positive, got {self.hidden_size}")
    if self.pair_chunk_size < 0:
      raise ValueError(f"pair_chunk_size must be >= 0, got {self.pair_chunk_size}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

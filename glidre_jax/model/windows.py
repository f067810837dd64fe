"""Merging the word representations of overlapping encoder windows.

A long document is encoded as N windows (`glidre_jax.data.windows`); each
window yields word vectors and word-to-word attention for the words it holds.
A word's vector is the mean over the windows holding it, a word pair's
attention the mean over the windows holding both (0 when none does).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def merge_windows(words: jax.Array, word_att: jax.Array, window_word_mask: jax.Array,
                  word_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """words [B·N, W, d], word_att [B·N, W, W] per window (absent words zeroed),
  window_word_mask [B, N, W] -> words [B, W, d], word attention [B, W, W]."""
  b, n, w = window_word_mask.shape
  held = window_word_mask.astype(jnp.float32)
  count = jnp.maximum(held.sum(1), 1.0)  # windows holding each word
  merged = (words.reshape(b, n, w, -1).astype(jnp.float32) * held[..., None]).sum(1)
  merged = merged / count[..., None]
  both = held[:, :, :, None] * held[:, :, None, :]  # [B, N, W, W]
  att = (word_att.reshape(b, n, w, w).astype(jnp.float32) * both).sum(1)
  att = att / jnp.maximum(both.sum(1), 1.0)
  keep = word_mask.astype(jnp.float32)
  return ((merged * keep[..., None]).astype(words.dtype),
          (att * keep[:, None, :]).astype(word_att.dtype))

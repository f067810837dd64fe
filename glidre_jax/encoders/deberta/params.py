"""The one key table between HF `DebertaV2Model` state dicts and ours."""
from __future__ import annotations

from typing import Mapping

from glidre_jax.keymap import (CONV1D, LINEAR, KeyTable, Rule, layer_norm_rules,
                               linear_rules)

_LAYER = "encoder.layer.{i}."

KEY_TABLE = KeyTable(
    [Rule(f"embeddings.{n}.weight", f"embeddings.{n}.embedding")
     for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
    # embedding_size != hidden_size: a bias-free projection.
    + [Rule("embeddings.embed_proj.weight", "embeddings.embed_proj.kernel", LINEAR)]
    + layer_norm_rules("embeddings.LayerNorm")
    + [rule for name in ("attention.self.query_proj", "attention.self.key_proj",
                         "attention.self.value_proj",
                         # only when share_att_key is false
                         "attention.self.pos_key_proj",
                         "attention.self.pos_query_proj",
                         "attention.output.dense", "intermediate.dense",
                         "output.dense")
       for rule in linear_rules(_LAYER + name)]
    + layer_norm_rules(_LAYER + "attention.output.LayerNorm")
    + layer_norm_rules(_LAYER + "output.LayerNorm")
    + [Rule("encoder.rel_embeddings.weight", "encoder.rel_embeddings.embedding")]
    + layer_norm_rules("encoder.LayerNorm")  # norm_rel_ebd="layer_norm"
    # DeBERTa-v2 ConvLayer (conv_kernel_size > 0).
    + [Rule("encoder.conv.conv.weight", "encoder.conv.conv.kernel", CONV1D),
       Rule("encoder.conv.conv.bias", "encoder.conv.conv.bias")]
    + layer_norm_rules("encoder.conv.LayerNorm"),
    # Buffers and heads GLiDRE never uses (Microsoft's released checkpoints
    # keep their pre-training heads lm_predictions / mask_predictions).
    ignore_torch=[r"embeddings\.position_ids", r"pooler\..*",
                  r"lm_predictions\..*", r"mask_predictions\..*"],
)

# Microsoft's original v2/v3 checkpoints carry an absolute position table even
# with position_biased_input=false (HF skips it via
# `_keys_to_ignore_on_load_unexpected`); the table is never read.
UNUSED_POSITION_TABLE = "embeddings.position_embeddings.weight"


def drop_unused(config, state: Mapping[str, object]) -> dict[str, object]:
  """Drops tensors the config never reads (see UNUSED_POSITION_TABLE)."""
  state = dict(state)
  if not config.position_biased_input:
    state.pop(UNUSED_POSITION_TABLE, None)
  return state

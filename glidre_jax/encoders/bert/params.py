"""The one key table between HF `BertModel` state dicts and our BertModel."""
from __future__ import annotations

from glidre_jax.keymap import KeyTable, Rule, layer_norm_rules, linear_rules

_LAYER = "encoder.layer.{i}."

KEY_TABLE = KeyTable(
    [Rule(f"embeddings.{n}.weight", f"embeddings.{n}.embedding")
     for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
    + layer_norm_rules("embeddings.LayerNorm")
    + [rule for name in ("attention.self.query", "attention.self.key",
                         "attention.self.value", "attention.output.dense",
                         "intermediate.dense", "output.dense")
       for rule in linear_rules(_LAYER + name)]
    + layer_norm_rules(_LAYER + "attention.output.LayerNorm")
    + layer_norm_rules(_LAYER + "output.LayerNorm"),
    # Buffers and heads GLiDRE never uses.
    ignore_torch=[r"embeddings\.position_ids", r"pooler\..*"],
)

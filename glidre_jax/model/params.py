"""The one key table between the official PyTorch GLiDRE state dict (spec §5)
and our GLiDRE module. Encoder weights reuse the encoders' own tables."""
from __future__ import annotations

from glidre_jax import encoders
from glidre_jax.keymap import KeyTable, ffn_rules, linear_rules

# Where the encoders sit in GLiDREModel's tree (the official module names):
# everything under ENCODER_SCOPE is both encoders and their projections.
ENCODER_SCOPE = "token_rep_layer"
TEXT_ENCODER_PATH = (ENCODER_SCOPE, "bert_layer", "model")
LABEL_ENCODER_PATH = (ENCODER_SCOPE, "labels_encoder", "model")
TEXT_ENCODER = ".".join(TEXT_ENCODER_PATH) + "."
LABEL_ENCODER = ".".join(LABEL_ENCODER_PATH) + "."

HEAD_TABLE = KeyTable(
    linear_rules("token_rep_layer.projection")
    + linear_rules("token_rep_layer.labels_projection")
    + ffn_rules("span_rep_layer.head_extractor")
    + ffn_rules("span_rep_layer.tail_extractor")
    + ffn_rules("span_rep_layer.projection")
    + ffn_rules("prompt_rep_layer")
    # The adaptive-threshold variant only (official losses atloss / afloss):
    # Linear(2D, D) → ReLU → Dropout → Linear(D, 1), spec §5.
    + ffn_rules("threshold_layer"),
    # The official config defaults to has_rnn=True, which builds an LSTM that
    # the relation model never calls: its weights are dropped on import.
    ignore_torch=[r"rnn\..*"])


def key_table(text_model_type: str, label_model_type: str) -> KeyTable:
  """Full GLiDRE table for the given encoder families (our paths mirror theirs)."""
  text = encoders.encoder_family(text_model_type).key_table
  label = encoders.encoder_family(label_model_type).key_table
  return (text.prefixed(TEXT_ENCODER, TEXT_ENCODER)
          + label.prefixed(LABEL_ENCODER, LABEL_ENCODER) + HEAD_TABLE)


def encoder_modules(model) -> tuple:
  """(text encoder, label encoder) modules of a GLiDREModel."""
  def at(path):
    module = model
    for name in path:
      module = getattr(module, name)
    return module
  return at(TEXT_ENCODER_PATH), at(LABEL_ENCODER_PATH)

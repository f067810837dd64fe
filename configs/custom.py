"""Fine-tune on your own documents (reference GLiDRE JSON/JSONL format).

    python -m glidre_jax.train --config=configs/custom.py \
        --config.data.train_file=my_train.jsonl --config.data.eval_file=my_dev.jsonl

Each line: {"id", "tokenized_text": [words], "mentions": [{"id", "type",
"mentions": [{"value", "start", "end" (inclusive)}]}], "relations": [[head,
"relation name", tail], ...]}. The label set is every relation name of the
training file (or `data.labels_file`, one name per line) and every batch is
scored on all of it. Without overrides it trains on the tiny example shipped
in glidre_jax/assets/examples/ (8 + 3 hand-written documents) — a format
demo, not a benchmark. Add `:open` for per-batch label sets (many labels).
"""
import ml_collections

from glidre_jax.data.assets import asset_path
from glidre_jax.shipped import sibling_config

default = sibling_config(__file__, "default")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = default.get_config()
  c.workdir = "runs/custom"
  c.data.dataset = "glidre"
  c.data.train_file = str(asset_path("examples", "custom_train.jsonl"))
  c.data.eval_file = str(asset_path("examples", "custom_dev.jsonl"))
  c.data.train_split = "train"
  c.data.eval_split = "dev"
  c.data.seq_buckets = (128, 256, 512)
  c.data.word_buckets = (64, 128, 256, 512)
  c.data.entity_buckets = (8, 16, 32, 48)
  c.data.pair_buckets = (8, 16, 48, 96)  # `python -m glidre_jax.data.pair_buckets --config=custom`
  c.train.steps = 60
  c.train.eval_every = 30
  c.train.checkpoint_every = 30
  if variant == "open":
    c.data.open_labels = True
    c.data.label_buckets = (8, 16, 32, 64)
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; known: 'open'")
  return c

"""Re-DocRED fine-tuning with the paper's hyper-parameters (GPU/TPU sized).

DeBERTa-v3-large text encoder and BGE-large label encoder: point
`text_encoder` / `label_encoder` at local HF model directories (nothing is
downloaded at run time), and `data.data_dir` at a directory holding
train_revised.json / dev_revised.json / test_revised.json.

10 000 optimizer updates of an effective batch of 16 documents, as the
official run (4 documents × 4 accumulation steps there). The default takes
the 16 documents in one step (an accelerator with the memory for it); the
`:accum` variant takes them as 4 micro-batches of 4 — the same updates, the
same learning-rate schedule, a quarter of the activation memory.
The best checkpoint is selected, and used, at the fixed τ = 0.5.
"""
import ml_collections

from glidre_jax.shipped import sibling_config

default = sibling_config(__file__, "default")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = default.get_config()
  c.workdir = "runs/redocred"
  c.text_encoder = "microsoft/deberta-v3-large"  # replace with a local directory
  c.label_encoder = "BAAI/bge-large-en-v1.5"  # replace with a local directory
  c.compute_dtype = "bfloat16"
  c.encoder_attention_dropout = None  # keep the checkpoints' own
  c.train.freeze_label_encoder = False
  c.model.hidden_size = 768
  c.model.dropout = 0.4
  c.data.train_split = "train"
  c.data.eval_split = "dev"
  c.data.batch_size = 16
  c.data.entity_buckets = (16, 32, 48, 64)
  # `python -m glidre_jax.data.pair_buckets --batch_sizes=1,8,16` on dev[:400] (the
  # shipped proxy of the training split): padding ratio <= 1.15 at 1, 8, 16.
  c.data.pair_buckets = (184, 272, 384, 512, 656, 872, 1128, 2504, 3280, 4280, 5368, 6648,
                         9472)
  c.train.steps = 10_000  # optimizer updates
  c.train.grad_accum = 1  # effective batch 16 = batch_size × grad_accum
  c.train.lr_encoder = 1e-5
  c.train.lr_head = 1e-4
  c.train.weight_decay = 0.01
  c.train.warmup_fraction = 0.1
  c.train.clip_norm = 10.0
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.log_every = 50
  c.eval.threshold_selection = "fixed"  # the paper: test at τ = 0.5
  if variant == "accum":  # when 16 documents do not fit in memory at once
    c.data.batch_size = 4
    c.train.grad_accum = 4
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; known: 'accum'")
  return c

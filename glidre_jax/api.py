"""Prediction on new documents with free-text relation labels.

    from glidre_jax import GLiDRE
    model = GLiDRE.from_pretrained("runs/default")       # or an official PyTorch directory
    doc = {"text": "Marie Curie was born in Warsaw.",
           "entities": [{"mentions": [[0, 11]], "type": "PER"}, {"mentions": [[24, 30]]}]}
    model.predict([doc], ["place of birth", "country"])
    # -> [[{"head": 0, "tail": 1, "label": "place of birth", "score": 0.93,
    #       "head_text": "Marie Curie", "head_span": [0, 11], "span_unit": "char", ...}]]

`predict` decodes at `model.threshold` unless given one: for a run's best
checkpoint, the τ it was selected at in training (eval.threshold_selection);
otherwise the run config's eval.threshold (0.5 for official checkpoints).

Documents are featurized as in training and padded to the run's shape
buckets, with a sequence length every 64 subwords (`Buckets.for_prediction`:
one compile per shape, less encoder padding on every document), so one
compiled step serves every batch of a bucket. Label vectors
are computed once per label set and cached. Documents longer than the run's
max_length are encoded in overlapping windows starting every `stride`
subwords (`glidre_jax.data.windows`; default: the run's data.window_stride,
as it was trained and evaluated), or truncated when the stride is 0.
"""
from __future__ import annotations

import pathlib
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from flax import nnx

from glidre_jax import checkpointing, decoding, hub, inference, pretrained, run_dir, shipped
from glidre_jax.data import featurize as featurize_lib
from glidre_jax.data import batching, inputs, registry
from glidre_jax.data import pairs as pairs_lib
from glidre_jax.data.documents import Document
from glidre_jax.data.tokenize import load_tokenizers

OFFICIAL_CONFIG = hub.OFFICIAL_CONFIG


class GLiDREPredictor:
  """A trained GLiDRE with its tokenizers, ready for `predict`."""

  def __init__(self, config, graphdef, params, rest, tokenizer, label_tokenizer, *,
               buckets: featurize_lib.Buckets | None = None, batch_size: int | None = None,
               stride: int | None = None, threshold: float | None = None):
    self.config = config
    # The default decision threshold of `predict` (None: the config's).
    self.threshold = float(config.eval.threshold if threshold is None else threshold)
    self.predictor = inference.Predictor(graphdef)
    self.params, self.rest = params, rest
    self.tokenizer, self.label_tokenizer = tokenizer, label_tokenizer
    d = config.data
    self.max_length = int(d.max_length)
    self.buckets = buckets or featurize_lib.Buckets.from_config(d).for_prediction()
    self.batch_size = int(batch_size or d.eval_batch_size)
    # 0: documents longer than max_length subwords are truncated; > 0: they are
    # encoded in windows of max_length starting every `stride` subwords. None:
    # as the run was trained and evaluated.
    self.stride = int(d.window_stride if stride is None else stride)
    # model.self_pairs: are (e, e) pairs scored (the rule training and evaluate follow)?
    self.self_pairs = bool(config.model.self_pairs)
    self._label_cache: dict[tuple[str, ...], tuple[dict, object]] = {}
    self.label_encoder_calls = 0  # label-encoder runs (cache misses)
    # Labels, training record and scores (a saved folder's; a run's on save).
    self.metadata: dict = {}
    self.run_dir: tuple[pathlib.Path, str] | None = None  # (run directory, 'best'/'latest')

  # -- loading ----------------------------------------------------------------

  @classmethod
  def from_model(cls, model: nnx.Module, config, *, tokenizers=None, **kwargs
                 ) -> GLiDREPredictor:
    """From an in-memory GLiDRE module (switched to eval mode) and its run config."""
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tok, label_tok = tokenizers or load_tokenizers(config)
    return cls(config, graphdef, nnx.as_pure(params), nnx.as_pure(rest), tok, label_tok,
               **kwargs)

  @classmethod
  def from_pretrained(cls, path, which: str = "best", *, text_encoder_dir=None,
                      label_encoder_dir=None, import_to=None, threshold: float | None = None,
                      revision: str | None = None, cache_dir=None, token=None, **kwargs
                      ) -> GLiDREPredictor:
    """A folder of `save_pretrained`, a glidre-jax run directory ('best' or
    'latest' weights), or an official PyTorch GLiDRE directory (imported on
    the fly; kept as a run directory in `import_to` when given); saved and
    official folders also as a Hub id 'org/name[@revision]' (`glidre_jax.hub`:
    HF cache, HF_HUB_OFFLINE). threshold: `predict`'s default τ (None: the one
    stored with the best checkpoint or the saved folder, see the module doc).
    kwargs: buckets, batch_size, stride."""
    path = hub.model_dir(str(path), revision=revision, cache_dir=cache_dir, token=token)
    if (path / pretrained.CONFIG_FILE).exists():
      config, graphdef, params, rest, meta = pretrained.load(path)
      if threshold is None:
        threshold = meta.get("threshold")
      model = cls(config, graphdef, params, rest, *load_tokenizers(config),
                  threshold=threshold, **kwargs)
      model.metadata = meta
      return model
    if (path / OFFICIAL_CONFIG).exists():
      return cls._from_official(path, text_encoder_dir, label_encoder_dir, import_to,
                                threshold=threshold, **kwargs)
    if not (path / "config.json").exists():
      raise FileNotFoundError(
          f"{path}: neither a glidre-jax run directory (config.json + checkpoints), a saved "
          f"model folder ({pretrained.CONFIG_FILE}) nor an official GLiDRE directory "
          f"({OFFICIAL_CONFIG})")
    try:
      config, graphdef, params, rest = run_dir.restore_weights(path, which)
    except FileNotFoundError as err:  # e.g. --which latest on a run with a best checkpoint only
      raise FileNotFoundError(str(err) if str(path) in str(err) else f"{path}: {err}") from err
    if threshold is None:
      threshold = checkpointing.selected_threshold(path, which, config.eval.threshold)
    model = cls(config, graphdef, params, rest, *load_tokenizers(config),
                threshold=threshold, **kwargs)
    model.run_dir = (path, which)
    return model

  @classmethod
  def _from_official(cls, path, text_encoder_dir, label_encoder_dir, import_to, **kwargs):
    import_official = shipped.converters("import_official")
    enc = dict(text_encoder_dir=text_encoder_dir, label_encoder_dir=label_encoder_dir)
    model = import_official.import_glidre(path, **enc)
    with tempfile.TemporaryDirectory() as tmp:
      workdir = import_official.save_as_run(model, import_official.describe(path, **enc),
                                            import_to or tmp)
      config = run_dir.load_config(workdir)
      tokenizers = load_tokenizers(config)  # read before tmp goes away
    return cls.from_model(model, config, tokenizers=tokenizers, **kwargs)

  def train_labels(self) -> tuple[str, ...]:
    """The relation names of the run's dataset (e.g. the 96 Re-DocRED relations)."""
    if self.metadata.get("labels"):  # a saved folder: its data may be elsewhere
      return tuple(self.metadata["labels"])
    return registry.load_schema(self.config).names

  # -- saving -----------------------------------------------------------------

  def save_pretrained(self, save_directory, *, official: bool = False, scores=None,
                      license: str = "apache-2.0", model_id: str | None = None  # noqa: A002
                      ) -> pathlib.Path:
    """Writes one portable folder that `from_pretrained` reloads bit-exactly
    (`glidre_jax.pretrained`): config, model.safetensors, both encoders'
    configs and tokenizers, and a model card (README.md) with the labels, the
    training data and steps and the run's dev scores. `scores`: further
    evaluations for the card, e.g. {"test": result of glidre_jax.evaluate}.
    official=True writes the official PyTorch GLiDRE layout instead (needs
    torch), with the same model card."""
    meta = dict(self.metadata)
    if self.run_dir is not None and not meta:
      meta = {"labels": pretrained.run_labels(self.config),
              "training": pretrained.run_record(*self.run_dir, self.config)}
    kwargs = dict(labels=meta.get("labels"), training=meta.get("training"), scores=scores,
                  license=license, model_id=model_id)
    if not official:
      return pretrained.save(self, save_directory, **kwargs)
    return pretrained.save_official(self, save_directory, **kwargs)

  def push_to_hub(self, repo_id: str, *, official: bool = False, private: bool | None = None,
                  token: str | None = None, revision: str | None = None,
                  commit_message: str = "Upload GLiDRE (glidre-jax)", scores=None,
                  license: str = "apache-2.0"):  # noqa: A002
    """`save_pretrained` into a temporary folder, uploaded as the Hub model
    repository `repo_id` (huggingface_hub's upload_folder; needs a network
    and a token with write access)."""
    with tempfile.TemporaryDirectory() as tmp:
      folder = self.save_pretrained(tmp, official=official, scores=scores, license=license,
                                    model_id=repo_id)
      return pretrained.upload(folder, repo_id, private=private, token=token,
                               revision=revision, commit_message=commit_message)

  # -- labels -----------------------------------------------------------------

  def label_vectors(self, labels: Sequence[str], *, cache: bool = True) -> tuple[dict, object]:
    """(label batch, label vectors [K, D]) of a label set; cached by the label tuple."""
    key = decoding.check_labels(labels)
    if cache and key in self._label_cache:
      return self._label_cache[key]
    label_batch = self._label_batch(key)
    vectors = self.predictor.label_step(self.params, self.rest, label_batch)
    self.label_encoder_calls += 1
    if cache:
      self._label_cache[key] = (label_batch, vectors)
    return label_batch, vectors

  def _label_batch(self, labels: tuple[str, ...]) -> dict:
    return featurize_lib.label_batch(self.label_tokenizer, list(labels),
                                     max_length=self.config.model.label_max_length)

  def clear_label_cache(self) -> None:
    self._label_cache.clear()

  # -- documents --------------------------------------------------------------

  def featurize(self, docs: Sequence[Document], self_pairs: bool | None = None) -> list[dict]:
    """Unpadded features (no gold labels), windowed for long documents when
    `stride` is set; warns about entities lost to truncation otherwise.
    self_pairs: score (e, e) pairs (None: the model's `self_pairs`)."""
    self_pairs = self.self_pairs if self_pairs is None else self_pairs
    pair_filter = None if self_pairs else featurize_lib.without_self_pairs()
    feats = [batching.featurize_long(doc, self.tokenizer, {}, self.max_length, self.stride,
                                    pair_filter=pair_filter)
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
    each of one bucket (`inference.predict_batches`); windowed documents
    batch apart from the others."""
    label_batch = self._label_batch(decoding.check_labels(labels))
    predict = lambda batch: self.predictor.predict_step(
        self.params, self.rest, batch, self.label_vectors(labels, cache=cache_labels)[1])
    yield from inference.predict_batches(predict, features, self.buckets, label_batch,
                                         batch_size, self.max_length, progress)

  # -- prediction -------------------------------------------------------------

  def scores(self, documents: Sequence, labels: Sequence[str], *,
             batch_size: int | None = None, cache_labels: bool = True) -> list[np.ndarray]:
    """Probabilities [E, E, K] per document (0 where a pair is not scored,
    e.g. self pairs of a model with self_pairs=False)."""
    docs = inputs.to_documents(documents)
    feats = self.featurize(docs)
    out: list[np.ndarray | None] = [None] * len(docs)
    for chunk, batch, probs in self._batches(feats, labels, batch_size or self.batch_size,
                                             cache_labels, None):
      for row, i in enumerate(chunk):  # the predict step leaves unscored pairs at 0
        n = len(docs[i].entities)
        out[i] = probs[row, :n, :n]
    return out

  def predict(self, documents: Sequence, labels: Sequence[str],
              threshold: float | None = None, *,
              label_thresholds: Mapping[str, float] | None = None, top_k: int | None = None,
              drop_self_pairs: bool | None = None,
              constraints: decoding.Constraints | None = None,
              batch_size: int | None = None, cache_labels: bool = True,
              progress: Callable | None = None) -> list[list[dict]]:
    """Relation triples per document, best first: [{head, tail, label, score,
    head_id, tail_id, head_text, tail_text, head_span, tail_span, span_unit}].

    documents: Documents, DocRED / GLiDRE dicts, or {"text", "entities"} dicts
    (see `glidre_jax.data.inputs`); head/tail index the document's entities,
    head_id/tail_id are their "id" as given (else the index), *_text and
    *_span their first mention ([start, end) in span_unit: "char" for raw
    text, "word" for word-based inputs; see `decoding.entity_records`).
    threshold: None for `self.threshold` (the run's selected τ).
    label_thresholds: per-label overrides of `threshold`; top_k: at most k
    labels per pair; constraints: {label: (head types, tail types)} (None:
    any type) — pairs of other types never get that label.
    drop_self_pairs: None follows the model's `self_pairs` (as training and
    evaluation do); True / False drops / reports (e, e) pairs regardless.
    """
    self_pairs = self.self_pairs if drop_self_pairs is None else not drop_self_pairs
    threshold = self.threshold if threshold is None else threshold
    decoder = decoding.make_decoder(labels, threshold, label_thresholds=label_thresholds,
                                    top_k=top_k, drop_self_pairs=not self_pairs,
                                    constraints=constraints)
    docs = inputs.to_documents(documents)
    feats = self.featurize(docs, self_pairs)
    out: list[list[dict]] = [[] for _ in docs]
    for chunk, batch, probs in self._batches(feats, decoder.labels,
                                             batch_size or self.batch_size,
                                             cache_labels, progress):
      types = [[e.type for e in docs[i].entities] for i in chunk]
      rows = decoder.triples(probs[:len(chunk)], pairs_lib.dense_pair_mask(batch)[:len(chunk)],
                             decoder.type_ids(types, probs.shape[1]))
      for i, triples in zip(chunk, rows):
        out[i] = triples
    for item, doc, triples in zip(documents, docs, out, strict=True):
      decoding.attach_entities(triples, decoding.entity_records(item, doc))
    return out

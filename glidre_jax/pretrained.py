"""One portable folder per trained model: `save_pretrained` / `from_pretrained`.

    glidre_jax_config.json   the run config (ours) + labels, training record, scores
    model.safetensors        every parameter under our own flat keys (bit-exact)
    text_encoder/            config.json + tokenizer of each encoder
    label_encoder/
    README.md                the model card

No orbax run directory is needed to reload it, locally or as a Hub repository
(`push_to_hub` uploads exactly this folder).
"""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
from flax import nnx

import glidre_jax
from glidre_jax import checkpointing, hub, run_dir, shipped, weights
from glidre_jax.data import registry
from glidre_jax.data.tokenize import resolve_encoder_dir

CONFIG_FILE = "glidre_jax_config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
ENCODER_DIRS = {"text_encoder": "text_encoder", "label_encoder": "label_encoder"}
FORMAT, FORMAT_VERSION = "glidre-jax", 1
# Hub ids of encoders named by alias, for model cards and official exports.
ENCODER_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def flat_arrays(params) -> dict[str, np.ndarray]:
  """{"a.b.0.kernel": array} of a pure parameter state."""
  return {weights._path_str(path): np.asarray(leaf)  # noqa: SLF001 (one key format)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def encoder_hub_id(name: str) -> str | None:
  if name in ENCODER_HUB_IDS:
    return ENCODER_HUB_IDS[name]
  if not hub.is_local(name) and hub.parse_hub_id(name):
    return name
  return None


# -- what a model knows about its training --------------------------------------


def run_record(workdir, which: str, config) -> dict:
  """Training data and steps, and the dev scores, of a run directory."""
  workdir = pathlib.Path(workdir)
  d, t = config.data, config.train
  record = {"checkpoint": which, "steps": int(t.steps),
            "data": {k: d.get(k) for k in ("dataset", "data_dir", "train_file", "train_split",
                                           "eval_split", "subset_size", "open_labels")},
            "batch_size": int(d.batch_size) * int(t.grad_accum),
            "learning_rates": {"encoder": t.lr_encoder, "head": t.lr_head}, "loss": t.loss}
  summary = workdir / "summary.json"
  if summary.is_file():
    record["wall_seconds"] = json.loads(summary.read_text()).get("wall_seconds")
  if which == "best":  # the dev scores are those of the best checkpoint's weights
    checkpoints = checkpointing.RunCheckpoints(workdir, save_every=1)
    try:
      best = checkpoints.best_scores() or {}
    finally:
      checkpoints.close()
    record["step"] = best.get("step")
    record["scores"] = {f"dev ({d.eval_split})": _plain(best)} if best else {}
  return record


def _plain(scores: dict) -> dict:
  return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in scores.items()}


def run_labels(config) -> list[str] | None:
  """The relation names a run trained on, when its data can still be read."""
  try:
    return list(registry.load_schema(config).names)
  except (FileNotFoundError, ValueError):
    return None


# -- saving ---------------------------------------------------------------------


def save(predictor, directory, *, labels=None, training=None, scores=None,
         license: str = "apache-2.0", model_id: str | None = None) -> pathlib.Path:  # noqa: A002
  """Writes the folder; returns its path. `scores`: {name: scores dict} of
  further evaluations (e.g. {"test": evaluate result}) for the card."""
  from safetensors.numpy import save_file
  out = pathlib.Path(directory).expanduser().absolute()
  out.mkdir(parents=True, exist_ok=True)
  meta = _meta(predictor, labels, training, scores, license)
  for key, sub in ENCODER_DIRS.items():
    _copy_encoder(resolve_encoder_dir(predictor.config[key], weights=False), out / sub)
  arrays = flat_arrays(predictor.params)
  odd = sorted(k for k, v in arrays.items() if v.dtype.kind not in "fiub")
  if odd:
    raise ValueError(f"parameters of dtype safetensors cannot store: {odd[:3]}")
  save_file(arrays, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
  (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
  (out / CARD_FILE).write_text(model_card(meta, model_id))
  return out


def _meta(predictor, labels, training, scores, license: str) -> dict:  # noqa: A002
  stored = ml_collections.ConfigDict(predictor.config.to_dict())
  for key, sub in ENCODER_DIRS.items():
    stored[key] = sub  # relative to the folder; resolved when loading
  training = dict(training or {})
  if scores:
    training["scores"] = {**training.get("scores", {}),
                          **{k: _plain(v) for k, v in scores.items()}}
  return {"format": FORMAT, "format_version": FORMAT_VERSION, "glidre_jax_version": _version(),
          "config": json.loads(stored.to_json_best_effort()),
          "encoders": {k: encoder_hub_id(predictor.config[k]) or predictor.config[k]
                       for k in ENCODER_DIRS},
          "labels": list(labels) if labels else None, "training": training, "license": license,
          "threshold": predictor.threshold}  # the τ `predict` uses by default


def save_official(predictor, directory, *, labels=None, training=None, scores=None,
                  license: str = "apache-2.0", model_id: str | None = None  # noqa: A002
                  ) -> pathlib.Path:
  """The official PyTorch GLiDRE layout (converters.export_official) plus
  the model card; encoders are named by Hub id when they have one."""
  export = shipped.converters("export_official")
  config = predictor.config
  model = nnx.merge(predictor.predictor.graphdef, predictor.params, predictor.rest)
  dirs = [resolve_encoder_dir(config[k]) for k in ENCODER_DIRS]
  names = [encoder_hub_id(config[k]) for k in ENCODER_DIRS]
  try:
    out = export.export_glidre(model, directory, *dirs, text_encoder_name=names[0],
                               label_encoder_name=names[1])
  except ModuleNotFoundError as err:
    if err.name != "torch":
      raise
    raise ImportError("the official layout's pytorch_model.bin is written with torch: "
                      "pip install 'glidre-jax[torch]'") from err
  meta = _meta(predictor, labels, training, scores, license)
  (out / CARD_FILE).write_text(model_card(meta, model_id, official=True))
  return out


def _copy_encoder(src: pathlib.Path, dst: pathlib.Path) -> None:
  if dst.exists() and src.resolve() == dst.resolve():
    return  # saving a loaded folder over itself
  dst.mkdir(parents=True, exist_ok=True)
  names = [n for n in hub.ENCODER_CONFIG if (src / n).is_file()]
  if "config.json" not in names:
    raise FileNotFoundError(f"encoder directory {src}: no config.json to save")
  for name in names:
    shutil.copyfile(src / name, dst / name)


def _version() -> str:
  return glidre_jax.__version__


# -- loading --------------------------------------------------------------------


def read_meta(directory) -> dict:
  path = pathlib.Path(directory) / CONFIG_FILE
  try:
    meta = json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise ValueError(f"{path}: invalid JSON ({err})") from None
  if meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
    raise ValueError(f"{path}: not a glidre-jax model folder (format {meta.get('format')!r})")
  if meta.get("format_version", 0) > FORMAT_VERSION:
    raise ValueError(f"{path}: format version {meta['format_version']} is newer than this "
                     f"glidre-jax ({_version()}) reads ({FORMAT_VERSION}); upgrade glidre-jax")
  return meta


def load(directory):
  """(config, eval graphdef, params, rest, meta) of a saved folder."""
  from safetensors.numpy import load_file
  directory = pathlib.Path(directory).absolute()
  meta = read_meta(directory)
  config = ml_collections.ConfigDict(meta["config"])
  for key, sub in ENCODER_DIRS.items():
    config[key] = str(directory / sub)
  model = run_dir.abstract_model(config)
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  path = directory / WEIGHTS_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{directory}: no {WEIGHTS_FILE}")
  stored = load_file(str(path))

  def fill(key_path, leaf):
    key = weights._path_str(key_path)  # noqa: SLF001
    if key not in stored:
      raise ValueError(f"{path}: no tensor for parameter {key}")
    value = stored.pop(key)
    if value.shape != tuple(leaf.shape) or value.dtype != leaf.dtype:
      raise ValueError(f"{path}: {key} is {value.dtype}{list(value.shape)}, the model's "
                       f"parameter is {leaf.dtype}{list(leaf.shape)}")
    return jax.numpy.asarray(value)

  params = jax.tree_util.tree_map_with_path(fill, nnx.as_pure(params))
  if stored:
    raise ValueError(f"{path}: {len(stored)} tensors the model does not have, e.g. "
                     f"{sorted(stored)[:3]}")
  return config, graphdef, params, weights.materialize(nnx.as_pure(rest), config.seed), meta


# -- the model card ---------------------------------------------------------------


def _score_rows(scores: dict) -> list[str]:
  rows = ["| evaluation | τ | precision | recall | F1 | Ign F1 | best τ | F1 at best τ |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  pct = lambda s, k: f"{100 * s[k]:.2f}" if isinstance(s.get(k), (int, float)) else "–"
  for name, s in scores.items():
    rows.append(f"| {name} | {s.get('threshold', '–')} | {pct(s, 'precision')} | "
                f"{pct(s, 'recall')} | {pct(s, 'f1')} | {pct(s, 'ign_f1')} | "
                f"{s.get('best_threshold', '–')} | {pct(s, 'best_f1')} |")
  return rows


def model_card(meta: dict, model_id: str | None = None, official: bool = False) -> str:
  """README.md with Hub metadata: labels, training data and steps, scores,
  intended use, licence."""
  config, training, labels = meta["config"], meta.get("training") or {}, meta.get("labels")
  encoders = meta["encoders"]
  base = sorted({v for v in encoders.values() if hub.parse_hub_id(v) and not hub.is_local(v)})
  load_as = model_id or "PATH_OR_HUB_ID"
  front = ["---", "library_name: glidre-jax", f"license: {meta['license']}",
           "tags: [relation-extraction, document-level-relation-extraction, glidre, jax, flax]"]
  if base:
    front.append("base_model: [" + ", ".join(base) + "]")
  front.append("---")
  data = training.get("data") or config["data"]
  source = data.get("data_dir") or data.get("train_file") or (
      "the Re-DocRED dev split shipped with glidre-jax" if data.get("dataset") == "redocred"
      else "not recorded")
  steps = training.get("steps")
  layout = (["This folder has the official PyTorch GLiDRE layout "
             "(`from glidre import GLiDRE; GLiDRE.from_pretrained(...)`); glidre-jax loads it "
             "too.", ""] if official else [])
  lines = front + [
      f"# {model_id or 'GLiDRE'} (glidre-jax)", "", *layout,
      "A GLiDRE bi-encoder for document-level relation extraction, trained with "
      "glidre-jax (JAX / Flax NNX; GLiDRE: https://github.com/robinarmingaud/glidre): a text "
      "encoder reads the document, a label encoder reads free-text relation names, and "
      "every ordered entity pair is scored against every name.", "",
      "## Usage", "", "```python", "from glidre_jax import GLiDRE",
      f'model = GLiDRE.from_pretrained("{load_as}")',
      'doc = {"text": "Marie Curie was born in Warsaw.", "entities": '
      '[{"mentions": [[0, 11]], "type": "PER"}, {"mentions": [[24, 30]], "type": "LOC"}]}',
      'model.predict([doc], ["place of birth", "country"], threshold=0.5)', "```", "",
      "## Model", "",
      f"- text encoder: {encoders['text_encoder']}; label encoder: {encoders['label_encoder']}",
      f"- head: hidden size {config['model']['hidden_size']}, pooling "
      f"{config['model']['pooling']}, LOP {config['model']['lop']}; compute dtype "
      f"{config['compute_dtype']}; {config['data']['max_length']} subwords per document "
      "(longer ones truncated, or windowed with `stride`)", "",
      "## Training", "",
      f"- data: {data.get('dataset')} ({source}), train split `{data.get('train_split')}`"
      + (f", {data['subset_size']} documents drawn" if data.get("subset_size") else "")
      + f", selected on `{data.get('eval_split')}`",
      f"- steps: {steps if steps is not None else 'not recorded'}"
      + (f", weights of the best dev step {training['step']}" if training.get("step") else "")
      + (f" ({training['checkpoint']} checkpoint)" if training.get("checkpoint") else ""),
  ]
  if training.get("batch_size"):
    lr = training.get("learning_rates", {})
    lines.append(f"- effective batch {training['batch_size']}, learning rates encoder "
                 f"{lr.get('encoder')} / head {lr.get('head')}, loss {training.get('loss')}")
  lines += ["", "## Evaluation", ""]
  scores = training.get("scores") or {}
  lines += _score_rows(scores) if scores else ["No scores were recorded with this model."]
  lines += ["", f"## Labels ({len(labels) if labels else 'not recorded'})", ""]
  if labels:
    lines.append(", ".join(f"`{name}`" for name in labels))
    lines.append("")
    lines.append("Labels are free text: other relation names can be given at prediction "
                 "time (zero-shot), with lower accuracy than the trained ones.")
  lines += ["", "## Intended use and limitations", "",
            "Relation extraction between entities that are already marked in English "
            "documents (mentions given as character or word offsets); research and "
            "prototyping. Scores depend on the training data and steps above: check them on "
            "your own documents before relying on predictions; do not use them for "
            "decisions about people without review.", "",
            "## Licence", "",
            f"This model: {meta['license']}. The base encoders and training data keep their "
            "own licences (Re-DocRED: MIT).", ""]
  return "\n".join(lines)


# -- the Hub ----------------------------------------------------------------------


def upload(folder, repo_id: str, *, private: bool | None = None, token: str | None = None,
           revision: str | None = None, commit_message: str = "Upload GLiDRE (glidre-jax)"):
  """Uploads a saved folder as the Hub model repository `repo_id`."""
  if hub.parse_hub_id(repo_id) is None or "@" in repo_id:
    raise ValueError(f"push_to_hub: {repo_id!r} is not a Hub repository id (org/name)")
  if hub.offline():
    raise hub.HubError(f"push_to_hub({repo_id!r}) needs the network, and HF_HUB_OFFLINE is "
                       f"set; the folder to upload is {folder}")
  from huggingface_hub import HfApi
  api = HfApi(token=token)
  api.create_repo(repo_id, private=private, exist_ok=True)
  return api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                           commit_message=commit_message)

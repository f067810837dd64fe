"""Hugging Face Hub ids wherever a model directory is accepted.

A name is a local directory when one exists at that path; otherwise
`org/name` (optionally `org/name@revision`) is a Hub repository, fetched
with `huggingface_hub.snapshot_download` into the HF cache (HF_HOME /
HF_HUB_CACHE) and read from there. With HF_HUB_OFFLINE=1 only the cache is
read; a repository that is not cached is an error naming it and what to do.
Only the files a use needs are fetched (`patterns`): a tokenizer does not
download the weights.
"""
from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence

# What an encoder's tokenizer and config consist of (BERT, DeBERTa-v2/v3, BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spm.model",
                   "sentencepiece.bpe.model")
ENCODER_CONFIG = ("config.json", *TOKENIZER_FILES)
ENCODER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# org/name with Hub's allowed characters, optionally @revision (branch, tag, commit).
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


class HubError(FileNotFoundError):
  """A Hub id that cannot be resolved (not cached offline, not found, no files)."""


def parse_hub_id(name) -> tuple[str, str | None] | None:
  """(repo id, revision or None) when `name` is written as a Hub id, else None."""
  if not isinstance(name, str) or name.startswith((".", "/", "~")):
    return None
  match = _HUB_ID.match(name)
  return (match["repo"], match["revision"]) if match else None


def is_local(name) -> bool:
  return pathlib.Path(str(name)).expanduser().exists()


def offline() -> bool:
  """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; huggingface_hub
  itself reads it once, at import."""
  from huggingface_hub import constants
  env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
  return constants.HF_HUB_OFFLINE or env.strip().lower() in ("1", "on", "yes", "true")


def default_cache_dir() -> str:
  """The HF cache as the environment names it now: HF_HUB_CACHE, else
  HF_HOME/hub (huggingface_hub reads both once, at import)."""
  from huggingface_hub import constants
  expand = lambda p: os.path.expandvars(os.path.expanduser(p))
  if os.environ.get("HF_HUB_CACHE"):
    return expand(os.environ["HF_HUB_CACHE"])
  if os.environ.get("HF_HOME"):
    return os.path.join(expand(os.environ["HF_HOME"]), "hub")
  return constants.HF_HUB_CACHE


def resolve(name: str | os.PathLike, *, what: str = "model", revision: str | None = None,
            patterns: Sequence[str] | None = None, required: Sequence[str] = (),
            cache_dir: str | os.PathLike | None = None, token: str | None = None
            ) -> pathlib.Path:
  """A local directory for `name`: the directory itself, or the cached
  snapshot of the Hub repository `name` ('org/name[@revision]').

  patterns: the files to fetch (None: all); required: files that must be
  there (each entry a name or a tuple of alternatives).
  """
  path = pathlib.Path(str(name)).expanduser()
  if path.exists():
    if not path.is_dir():
      raise FileNotFoundError(f"{what} {name}: {path} is a file, not a directory")
    _check_files(path, required, f"{what} directory {path}")
    return path
  parsed = parse_hub_id(str(name))
  if parsed is None:
    raise FileNotFoundError(f"{what} {str(name)!r}: no such local directory, and not a "
                            "Hugging Face Hub id (org/name or org/name@revision)")
  repo_id, rev = parsed
  rev = revision or rev
  snapshot = _snapshot(repo_id, rev, what, patterns, cache_dir, token)
  _check_files(snapshot, required, f"{what} {repo_id!r} (revision {rev or 'main'}), "
                                   f"cached at {snapshot}")
  return snapshot


def _snapshot(repo_id, revision, what, patterns, cache_dir, token) -> pathlib.Path:
  from huggingface_hub import errors, snapshot_download
  is_offline = offline()
  where = f"{what} {repo_id!r} (revision {revision or 'main'})"
  cache = str(cache_dir or default_cache_dir())
  try:
    return pathlib.Path(snapshot_download(
        repo_id, revision=revision, allow_patterns=list(patterns) if patterns else None,
        cache_dir=cache, token=token, local_files_only=is_offline))
  except errors.LocalEntryNotFoundError as err:
    if is_offline:
      raise HubError(
          f"{where}: no local directory of that name, not in the Hugging Face cache ({cache}), "
          f"and HF_HUB_OFFLINE=1 forbids downloading. Fetch it once with network access "
          f"(`hf download {repo_id}`, or unset HF_HUB_OFFLINE), point HF_HOME at a cache that "
          "holds it, or pass a local directory instead.") from None
    raise HubError(f"{where}: cannot be downloaded and is not cached ({cache}): {err}") from None
  except errors.RepositoryNotFoundError:
    raise HubError(f"{where}: no such repository on the Hub (or it is private: log in "
                   "with `hf auth login` or pass a token); and no local directory "
                   f"{repo_id!r} exists") from None
  except errors.RevisionNotFoundError:
    raise HubError(f"{where}: the repository has no revision {revision!r}") from None
  except errors.HFValidationError as err:
    raise HubError(f"{what} {repo_id!r}: not a valid Hub id ({err})") from None


def _check_files(directory: pathlib.Path, required: Sequence, where: str) -> None:
  for entry in required:
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    if not any((directory / n).is_file() for n in names):
      raise FileNotFoundError(f"{where}: no {' or '.join(names)}")


OFFICIAL_CONFIG = "glidre_config.json"  # marks an official PyTorch GLiDRE directory
# A GLiDRE model repository: ours (save_pretrained) or the official layout;
# pytorch_model.bin only when an official repository has no safetensors.
MODEL_FILES = ("*.json", "*.md", "*.txt", "*.model", "model.safetensors", "text_encoder/*",
               "label_encoder/*", "labels_encoder/*")


def model_dir(name: str, *, revision: str | None = None, cache_dir=None, token=None
              ) -> pathlib.Path:
  """A local GLiDRE directory, or the snapshot of the Hub repository `name`."""
  path = resolve(name, what="GLiDRE model", revision=revision, patterns=MODEL_FILES,
                 cache_dir=cache_dir, token=token)
  if is_local(name):
    return path  # its loader reports what is missing or damaged, config first
  if (path / OFFICIAL_CONFIG).is_file() and not (path / "model.safetensors").is_file():
    path = resolve(name, what="GLiDRE model", revision=revision,
                   patterns=MODEL_FILES + ("pytorch_model.bin",),
                   required=(ENCODER_WEIGHTS,), cache_dir=cache_dir, token=token)
  return path


def encoder_dir(name: str, *, weights: bool = True, cache_dir=None) -> pathlib.Path:
  """An encoder directory (config.json + tokenizer, and weights if asked for)
  from a local path or a Hub id ('BAAI/bge-large-en-v1.5')."""
  patterns = ENCODER_CONFIG + (ENCODER_WEIGHTS if weights else ())
  required = ("config.json",) + ((ENCODER_WEIGHTS,) if weights else ())
  if weights and not is_local(name) and parse_hub_id(name):
    # model.safetensors when the repository has it; pytorch_model.bin only if not.
    snapshot = resolve(name, what="encoder", patterns=ENCODER_CONFIG + ENCODER_WEIGHTS[:1],
                       required=("config.json",), cache_dir=cache_dir)
    if (snapshot / ENCODER_WEIGHTS[0]).is_file():
      return snapshot
  return resolve(name, what="encoder", patterns=patterns, required=required,
                 cache_dir=cache_dir)

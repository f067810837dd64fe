"""Lays out a Hugging Face cache directory the way huggingface_hub writes it,
so that the real library reads it offline (no patched functions):

    <cache>/models--org--name/blobs/<sha256>
    <cache>/models--org--name/snapshots/<commit>/<file> -> ../../blobs/<sha256>
    <cache>/models--org--name/refs/<ref>   (the commit hash)
"""
from __future__ import annotations

import hashlib
import os
import pathlib


def lay_out(cache: pathlib.Path, repo_id: str, files: dict[str, pathlib.Path | bytes], *,
            commit: str | None = None, ref: str | None = "main") -> pathlib.Path:
  """Adds one snapshot of `repo_id` holding `files` ({path in repo: source file
  or bytes}); returns the snapshot folder."""
  repo = pathlib.Path(cache) / ("models--" + repo_id.replace("/", "--"))
  commit = commit or hashlib.sha1(f"{repo_id}:{sorted(files)}".encode()).hexdigest()
  snapshot = repo / "snapshots" / commit
  (repo / "blobs").mkdir(parents=True, exist_ok=True)
  for name, source in files.items():
    data = source if isinstance(source, bytes) else pathlib.Path(source).read_bytes()
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    link = snapshot / name
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(blob, link.parent), link)
  if ref:
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
  return snapshot


def folder_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  """{relative path: file} of every file under `folder` (for `lay_out`)."""
  folder = pathlib.Path(folder)
  return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}

"""Data files shipped inside the package (glidre_jax/assets/), so the default
run works offline and from an installed wheel."""
from __future__ import annotations

import pathlib

# Resolved from this file rather than importlib.resources: glidre_jax/assets
# is plain data with no __init__.py, and the package may be a namespace one.
ASSETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets"


def asset_path(*parts: str) -> pathlib.Path:
  """Path of a shipped file, e.g. asset_path("docred", "rel_info.json")."""
  path = ASSETS_DIR.joinpath(*parts)
  if not path.exists():
    raise FileNotFoundError(f"no packaged asset {'/'.join(parts)!r} (looked for {path}); "
                            "was the package installed without its data files?")
  return path

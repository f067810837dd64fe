"""The shipped configs and converters, wherever glidre-jax is installed.

In a source checkout `configs/` and `converters/` sit beside `glidre_jax/`;
the wheel ships the same files inside it, as `glidre_jax.configs` and
`glidre_jax.converters` (pyproject's package-dir mapping), so that no generic
top-level package names are installed. This module finds them in both
layouts: configs by file path (ml_collections loads config files by path, so
configs load their siblings by path too), converters by module name.

    --config=default:tiny             # a shipped config by name (any directory)
    --config=configs/default.py:tiny  # a file (relative to the working directory)
"""
from __future__ import annotations

import importlib
import importlib.util
import pathlib
import types

_PACKAGE = pathlib.Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _layout_dir(name: str) -> pathlib.Path:
  installed = _PACKAGE / name
  if (installed / "__init__.py").is_file():
    return installed
  checkout = _CHECKOUT / name
  if (checkout / "__init__.py").is_file():
    return checkout
  raise FileNotFoundError(f"no {name}/ package inside {_PACKAGE} (installed wheel) or beside "
                          f"it in {_CHECKOUT} (source checkout): a broken installation")


def config_dir() -> pathlib.Path:
  return _layout_dir("configs")


def config_names() -> tuple[str, ...]:
  return tuple(sorted(p.stem for p in config_dir().glob("*.py") if not p.stem.startswith("_")))


def config_file(spec: str) -> str:
  """`--config` value -> a loadable 'file.py[:variant]'.

  An existing file is taken as it is; otherwise `name`, `name.py` and
  `configs/name.py` name a shipped config (so the checkout's commands also
  work from any directory once installed).
  """
  path, sep, variant = spec.partition(":")
  if pathlib.Path(path).expanduser().is_file():
    return spec
  stem = path.removesuffix(".py")
  stem = stem.removeprefix("configs/")
  if stem in config_names():
    return str(config_dir() / f"{stem}.py") + sep + variant
  raise ValueError(f"config {path!r}: no such file, and not a shipped config "
                   f"(shipped: {', '.join(config_names())}; e.g. --config=default:tiny)")


def load_file(path: str | pathlib.Path, module_name: str | None = None) -> types.ModuleType:
  """Executes a config file as a fresh module (not registered in sys.modules)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(module_name or f"glidre_config_{path.stem}",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling_config(config_file_path: str, name: str) -> types.ModuleType:
  """The config `name` next to `config_file_path` (what configs use to build
  on each other: works loaded by path, from the checkout or the wheel)."""
  return load_file(pathlib.Path(config_file_path).resolve().with_name(f"{name}.py"))


def config_module(name: str) -> types.ModuleType:
  """A shipped config module by name, e.g. config_module("default").get_config()."""
  if name not in config_names():
    raise ValueError(f"unknown shipped config {name!r}; shipped: {', '.join(config_names())}")
  return load_file(config_dir() / f"{name}.py")


def get_config(spec: str):
  """The ConfigDict of a `--config` value ('default:tiny', a path, ...)."""
  path, _, variant = config_file(spec).partition(":")
  return load_file(path).get_config(variant)


def converters(name: str) -> types.ModuleType:
  """A converters module: the checkout's top-level `converters` package when
  this glidre_jax is a checkout whose root is importable (the name its tests
  and `python -m converters.…` use: one copy of its classes), else
  `glidre_jax.converters` (the wheel, or an editable install's mapping)."""
  if not (_PACKAGE / "converters").is_dir():
    spec = importlib.util.find_spec("converters")
    checkout = _CHECKOUT / "converters" / "__init__.py"
    if spec is not None and spec.origin and pathlib.Path(spec.origin).resolve() == checkout:
      return importlib.import_module(f"converters.{name}")
  try:
    return importlib.import_module(f"glidre_jax.converters.{name}")
  except ModuleNotFoundError as err:
    if err.name not in ("glidre_jax.converters", f"glidre_jax.converters.{name}"):
      raise
    raise ImportError(f"glidre_jax.converters.{name} is not installed and {_CHECKOUT} is not "
                      "a source checkout on sys.path: reinstall glidre-jax") from err


def define_config_flag(name: str = "config", default: str = "default",
                       help_string: str = "config: a shipped name or a file, [:variant]"):
  """An ml_collections config-file flag that also takes shipped config names."""
  from absl import flags
  from ml_collections import config_flags
  from ml_collections.config_flags.config_flags import ConfigFileFlagParser

  class _Parser(ConfigFileFlagParser):
    def parse(self, path):
      return super().parse(config_file(path))

  holder = config_flags.DEFINE_config_file(name, config_file(default), help_string)
  flags.FLAGS[name].parser = _Parser(name=name, lock_config=True)
  return holder

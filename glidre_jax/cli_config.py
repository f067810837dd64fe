"""Command-line overrides of an ml_collections config, None included.

ml_collections parses `--config.a.b=VALUE` with the parser of the field's
type: a float placeholder rejects "None" and a str one takes it as the
string 'None' (a silent wrong value). `parse_flags` (the `flags_parser` of
`absl.app.run`) sets such fields to None instead: `--config.a.b=None` or
`--config.a.b None`, for fields that may be None — those declared with
`config_dict.placeholder` or whose value is None. Any other field named so is
an error naming it.
"""
from __future__ import annotations

from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_dict

NONE = "None"


def split_none_overrides(argv: Sequence[str], name: str = "config"
                         ) -> tuple[list[str], list[str]]:
  """(argv without the `--NAME.path=None` overrides, their field paths)."""
  prefix = f"--{name}."
  rest, paths = [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith(prefix) and arg.endswith("=" + NONE):
      paths.append(arg[len(prefix):-len("=" + NONE)])
    elif (arg.startswith(prefix) and "=" not in arg and i + 1 < len(args)
          and args[i + 1] == NONE):
      paths.append(arg[len(prefix):])
      i += 1
    else:
      rest.append(arg)
    i += 1
  return rest, paths


def set_to_none(config: ml_collections.ConfigDict, path: str) -> None:
  """Sets the field at dotted `path` to None; it must be allowed to be None."""
  *parents, key = path.split(".")
  holder = config
  for part in parents:
    if not isinstance(holder, ml_collections.ConfigDict) or part not in holder:
      raise ValueError(f"--config.{path}=None: the config has no field {path!r}")
    holder = holder[part]
  if not isinstance(holder, ml_collections.ConfigDict) or key not in holder:
    raise ValueError(f"--config.{path}=None: the config has no field {path!r}")
  fields = dict(holder.items(preserve_field_references=True))
  if not (isinstance(fields[key], config_dict.FieldReference) or holder[key] is None):
    raise ValueError(f"--config.{path}=None: field {path!r} (value {holder[key]!r}) cannot be "
                     "None; only placeholder fields (config_dict.placeholder) can")
  holder[key] = None


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS,
                name: str = "config") -> list[str]:
  """Parses `argv` into `flag_values` (absl), then applies the None overrides
  to the config flag `name`; returns the arguments absl left unparsed."""
  rest, none_paths = split_none_overrides(argv, name)
  try:
    remaining = flag_values(rest)
  # ml_collections reports an unknown field as AttributeError/KeyError.
  except (flags.Error, AttributeError, KeyError) as err:
    raise SystemExit(f"FATAL Flags parsing error: {err}") from None
  config = flag_values[name].value
  for path in none_paths:
    try:
      set_to_none(config, path)
    except ValueError as err:
      raise SystemExit(f"FATAL Flags parsing error: {err}") from None
  return remaining

"""What the command-line tools share: progress bars, absl flag parsing and the
--checkpoint / --which flags.

Every tool uses absl flags. `glidre-train` parses the process's flags with
`absl.app` (for its ml_collections --config, see `cli_config`). The others
(evaluate, predict, export, import and the converters) each define their
flags in a `FlagValues` of their own, so that they can be imported together
and `main(argv)` called again (as the tests do), and parse them with `parse`:
--help prints the tool's doc and flags; a usage error exits with status 2 and
names the flag.

One meaning everywhere: --checkpoint names the model (a run directory, a
saved folder, an official directory or a Hub id, as each tool accepts) and
--which picks a run directory's weights, best-on-dev or latest.
"""
from __future__ import annotations

import functools
import sys
import textwrap
from collections.abc import Sequence
from typing import NoReturn

from absl import flags

WHICH = ("best", "latest")  # a run directory's best-on-dev or latest weights
MODEL = "run directory, saved folder, official GLiDRE directory or Hub id"
HELP = ("--help", "-h", "--helpfull", "--helpshort")


def progress_bar(desc: str):
  """tqdm over an iterable when attached to a terminal or CI log; plain otherwise."""
  from tqdm.auto import tqdm  # lazy: the predict API never shows a bar
  return functools.partial(tqdm, desc=desc, file=sys.stdout, dynamic_ncols=True,
                           mininterval=2.0)


def define_checkpoint(flag_values: flags.FlagValues, help: str = MODEL,
                      required: bool = True) -> flags.FlagHolder:
  """--checkpoint: the model, a directory or Hub id (`help` says which the tool takes)."""
  holder = flags.DEFINE_string("checkpoint", None, help, flag_values=flag_values)
  if required:
    flags.mark_flag_as_required("checkpoint", flag_values=flag_values)
  return holder


def define_which(flag_values: flags.FlagValues) -> flags.FlagHolder:
  """--which: a run directory's best-on-dev or latest weights."""
  return flags.DEFINE_enum("which", "best", WHICH,
                           "a run directory's best-on-dev or latest weights",
                           flag_values=flag_values)


def usage_error(message: str) -> NoReturn:
  print(f"error: {message} (--help lists the flags)", file=sys.stderr)
  raise SystemExit(2)


def flags_help(flag_values: flags.FlagValues) -> str:
  """The flags of one tool in one alphabetical list (absl groups them by module)."""
  lines = []
  for flag in sorted({id(f): f for f in map(flag_values.__getitem__, flag_values)}.values(),
                     key=lambda f: f.name):
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    default = "" if flag.default is None else f" (default: {flag.default_as_str})"
    lines.append(textwrap.fill(f"{name}: {flag.help}{default}", 79, initial_indent="  ",
                               subsequent_indent="      "))
  return "\n".join(lines)


def parse(flag_values: flags.FlagValues, argv: Sequence[str] | None, doc: str) -> None:
  """Parses `argv` (the arguments, without the program name; default:
  sys.argv[1:]) into `flag_values`, each flag from its default again."""
  argv = sys.argv[1:] if argv is None else list(argv)
  flags_part = argv[:argv.index("--")] if "--" in argv else argv
  if any(arg in HELP for arg in flags_part):
    print(f"{doc.strip()}\n\nflags:\n{flags_help(flag_values)}")
    raise SystemExit(0)
  flag_values.unparse_flags()
  try:
    rest = flag_values(["glidre", *argv])
  except flags.Error as err:
    usage_error(str(err))
  if len(rest) > 1:
    usage_error(f"unexpected arguments: {rest[1:]}")

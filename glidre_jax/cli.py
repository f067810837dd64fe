"""What the command-line tools (train, evaluate, predict) share."""
from __future__ import annotations

import functools
import sys


def progress_bar(desc: str):
  """tqdm over an iterable when attached to a terminal or CI log; plain otherwise."""
  from tqdm.auto import tqdm  # lazy: the predict API never shows a bar
  return functools.partial(tqdm, desc=desc, file=sys.stdout, dynamic_ncols=True,
                           mininterval=2.0)


WHICH = ("best", "latest")  # a run directory's best-on-dev or latest weights


def add_checkpoint_flags(parser, what: str = "run directory, saved folder, official GLiDRE "
                                             "directory or Hub id") -> None:
  """--checkpoint (the model: a directory or Hub id) and --which (its weights)."""
  parser.add_argument("--checkpoint", required=True, help=what)
  parser.add_argument("--which", choices=WHICH, default="best",
                      help="a run directory's best-on-dev or latest weights")

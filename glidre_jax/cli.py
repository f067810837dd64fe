"""What the command-line tools (train, evaluate, predict) share."""
from __future__ import annotations

import functools
import sys


def progress_bar(desc: str):
  """tqdm over an iterable when attached to a terminal or CI log; plain otherwise."""
  from tqdm.auto import tqdm  # lazy: the predict API never shows a bar
  return functools.partial(tqdm, desc=desc, file=sys.stdout, dynamic_ncols=True,
                           mininterval=2.0)

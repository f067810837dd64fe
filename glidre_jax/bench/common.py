"""Pieces every benchmark CLI shares: timing, XLA memory, config overrides,
machine description, and writing a result table as JSON + CSV."""
from __future__ import annotations

import ast
import csv
import json
import os
import pathlib
import platform
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np


def timed(fn: Callable) -> tuple[float, object]:
  """(seconds, result) of fn(), waiting for the device to finish."""
  t = time.perf_counter()
  result = jax.block_until_ready(fn())
  return time.perf_counter() - t, result


def median_time(fn: Callable, repeats: int, warmup: int = 1) -> float:
  """Median wall time of fn() over `repeats` runs after `warmup` untimed ones."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  return float(np.median([timed(fn)[0] for _ in range(repeats)]))


def xla_memory(compiled) -> dict | None:
  """Argument and temporary bytes of a compiled executable (None where the
  backend reports no memory analysis)."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return {"argument_bytes": int(mem.argument_size_in_bytes),
          "temp_bytes": int(mem.temp_size_in_bytes)}


def peak_gib(compiled) -> float:
  """XLA's per-device peak estimate (arguments + temporaries) in GiB."""
  mem = xla_memory(compiled)
  return (mem["argument_bytes"] + mem["temp_bytes"]) / 2**30 if mem else float("nan")


def add_override_arg(parser) -> None:
  """--set KEY=VALUE (repeatable), applied by `apply_overrides`."""
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set data.max_length=128 (repeatable)")


def parse_ints(text: str) -> list[int]:
  """'1,4,8' -> [1, 4, 8]."""
  return [int(x) for x in text.split(",") if x.strip()]


def apply_overrides(config, items: Sequence[str]):
  """Sets 'train.lr_head=1e-3'-style overrides (Python literals, else strings).

  Unlike ConfigDict.update_from_flattened_dict, an unknown key raises rather
  than silently adding a field that nothing reads.
  """
  for item in items:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r}: expected key=value")
    *parents, leaf = key.strip().split(".")
    node = config
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise KeyError(f"override {item!r}: the config has no field {key!r}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node[leaf] = value
  return config


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
  """A plain-text table; columns are (header, row key, format spec)."""
  cells = [[h for h, _, _ in columns]]
  cells += [[format(row[key], spec) if row.get(key) is not None else "-"
             for _, key, spec in columns] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
  return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def cpu_model() -> str:
  """The CPU's model name (Linux), else what `platform` knows."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_meta() -> dict:
  """What a result depends on: machine, device, library versions, date, load."""
  import flax
  return {"processor": cpu_model(), "load_avg_1m": os.getloadavg()[0],
          "platform": platform.platform(), "cpu_count": os.cpu_count(),
          "device": str(jax.devices()[0]), "num_devices": jax.device_count(),
          "jax": jax.__version__, "flax": flax.__version__,
          "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")}


def write_csv(path: pathlib.Path, rows: Sequence[dict]) -> None:
  """Rows as CSV; the columns are the union of the rows' keys, in order."""
  fields = list(dict.fromkeys(k for row in rows for k in row))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def write_results(out: pathlib.Path, name: str, rows: list[dict], **extra) -> None:
  """out/name.json ({"meta", **extra, "rows"}) and out/name.csv (the rows)."""
  out.mkdir(parents=True, exist_ok=True)
  payload = {"meta": machine_meta(), **extra, "rows": rows}
  (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float))
  write_csv(out / f"{name}.csv", rows)


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, path: pathlib.Path) -> None:
  """Writes and closes a figure (pyplot keeps open ones alive otherwise)."""
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  pyplot().close(fig)

"""Per-device memory of the train step against the device count, FSDP off/on.

    python -m glidre_jax.bench.memory [--devices 1,4,8] [--paper] [--set KEY=VALUE ...]

Each device count runs in a subprocess with that many forced host (CPU)
devices; the train step is compiled on shapes alone (`glidre_jax.train
.memory_analysis`: random encoders of the configured architecture, nothing
allocated, no weights read) and XLA's memory analysis is read per device.
`--paper`: configs/redocred.py with DeBERTa-v3-large / BGE-large built from
the config.json files in configs/encoders (batch 16, bf16, label encoder
trained). Writes memory.{json,csv} into --out and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

from glidre_jax import allocator
from glidre_jax.bench import common

REPO = pathlib.Path(__file__).resolve().parents[2]
PAPER = ["text_encoder=configs/encoders/deberta-v3-large",
         "label_encoder=configs/encoders/bge-large-en-v1.5"]
GIB = 2**30


def analyse(config_name: str, overrides: list[str]) -> dict:
  """In this process: the memory analysis of the config with overrides."""
  from glidre_jax import shipped, train
  name, _, variant = config_name.partition(":")
  config = common.apply_overrides(shipped.config_module(name).get_config(variant), overrides)
  # Host devices stand in for accelerators: the one-executable step they run.
  return train.memory_analysis(config, split_update=False)


def run_one(config_name: str, overrides: list[str], devices: int, timeout: int) -> dict:
  # Memory comes from buffer assignment (HLO level): LLVM's optimisation
  # level does not change it, and lowering it shortens the compilation.
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
         "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
  code = ("import json, sys; from glidre_jax.bench import memory; "
          "print('RESULT ' + json.dumps(memory.analyse(sys.argv[1], sys.argv[2:]), default=str))")
  out = subprocess.run([sys.executable, "-c", code, config_name, *overrides], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  if out.returncode or not lines:
    raise RuntimeError(f"{devices} devices, {overrides}: exit {out.returncode}\n"
                       f"{out.stderr[-3000:]}")
  return json.loads(lines[-1].removeprefix("RESULT "))


def markdown(rows: list[dict]) -> str:
  head = ("| devices | FSDP | params / device | Adam state / device | temporaries | "
          "peak (args + temp) |")
  lines = [head, "|" + "---:|" * 6]
  for r in rows:
    lines.append(f"| {r['devices']} | {'on' if r['fsdp'] else 'off'} | "
                 f"{r['params_bytes'] / GIB:.2f} GiB | {r['opt_state_bytes'] / GIB:.2f} GiB | "
                 f"{r['temp_bytes'] / GIB:.2f} GiB | **{r['peak_bytes'] / GIB:.2f} GiB** |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="default", help="a shipped config[:variant]")
  parser.add_argument("--devices", default="1,4,8")
  parser.add_argument("--paper", action="store_true",
                      help="configs/redocred.py with the paper's encoders (shapes only)")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per compilation")
  common.add_override_arg(parser)
  parser.add_argument("--out", default="results/memory")
  args = parser.parse_args(argv)
  config_name = "redocred" if args.paper else args.config
  overrides = (PAPER if args.paper else []) + args.set
  rows, out = [], pathlib.Path(args.out)
  setup = {"config": config_name, "overrides": overrides}
  for devices in common.parse_ints(args.devices):
    for fsdp in ((False,) if devices == 1 else (True, False)):
      m = run_one(config_name, overrides + [f"mesh.fsdp={fsdp}"], devices, args.timeout)
      row = {"devices": devices, **{k: v for k, v in m.items() if k not in ("mesh", "batch")},
             "batch": str(m["batch"])}
      rows.append(row)
      common.write_results(out, "memory", rows, setup=setup)  # so far
      print(f"{devices} devices, fsdp {fsdp}: peak {row.get('peak_bytes', 0) / GIB:.2f} GiB "
            f"per device (compiled in {row['compile_s']} s)", flush=True)
  print("\n" + markdown(rows))
  print(f"wrote {out}/memory.{{json,csv}}")


if __name__ == "__main__":
  allocator.relaunch()  # XLA:CPU's buffers under mimalloc, as the CLIs run
  main()

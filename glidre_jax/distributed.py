"""Multi-process start-up: one JAX process per host (TPU VM, GPU node, or CPU
process in tests), all running the same command."""
from __future__ import annotations

import os

import jax

ENV_COORDINATOR = "GLIDRE_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "GLIDRE_NUM_PROCESSES"
ENV_PROCESS_ID = "GLIDRE_PROCESS_ID"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> None:
  """Joins the other processes of a run, or does nothing for a single process.

  Arguments fall back to GLIDRE_COORDINATOR_ADDRESS / GLIDRE_NUM_PROCESSES /
  GLIDRE_PROCESS_ID. `auto` lets JAX detect the cluster itself (Cloud TPU
  pods, SLURM). CPU processes talk through gloo collectives.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
  if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(ENV_PROCESS_ID):
    process_id = int(os.environ[ENV_PROCESS_ID])
  if not auto and not coordinator_address and (num_processes or 1) == 1:
    return
  if not auto and (coordinator_address is None or num_processes is None or process_id is None):
    raise ValueError("multi-process runs need coordinator_address, num_processes and "
                     f"process_id (flags or {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/"
                     f"{ENV_PROCESS_ID}), or --distributed_auto on TPU pods / SLURM")
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if auto:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def barrier(name: str) -> None:
  """All processes wait here (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)

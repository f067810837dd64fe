#!/usr/bin/env bash
# N training processes on this machine, each with its own CPU devices, joined
# through a coordinator on 127.0.0.1 (gloo collectives): a multi-host run in
# miniature. Every argument goes to `python -m glidre_jax.train`.
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 bash launch/local_multiprocess.sh \
#       --config=configs/default.py:tiny --config.mesh.model=2
#
# Other XLA_FLAGS in the environment are kept (a later device count wins).
# When one process fails (or this script is stopped) the others are killed:
# alone they would wait forever in their next collective.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${NUM_PROCESSES:-2}
DEVICES=${DEVICES_PER_PROCESS:-1}
PORT=${COORDINATOR_PORT:-$((20000 + RANDOM % 20000))}
PY=${PYTHON:-.venv/bin/python}
pids=()
stop_all() { kill "${pids[@]}" 2>/dev/null || true; }
trap 'stop_all; exit 143' INT TERM
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES}" JAX_PLATFORMS=cpu \
    "$PY" -m glidre_jax.train --coordinator_address="127.0.0.1:${PORT}" \
    --num_processes="$N" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for ((i = 0; i < N; i++)); do
  wait -n && continue
  rc=$?
  if ((status == 0)); then status=$rc; fi
  stop_all
done
exit $status

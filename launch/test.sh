#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite (pytest exit code 5, "no tests
# ran", fails like any other failure).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Two pytest-xdist workers (CI has 2 cores); whole files per worker so each
# module-scoped fixture is built once. Later arguments win (`-n 0`: serial).
exec .venv/bin/python -m pytest -q -ra -n 2 --dist loadfile "$@"

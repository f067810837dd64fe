#!/usr/bin/env bash
# Cloud TPU pod: the same train command on every host of a TPU VM slice.
# JAX finds the pod's coordinator itself (--distributed_auto).
#
# Edit these, then run from your workstation:  bash launch/tpu_pod.sh
set -euo pipefail
PROJECT=${PROJECT:-my-gcp-project}
ZONE=${ZONE:-us-central2-b}
TPU_NAME=${TPU_NAME:-glidre-v4-32}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
BUCKET=${BUCKET:-gs://my-bucket/glidre}        # checkpoints + TensorBoard (shared by all hosts)
REPO_URL=${REPO_URL:-https://example.com/your/glidre-jax.git}
CONFIG=${CONFIG:-configs/redocred.py}

if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" \
    --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
fi

# Every worker: fetch the code, install (jax[tpu] instead of the CPU wheel), train.
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" --worker=all \
  --command "set -e
    [ -d glidre-jax ] || git clone $REPO_URL glidre-jax
    cd glidre-jax && git pull --ff-only
    python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
    .venv/bin/pip install -q -e . --no-deps
    .venv/bin/python -m glidre_jax.train --config=$CONFIG --distributed_auto \
      --workdir=$BUCKET/$(date +%Y%m%d-%H%M%S) $*"

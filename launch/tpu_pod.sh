#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: installs the package on every worker, then starts the same
# command on all of them (JAX discovers the pod; the batch is split across hosts).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=gs://bucket/udpm/cifar10 \
#   TFDS_DATA_DIR=gs://bucket/tfds CONFIG=configs/cifar10.py launch/tpu_pod.sh [--dry-run] [--config.x=y ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
need TPU_NAME "${TPU_NAME:-}"; need ZONE "${ZONE:-}"; need WORKDIR "${WORKDIR:-}"
CONFIG="${CONFIG:-configs/cifar10.py}"
SRC="$(cd "$(dirname "$0")/.." && pwd)"
# Ship this checkout (not whatever a remote branch holds) so every worker runs the same code.
SETUP="set -e; cd udpm_jax && pip install -q -U 'jax[tpu]' -e ."
cache_env "$WORKDIR"
TRAIN="cd udpm_jax && TFDS_DATA_DIR=${TFDS_DATA_DIR:-} ${CACHE_ENV[*]:-} python3 -m udpm_jax.main --jax_distributed --config=$CONFIG --workdir=$WORKDIR ${ARGS[*]:-}"
run gcloud compute tpus tpu-vm scp --recurse "$SRC" "$TPU_NAME":udpm_jax --zone="$ZONE" --worker=all
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$SETUP"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$TRAIN"

#!/usr/bin/env bash
# Train on all GPUs of one machine (one process; the batch is sharded over the local devices).
#
#   WORKDIR=/data/runs/cifar10 CONFIG=configs/cifar10.py launch/gpu_single_host.sh [--dry-run] [--config.x=y ...]
# Needs: pip install -U "jax[cuda12]" -e .
set -euo pipefail
source "$(dirname "$0")/common.sh"
need WORKDIR "${WORKDIR:-}"
CONFIG="${CONFIG:-configs/cifar10.py}"
# Let XLA take most of the GPU memory up front and overlap collectives with compute.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
cache_env "$WORKDIR"
train env "${CACHE_ENV[@]}" python3 -m udpm_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  "${ARGS[@]}"

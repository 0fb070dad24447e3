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
# Ship this checkout (not whatever a remote branch holds) so every worker runs the same code: as one
# archive, unpacked into a fresh directory (a copy onto an existing one would nest, and run the old
# code), without virtualenvs, git history or local workdirs.
ARCHIVE="${TMPDIR:-/tmp}/udpm_jax_src.tar.gz"
SETUP="set -e; rm -rf udpm_jax && mkdir udpm_jax && tar -xzf udpm_jax_src.tar.gz -C udpm_jax && cd udpm_jax && pip install -q -U 'jax[tpu]' -e ."
cache_env "$WORKDIR"
# The remote shell parses the command again: every piece is quoted (tuple overrides have spaces
# and parentheses). TFDS_DATA_DIR is passed only when set, so TFDS keeps its default otherwise.
REMOTE_ENV=()
if [[ -n "${TFDS_DATA_DIR:-}" ]]; then REMOTE_ENV+=("TFDS_DATA_DIR=$TFDS_DATA_DIR"); fi
REMOTE_ENV+=("${CACHE_ENV[@]}")
TRAIN_CMD=(python3 -m udpm_jax.main --jax_distributed "--config=$CONFIG" "--workdir=$WORKDIR" "${ARGS[@]}")
printf -v TRAIN 'cd udpm_jax && env'
for word in "${REMOTE_ENV[@]}" "${TRAIN_CMD[@]}"; do printf -v TRAIN '%s %q' "$TRAIN" "$word"; done
run tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude=./workdirs --exclude=__pycache__ \
  -czf "$ARCHIVE" .
run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME":udpm_jax_src.tar.gz --zone="$ZONE" --worker=all
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$SETUP"
train gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$TRAIN"

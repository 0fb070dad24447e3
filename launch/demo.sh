#!/usr/bin/env bash
# The CPU demo from a fresh checkout: virtualenv, package, data, training, then the pictures.
#
#   launch/demo.sh [--dry-run] [--config.x=y ...]      (extra arguments go to udpm_jax.main)
#   WORKDIR=/tmp/udpm_demo   where the run goes (checkpoints, TensorBoard logs, plots/)
#   DATA_DIR=DIR             Fashion-MNIST idx files there instead of the Debian package
#   VENV=DIR                 the virtualenv (default: .venv of this checkout)
#
# Debian/Ubuntu packages it needs and misses (python3-venv; dataset-fashion-mnist, which puts the
# idx files in /usr/share/datasets/fashion-mnist) are installed with apt-get: directly as root,
# otherwise through sudo; without either it stops and says what to run. Rerunning it resumes the
# run from its latest checkpoint (a finished run is only plotted again).
set -euo pipefail
here="${BASH_SOURCE[0]%/*}"
if [[ "$here" == "${BASH_SOURCE[0]}" ]]; then here=.; fi
source "$here/common.sh"
REPO="$(cd "$here/.." && pwd)"
DEB_DATA=/usr/share/datasets/fashion-mnist  # where dataset-fashion-mnist installs the idx files
WORKDIR="$(absolute "${WORKDIR:-/tmp/udpm_demo}")"
VENV="$(absolute "${VENV:-$REPO/.venv}")"
DATA_ARGS=()
if [[ -n "${DATA_DIR:-}" ]]; then
  if [[ ! -d "$DATA_DIR" ]]; then
    echo "error: DATA_DIR=$DATA_DIR is not a directory (it should hold Fashion-MNIST's" \
      "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-…)" >&2
    exit 2
  fi
  DATA_ARGS=("--config.data.path=$(absolute "$DATA_DIR")")
fi
cd "$REPO"

PACKAGES=()
if needs_python_venv "$VENV"; then PACKAGES+=(python3-venv); fi
own_data="${DATA_DIR:+1}"
for a in "${ARGS[@]}"; do
  case "$a" in --config.data.source=* | --config.data.path=*) own_data=1 ;; esac
done
if [[ -z "$own_data" && ! -d "$DEB_DATA" ]]; then PACKAGES+=(dataset-fashion-mnist); fi
if ((${#PACKAGES[@]})); then apt_install "${PACKAGES[@]}"; fi
setup_venv "$VENV"

cache_env "$WORKDIR"
train env "${CACHE_ENV[@]}" "$VENV/bin/python" -m udpm_jax.main \
  --config=configs/fashion_mnist_demo.py --workdir="$WORKDIR" "${DATA_ARGS[@]}" "${ARGS[@]}"
run env "${CACHE_ENV[@]}" "$VENV/bin/python" -m udpm_jax.plot --workdir="$WORKDIR"

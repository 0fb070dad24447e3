#!/usr/bin/env bash
# GPU compute report for the paper configs: FLOPs ratio, sampling images/s, and per-level training
# programs (compile s, step s, FLOPs) with MFU against the GPU's dense bf16 peak.
# Usage: bench/gpu_report.sh OUT_DIR [CONFIG ...]   (default configs: cifar10 ffhq64)
set -euo pipefail
out=${1:?usage: bench/gpu_report.sh OUT_DIR [CONFIG ...]}
shift
mkdir -p "$out"
for cfg in "${@:-cifar10 ffhq64}"; do
  for c in $cfg; do
    python3 -m udpm_jax.bench --config="configs/$c.py" --batch=256 --train_batch=64 --repeats=10 \
      --out="$out/$c.json"
  done
done

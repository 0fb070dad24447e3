#!/usr/bin/env bash
# GPU compute report for the paper configs: FLOPs ratio, sampling images/s, and per-level training
# programs (compile s, step s, FLOPs) with MFU against the GPU's dense bf16 peak. The training
# programs compile one after another and OUT_DIR/CONFIG.json is rewritten after each one, so a job
# cut short by a lease still leaves what it measured ("partial": true). BENCH_FLAGS=--parallel_compile
# compiles them concurrently (shorter wall time, overlapping compile seconds).
# Usage: bench/gpu_report.sh OUT_DIR [CONFIG:TRAIN_BATCH ...]   (default: cifar10:256 ffhq64:64)
set -euo pipefail
out=${1:?usage: bench/gpu_report.sh OUT_DIR [CONFIG:TRAIN_BATCH ...]}
shift
mkdir -p "$out"
(($#)) || set -- cifar10:256 ffhq64:64
for item in "$@"; do
  cfg=${item%%:*} train_batch=${item##*:}
  python3 -m udpm_jax.bench --config="configs/$cfg.py" --batch=256 --train_batch="$train_batch" \
    --repeats=10 ${BENCH_FLAGS:-} --out="$out/$cfg.json"
done
# Side by side with the authors' release on this GPU (their --use_amp bf16 autocast, ours bf16), at
# their batch of 64 per GPU, when UDPM_OFFICIAL_REPO names a clone of github.com/shadyabh/UDPM
# (needs: pip install torch lpips).
if [[ -n "${UDPM_OFFICIAL_REPO:-}" ]]; then
  python3 -m tools.bench_vs_release --udpm_repo="$UDPM_OFFICIAL_REPO" --config=cifar10 --batch=64 \
    --repeats=10 --out="$out/vs_release_cifar10.json"
fi

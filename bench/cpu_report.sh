#!/usr/bin/env bash
# Compute report for the paper configs on this machine: FLOPs ratio (XLA cost analysis), sampler
# memory, sampling images/s and, for the tiny config, training steps/s. Writes bench/out/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# Transparent huge pages for XLA:CPU's per-call temporaries, as the launch scripts set (see
# launch/common.sh); both sides of the comparison with the release run in this one process.
export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}"
mkdir -p bench/out
for cfg in cifar10 ffhq64; do
  python -m udpm_jax.bench --config="configs/$cfg.py" --batch=8 --repeats=2 --out="bench/out/$cfg.json"
done
python -m udpm_jax.bench --config=configs/test.py --batch=16 --train_batch=8 --repeats=5 \
  --out=bench/out/test.json
# Side by side with the authors' release (float32, batch 16, LPIPS off on both sides), when
# UDPM_OFFICIAL_REPO names a clone of github.com/shadyabh/UDPM (needs: pip install torch lpips).
if [[ -n "${UDPM_OFFICIAL_REPO:-}" ]]; then
  python -m tools.bench_vs_release --udpm_repo="$UDPM_OFFICIAL_REPO" --config=cifar10 --batch=16 \
    --repeats=2 --out=bench/out/vs_release_cifar10.json
fi

#!/usr/bin/env bash
# Compute report for the paper configs on this machine: FLOPs ratio (XLA cost analysis), sampler
# memory, sampling images/s and, for the tiny config, training steps/s. Writes bench/out/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
for cfg in cifar10 ffhq64; do
  python -m udpm_jax.bench --config="configs/$cfg.py" --batch=8 --repeats=2 --out="bench/out/$cfg.json"
done
python -m udpm_jax.bench --config=configs/test.py --batch=16 --train_batch=8 --repeats=5 \
  --out=bench/out/test.json

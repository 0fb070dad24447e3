#!/usr/bin/env bash
# The project's test command (README.md): 8 forced CPU devices, compile-light XLA, 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0}"
export JAX_PLATFORMS=cpu
exec python -m pytest -n 2 --durations=15 -q tests "$@"

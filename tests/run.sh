#!/usr/bin/env bash
# The project's test command (README.md): 8 forced CPU devices, compile-light XLA, 2 workers.
#   bash tests/run.sh          the fast tier (everything not marked slow): ~4 min on 2 cores
#   bash tests/run.sh --slow   the slow tier: subprocess training runs, kill/resume, the release
#                              parity, benchmarks (~10 min on 2 cores); CI runs both tiers
#   bash tests/run.sh --all    both in one session
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0}"
export JAX_PLATFORMS=cpu
tier=(-m "not slow")
case "${1:-}" in
  --slow) tier=(-m slow); shift ;;
  --all) tier=(); shift ;;
esac
exec python -m pytest -n 2 -rs --durations=15 -q "${tier[@]}" tests "$@"

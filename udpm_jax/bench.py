"""Compute report: FLOPs of a full UDPM sampling run vs one full-resolution network call, memory,
and measured sampling/training throughput. Prints JSON.

  python -m udpm_jax.bench --config=configs/cifar10.py [--batch=64] [--train_batch=8] [--repeats=3]

FLOPs come from XLA's cost analysis of the compiled programs (random weights; FLOPs do not depend
on values). The reference call is the same U-Net applied at the data side N, i.e. what one step of
an ordinary diffusion model with this network costs.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from udpm_jax import benchmark, cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_BATCH = flags.DEFINE_integer("batch", 16, "Sampling batch.")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 0, "Training batch (0 = skip training).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions after warm-up.")
_PARALLEL_COMPILE = flags.DEFINE_bool(
  "parallel_compile",
  False,
  "Compile the 2L training programs concurrently (compile seconds overlap).",
)
_FLOPS = flags.DEFINE_bool(
  "flops", True, "Count FLOPs (lowered and compiled for the CPU: minutes for the paper configs)."
)
_OUT = flags.DEFINE_string("out", None, "Also write the JSON report to this file.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = benchmark.report(
    _CONFIG.value,
    _BATCH.value,
    _TRAIN_BATCH.value,
    _REPEATS.value,
    _PARALLEL_COMPILE.value,
    _FLOPS.value,
    on_progress=(lambda partial: cli.write_report(partial, _OUT.value)) if _OUT.value else None,
  )
  cli.print_report(result, _OUT.value)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()

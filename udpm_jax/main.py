"""Command line for training: flags only; everything else lives in `train.train_and_evaluate`.

  python -m udpm_jax.main --config=configs/cifar10.py --workdir=DIR [--config.training.batch_size=…]

Multi-host (TPU pods, SLURM): pass --jax_distributed (or set UDPM_JAX_DISTRIBUTED=1) so that
`jax.distributed.initialize()` runs first; on TPU VMs and SLURM it discovers the cluster itself.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from udpm_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_DISTRIBUTED = flags.DEFINE_bool(
  "jax_distributed", False, "Call jax.distributed.initialize() (multi-host runs)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax

  if _DISTRIBUTED.value or os.environ.get("UDPM_JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  logging.info(
    "JAX process %d/%d, %d local devices of %d: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0],
  )
  from udpm_jax import train

  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()

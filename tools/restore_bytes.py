"""Bytes read by the notebook restore (`checkpoint.restore_params`) against a full restore of the
training state, for a config's freshly initialised checkpoint.

  python -m tools.restore_bytes --config=configs/cifar10.py [--out=bench/results/restore_bytes_cifar10.json]

The state is filled with random values, as a trained one's would be (a fresh state's zero
Adam moments compress away). Bytes are the process's `rchar` from /proc/self/io (Linux): everything read, page cache or not.
"""

import tempfile
import time

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from udpm_jax import checkpoint, cli, sharding
from udpm_jax import train_step as ts

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON report.")


def _bytes_read() -> int:
  with open("/proc/self/io") as f:
    return int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])


def main(argv):
  del argv
  config = _CONFIG.value
  config.training.batch_size = 8
  mesh = sharding.make_mesh(jax.devices()[:1])
  _, init_fn, _ = ts.build(config, mesh)
  state = init_fn(jax.random.PRNGKey(0))
  # Random values everywhere: a fresh state's zero Adam moments compress to almost nothing, and a
  # trained run's checkpoint holds no such zeros.
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  state = jax.tree.unflatten(
    treedef,
    [
      jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
      for k, x in zip(keys, leaves)
    ],
  )
  with tempfile.TemporaryDirectory() as workdir:
    manager = checkpoint.make_manager(workdir, config)
    checkpoint.save(manager, 1, state, config, force=True)
    checkpoint.finish_pending(manager)
    manager.close()
    target = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
    result = {"config": config.data.name, "state_bytes": checkpoint.tree_nbytes(state)}
    start, t = _bytes_read(), time.time()
    reader = checkpoint.make_manager(workdir, config, read_only=True)
    checkpoint.restore_state(reader, target, 1)
    reader.close()
    result["full_restore_bytes_read"] = _bytes_read() - start
    result["full_restore_s"] = time.time() - t
    start, t = _bytes_read(), time.time()
    checkpoint.restore_params(workdir)
    result["restore_params_bytes_read"] = _bytes_read() - start
    result["restore_params_s"] = time.time() - t
  result["ratio"] = result["restore_params_bytes_read"] / result["full_restore_bytes_read"]
  cli.print_report(result, _OUT.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)

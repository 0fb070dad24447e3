"""One process of a multi-process CPU training run (the test of `test_distributed.py` starts them):
the code path of a TPU pod or a SLURM job — jax.distributed, per-process data, one checkpoint —
with gloo collectives between processes on this machine.

  python tests/distributed_run.py PROCESS_ID NUM_PROCESSES PORT WORKDIR
"""

import sys

import jax


def main(process_id, num_processes, port, workdir):
  if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes, process_id)
  import udpm_jax
  from udpm_jax import train

  config = udpm_jax.configs.get_config("test")
  config.training.update(num_steps=2, ckpt_every=2, sample_every=0, eval_every=0)
  train.train_and_evaluate(config, workdir)
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.device_count()} devices, done")


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

"""One process of a multi-process CPU training run (the test of `test_distributed.py` starts them):
the code path of a TPU pod or a SLURM job — jax.distributed, per-process data, one checkpoint —
with gloo collectives between processes on this machine.

  python tests/distributed_run.py PROCESS_ID NUM_PROCESSES PORT WORKDIR [NUM_STEPS LOG_EVERY]

A run stopped by a signal (udpm_jax.preemption) prints the step it saved and exits with 75.
"""

import sys

import jax


def main(process_id, num_processes, port, workdir, num_steps=2, log_every=100):
  if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes, process_id)
  from absl import logging

  import udpm_jax
  from udpm_jax import preemption, train

  logging.use_absl_handler()  # the metrics lines on stderr, as under the command line
  logging.set_verbosity(logging.INFO)

  config = udpm_jax.configs.get_config("test")
  config.training.update(
    num_steps=num_steps, ckpt_every=num_steps, log_every=log_every, sample_every=0, eval_every=0
  )
  try:
    train.train_and_evaluate(config, workdir)
  except preemption.Preempted as e:
    print(f"process {jax.process_index()}: stopped by {e.signal_name} at step {e.step}", flush=True)
    sys.exit(preemption.EXIT_PREEMPTED)
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.device_count()} devices, done")


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], *map(int, sys.argv[5:]))

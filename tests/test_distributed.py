"""Multi-process training (as on a TPU pod or under SLURM), run as two CPU processes here."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import REPO
from udpm_jax import checkpoint

pytestmark = pytest.mark.slow  # subprocess training runs (see tests/run.sh)


def _start(process_id, num_processes, port, workdir, devices, *extra, stdout=subprocess.PIPE):
  env = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
    "--xla_backend_optimization_level=0",
  }
  script = str(REPO / "tests" / "distributed_run.py")
  args = [sys.executable, script, str(process_id), str(num_processes), str(port), str(workdir)]
  args += [str(a) for a in extra]
  stderr = subprocess.STDOUT if stdout is not subprocess.PIPE else subprocess.PIPE
  return subprocess.Popen(args, env=env, stdout=stdout, stderr=stderr, text=True)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one_and_their_checkpoint_restores_in_one(tmp_path):
  """2 processes × 2 devices (each reading its half of every batch) end with the parameters of
  1 process × 4 devices, and the checkpoint they wrote together restores in this single process
  (a notebook after a pod run): Orbax refuses the saved topology unless given a target."""
  port = _free_port()
  procs = [_start(i, 2, port, tmp_path / "two", devices=2) for i in range(2)]
  procs.append(_start(0, 1, 0, tmp_path / "one", devices=4))
  outputs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "process 0/2: 4 devices, done" in outputs[0][0]
  assert "process 1/2: 4 devices, done" in outputs[1][0]
  assert checkpoint.all_steps(tmp_path / "two") == [2]
  for ema in (False, True):
    _, two = checkpoint.restore_params(tmp_path / "two", ema=ema)
    _, one = checkpoint.restore_params(tmp_path / "one", ema=ema)
    for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_signal_to_one_process_stops_both_at_the_same_saved_step(tmp_path):
  """SIGUSR1 to process 1 only: the flags are exchanged at the next log step, both processes save
  that step together and exit with EXIT_PREEMPTED (75)."""
  import re
  import signal
  import time

  port = _free_port()
  logs = [open(tmp_path / f"log{i}.txt", "w") for i in range(2)]
  procs = [_start(i, 2, port, tmp_path / "run", 2, 40, 2, stdout=logs[i]) for i in range(2)]
  text = lambda i: (tmp_path / f"log{i}.txt").read_text()
  start = time.time()
  while not re.search(r"\] \[2\] d_", text(0)) and time.time() - start < 600:
    assert all(p.poll() is None for p in procs), text(0)[-3000:] + text(1)[-3000:]
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGUSR1)
  codes = [p.wait(timeout=600) for p in procs]
  assert codes == [75, 75], text(0)[-3000:] + text(1)[-3000:]
  stopped = [int(re.search(r"stopped by .* at step (\d+)", text(i)).group(1)) for i in range(2)]
  assert stopped[0] == stopped[1] and stopped[0] % 2 == 0 and 2 <= stopped[0] < 40
  assert "stopped by a signal on another process" in text(0)
  assert "stopped by SIGUSR1" in text(1)
  assert checkpoint.all_steps(tmp_path / "run") == [stopped[0]]

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


def _start(process_id, num_processes, port, workdir, devices):
  env = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
    "--xla_backend_optimization_level=0",
  }
  script = str(REPO / "tests" / "distributed_run.py")
  args = [sys.executable, script, str(process_id), str(num_processes), str(port), str(workdir)]
  return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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

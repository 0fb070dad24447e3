"""Helpers of the tests that train configs/test.py in subprocesses (kill, signal, resume)."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import jax
import numpy as np

from tools import fault_soak
from udpm_jax import checkpoint


def train_cli(workdir, *overrides) -> list[str]:
  """The training command for an 8-step run of configs/test.py checkpointed every 2 steps."""
  return fault_soak.train_command(workdir, 8, 2, *overrides)


subprocess_env = fault_soak.subprocess_env


def tree_digests(workdir) -> dict[str, str]:
  """sha256 of every file under `workdir`, by path."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      p = os.path.join(root, f)
      out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


def signal_when(proc_, predicate, sig=signal.SIGKILL, timeout=600) -> bool:
  """Sends `sig` to the process once `predicate()` holds; False if the process ended first."""
  start = time.time()
  while time.time() - start < timeout:
    if proc_.poll() is not None:
      return False
    if predicate():
      proc_.send_signal(sig)
      proc_.wait(timeout=timeout)
      return True
    time.sleep(0.005)
  raise TimeoutError("the condition to signal the run never happened")


def assert_same_weights(workdir_a, workdir_b) -> None:
  """The raw and the EMA generator weights of the two runs' latest checkpoints are bit-equal."""
  for ema in (False, True):
    _, a = checkpoint.restore_params(workdir_a, ema=ema)
    _, b = checkpoint.restore_params(workdir_b, ema=ema)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(x, y)

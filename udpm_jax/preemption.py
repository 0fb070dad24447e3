"""Stopping a training run cleanly on a signal: finish the step, save it, exit "requeue me".

SIGTERM (a SLURM time limit or preemption, `docker stop`, a spot VM going away), SIGINT (Ctrl-C)
and SIGUSR1 (what `launch/slurm.sbatch` asks SLURM to send shortly before the time limit) only set
a flag; the training loop reads it between steps, saves the step it reached synchronously and
raises `Preempted`, which the command line turns into the exit status `EXIT_PREEMPTED`. The launch
scripts treat that status as "resume me", and the next start continues bit-exactly.

Multi-process runs must stop at the same step on every process. There `jax.distributed` already
listens for SIGTERM and agrees on a step through its coordination service
(`multihost_utils.reached_preemption_sync_point`), so SIGTERM is left to it; SIGINT and SIGUSR1
are agreed on at log steps, where the processes exchange their flags in one small all-gather.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from absl import logging

# sysexits.h EX_TEMPFAIL, "temporary failure, retry": the step was saved and the run should resume.
EXIT_PREEMPTED = 75

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(Exception):
  """Training stopped on a signal after saving the step it reached."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(
      f"Stopped by {signal_name} at step {step}, which is saved; run the same command again to "
      f"resume (exit status {EXIT_PREEMPTED})."
    )
    self.step, self.signal_name = step, signal_name


class StopRequests:
  """A context that turns the stop signals into a flag (and restores the old handlers on exit).

  `received` is the name of the first signal caught, or None. A second SIGINT interrupts at once
  (KeyboardInterrupt), for a user who does not want to wait for the save.
  """

  def __init__(self, signals=STOP_SIGNALS):
    # With jax.distributed, SIGTERM belongs to JAX's preemption notifier (see the module doc).
    self.signals = tuple(s for s in signals if not (s == signal.SIGTERM and _jax_handles_sigterm()))
    self.received: str | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # signal() works only there
      for s in self.signals:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.received == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    if self.received is None:
      self.received = name
      logging.warning("Received %s: finishing this step, then saving it and stopping.", name)

  def should_stop(self, step: int, at_log_step: bool) -> str | None:
    """The signal to stop for at `step`, the same answer on every process; None to go on.

    Single process: the flag, read between steps without touching the devices. Multi-process:
    JAX's SIGTERM sync point at every step, the other signals exchanged at log steps only (the
    exchange is a device collective, and the loop never syncs between log steps).
    """
    if jax.process_count() == 1:
      return self.received
    from jax.experimental import multihost_utils

    if _jax_handles_sigterm() and multihost_utils.reached_preemption_sync_point(step):
      return "SIGTERM"
    if not at_log_step:
      return None
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if np.any(flags):
      return self.received or "a signal on another process"
    return None


def _jax_handles_sigterm() -> bool:
  """Whether JAX's preemption service owns SIGTERM: a multi-process run with the service on
  (`jax_enable_preemption_service`, on by default); otherwise SIGTERM is caught here."""
  return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)

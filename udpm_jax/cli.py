"""Shared pieces of the command-line programs: running one, and writing its reports.

Exit statuses of every command: 0 done; 1 a known error (bad config, data, checkpoint, a full or
read-only workdir), printed as one paragraph; `preemption.EXIT_PREEMPTED` (75) training stopped by
a signal after saving the step it reached, so run the same command again; anything else a bug,
with its traceback.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys

from absl import app, flags, logging

_TRACEBACK = flags.DEFINE_bool(
  "traceback", False, "On a known error, show the Python traceback instead of one paragraph."
)


def known_errors() -> tuple[type[BaseException], ...]:
  """Errors about the user's input or files, which a one-paragraph message explains."""
  from udpm_jax import assets, checkpoint, data, train

  return (
    ValueError,  # bad config values and arguments (data.DataError is one)
    OSError,  # missing, unreadable or unwritable paths
    checkpoint.CheckpointError,
    assets.AssetError,
    data.DataError,
    train.NonFiniteLossError,
  )


def run(main) -> None:
  """`absl.app.run(main)`, with known errors printed as one paragraph and a stop on a signal
  turned into the exit status EXIT_PREEMPTED."""
  from udpm_jax import preemption

  def guarded(argv):
    _silence_closed_loop_errors()
    try:
      return main(argv)
    except preemption.Preempted as e:
      logging.warning("%s", e)
      _quiet_exit(preemption.EXIT_PREEMPTED)
    except known_errors() as e:
      if _TRACEBACK.value:
        raise
      logging.log(logging.DEBUG, "Traceback of the error below:", exc_info=True)
      program = os.path.basename(sys.argv[0]) if sys.argv else "udpm_jax"
      sys.stderr.write(f"{program}: error: {type(e).__name__}: {e}\n")
      sys.stderr.write("(add --traceback for the Python traceback)\n")
      _quiet_exit(1)

  app.run(guarded)


def _silence_closed_loop_errors() -> None:
  """When an Orbax save fails, TensorStore's I/O threads still report their finished writes to the
  save's asyncio loop, which Orbax has closed: each report prints a 'RuntimeError: Event loop is
  closed' traceback (dozens, burying the one message that matters). They go to the debug log."""

  def is_noise(exc) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

  previous_excepthook, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if is_noise(value):
      logging.log(logging.DEBUG, "Ignored after a failed save: %s", value)
    else:
      previous_excepthook(kind, value, tb)

  def unraisablehook(info):
    if is_noise(info.exc_value):
      logging.log(logging.DEBUG, "Ignored after a failed save: %s", info.exc_value)
    else:
      previous_unraisable(info)

  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
  # Orbax's threads log a failed write once per thread, each with a full traceback; one line each
  # is enough beside the error that the command prints.
  std_logging.getLogger("absl").addFilter(_orbax_errors_on_one_line)


def _orbax_errors_on_one_line(record) -> bool:
  if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
    record.exc_info, record.exc_text = None, None
  return True


def _quiet_exit(status: int) -> None:
  """Exits without the log noise of library threads that outlive the error (Orbax's async
  savers report 'Event loop is closed' when the interpreter shuts down under them)."""
  sys.stderr.flush()
  sys.stdout.flush()
  std_logging.disable(std_logging.CRITICAL)
  os._exit(status)


def print_report(result: dict, out: str | None = None) -> None:
  """Prints a JSON report and, when `out` is given, writes the same text to that file."""
  print(json.dumps(result, indent=2))
  if out:
    write_report(result, out)


def write_report(result: dict, out: str) -> None:
  """Writes a JSON report atomically, so that `out` is never half written."""
  from udpm_jax import files

  files.atomic_write_text(out, json.dumps(result, indent=2))

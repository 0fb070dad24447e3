"""Atomic file writes: the one way this package replaces a file.

The content goes to a hidden temporary file beside the target, which is then renamed over it, so a
kill mid-write leaves the old file (or none), never a truncated one. The temporary name carries the
process id, so two processes writing the same path cannot interleave their bytes. Paths may be
local or any etils.epath location.
"""

from __future__ import annotations

import os
from typing import IO, Callable

from etils import epath


def atomic_write(path, write: Callable[[IO[bytes]], None]) -> None:
  """Calls `write(fh)` on a binary file handle, then moves the result to `path`."""
  path = epath.Path(path)
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
  try:
    with tmp.open("wb") as fh:
      write(fh)
    tmp.replace(path)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def atomic_write_bytes(path, data: bytes) -> None:
  atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))

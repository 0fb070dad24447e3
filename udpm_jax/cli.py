"""Shared pieces of the command-line programs."""

from __future__ import annotations

import json
import os


def print_report(result: dict, out: str | None = None) -> None:
  """Prints a JSON report and, when `out` is given, writes the same text to that file."""
  print(json.dumps(result, indent=2))
  if out:
    write_report(result, out)


def write_report(result: dict, out: str) -> None:
  """Writes a JSON report through a temporary file, so that `out` is never half written."""
  tmp = f"{out}.tmp"
  with open(tmp, "w") as f:
    f.write(json.dumps(result, indent=2))
  os.replace(tmp, out)

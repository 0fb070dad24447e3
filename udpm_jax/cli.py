"""Shared pieces of the command-line programs."""

from __future__ import annotations

import json


def print_report(result: dict, out: str | None = None) -> None:
  """Prints a JSON report and, when `out` is given, writes the same text to that file."""
  text = json.dumps(result, indent=2)
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text)

"""The result lines of a benchmark plan: JSON on stdout, copied to an `--output` file as they come."""

from __future__ import annotations

import json
import os
from typing import Optional, TextIO


class Emitter:
  """Call with a dict: prints it as one JSON line (flushed), appends it to `path` when one is
  given (created with its folder; flushed per line, so a plan cut off keeps what it printed) and
  keeps it in `lines`. `close()` closes the file."""

  def __init__(self, path: Optional[str] = None):
    self.lines: list[dict] = []
    self._out: Optional[TextIO] = None
    if path:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self._out = open(path, "w", encoding="utf-8")

  def __call__(self, line: dict) -> None:
    self.lines.append(line)
    text = json.dumps(line)
    print(text, flush=True)
    if self._out:
      self._out.write(text + "\n")
      self._out.flush()

  def close(self) -> None:
    if self._out:
      self._out.close()
      self._out = None

"""Where t5lite's own gin files are: the checkout's gin/ or the installed share/t5lite/gin."""

from __future__ import annotations

import os
import sys
from typing import Optional


def gin_dir() -> Optional[str]:
  """The folder holding models/, runs/ and experiments/, or None if not found."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for candidate in (
    os.path.join(here, "gin"),  # a checkout or an editable install
    os.path.join(sys.prefix, "share", "t5lite", "gin"),  # a regular install
  ):
    if os.path.isdir(os.path.join(candidate, "runs")):
      return candidate
  return None

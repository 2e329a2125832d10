"""The checks every optimizer factory runs on the settings it shares with the others.

Each optimizer names its settings by its gin binding (`adamw.adamw.learning_rate`),
so a bad value in a gin file is reported where it was written.
"""

from __future__ import annotations

from typing import Any, Optional

from t5lite import checks


def check_learning_rate(name: str, value: Any) -> Any:
  """A required learning rate: a schedule (step -> lr) or a finite float > 0.

  Raises:
    ValueError: None; checks.SettingError (a ValueError) for a number that is
      not > 0, NaN, infinite, a bool or a string, naming `name`.
  """
  if value is None:
    raise ValueError("learning_rate is required (a float or a schedule).")
  return checks.check_rate(name, value)


def check_clipping(name: str, value: Optional[float]) -> Optional[float]:
  """A clipping threshold: a finite float > 0, or None for no clipping.

  Raises:
    checks.SettingError (a ValueError): not > 0, NaN, infinite, a bool or a
      string, naming `name`.
  """
  return checks.check_float(name, value, minimum=0.0, min_open=True, allow_none=True, hint=" (None: no clipping)")

"""Checks for the numbers a user sets (gin macros, keyword arguments, flags).

Each check returns the value normalised (an int, a float) or raises an error
that names the setting with its value and the valid range, e.g.
`NUM_DEVICES=16 must be None or an integer in [1, 8]`. Call them where a
setting is read (a config's `__post_init__`, the top of a factory), with the
name the user typed: the gin macro where there is one ('BATCH_SIZE'), else
the gin binding ('adafactor.decay_rate').

The rules: a bool is not a number; a float is not an integer (8.0 included);
a string is neither (gin keeps quotes: `--gin.BATCH_SIZE='8'` is a string);
NaN and infinity are never valid.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Optional

import numpy as np


class SettingError(ValueError):
  """A setting outside its valid range."""


class SettingTypeError(SettingError, TypeError):
  """A setting of the wrong type (a bool, float or string where an integer is needed, ...).

  Also a TypeError, so code that expects the usual exception for a wrong type
  catches it; also a ValueError, so the entry points report it as a bad value."""


def _bounds(minimum: Optional[float], maximum: Optional[float], min_open: bool, max_open: bool) -> str:
  if minimum is not None and maximum is not None:
    return f" in {'(' if min_open else '['}{minimum}, {maximum}{')' if max_open else ']'}"
  if minimum is not None:
    return f" {'>' if min_open else '>='} {minimum}"
  if maximum is not None:
    return f" {'<' if max_open else '<='} {maximum}"
  return ""


def _valid(kind: str, bounds: str, allow_none: bool, also: tuple) -> str:
  alternatives = (["None"] if allow_none else []) + [repr(v) for v in also]
  return " or ".join(alternatives + [f"{kind}{bounds}"])


def _type_note(value: Any) -> str:
  if isinstance(value, (bool, np.bool_)):
    return ", not a bool"
  if isinstance(value, str):
    return ", not a string (write the number without quotes)"
  return f", not a {type(value).__name__}"


def check_int(
  name: str,
  value: Any,
  *,
  minimum: Optional[int] = None,
  maximum: Optional[int] = None,
  allow_none: bool = False,
  also: tuple = (),
  hint: str = "",
) -> Optional[int]:
  """`value` as an int in [minimum, maximum] (either bound optional).

  Args:
    name: the setting as the user sets it ('BATCH_SIZE').
    value: the value to check; Python and numpy integers are accepted.
    minimum, maximum: inclusive bounds (None: unbounded).
    allow_none: None is valid (and returned).
    also: other valid values outside the range (-1 for 'all devices left').
    hint: appended to the message, e.g. ' (0: never)'.

  Returns:
    The value as a Python int (or None).

  Raises:
    SettingTypeError: a bool, a float (also 8.0, NaN, inf), a string or
      anything else that is not an integer.
    SettingError: an integer outside the range.
  """
  if value is None and allow_none:
    return None
  valid = _valid("an integer", _bounds(minimum, maximum, False, False), allow_none, also)
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise SettingTypeError(f"{name}={value!r} must be {valid}{_type_note(value)}{hint}")
  out = int(value)
  if out in also:
    return out
  if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
    raise SettingError(f"{name}={value!r} must be {valid}{hint}")
  return out


def check_float(
  name: str,
  value: Any,
  *,
  minimum: Optional[float] = None,
  maximum: Optional[float] = None,
  min_open: bool = False,
  max_open: bool = False,
  allow_none: bool = False,
  hint: str = "",
) -> Optional[float]:
  """`value` as a finite float in the range (integers are numbers too).

  Args:
    name: the setting as the user sets it ('LEARNING_RATE', 'adafactor.decay_rate').
    value: the value to check.
    minimum, maximum: bounds (None: unbounded); inclusive unless `min_open` /
      `max_open`.
    allow_none: None is valid (and returned).
    hint: appended to the message.

  Returns:
    The value as a Python float (or None).

  Raises:
    SettingTypeError: a bool, a string or anything that is not a real number.
    SettingError: NaN, infinity or a number outside the range.
  """
  if value is None and allow_none:
    return None
  valid = _valid("a finite number", _bounds(minimum, maximum, min_open, max_open), allow_none, ())
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise SettingTypeError(f"{name}={value!r} must be {valid}{_type_note(value)}{hint}")
  out = float(value)
  ok = math.isfinite(out)
  if minimum is not None:
    ok = ok and (out > minimum if min_open else out >= minimum)
  if maximum is not None:
    ok = ok and (out < maximum if max_open else out <= maximum)
  if not ok:
    raise SettingError(f"{name}={value!r} must be {valid}{hint}")
  return out


def check_lengths(name: str, value: Any, *, minimum: int = 1) -> dict[str, int]:
  """A {feature: length} mapping such as TASK_FEATURE_LENGTHS, each length an int >= minimum.

  Raises:
    SettingTypeError: not a mapping, a key that is not a string, or a length
      that is not an integer.
    SettingError: a length below `minimum`.
  """
  if not isinstance(value, Mapping) or not value:
    raise SettingTypeError(
      f"{name}={value!r} must be a non-empty dict of feature lengths, e.g. {{'inputs': 512, 'targets': 114}}"
    )
  out = {}
  for key, length in value.items():
    if not isinstance(key, str):
      raise SettingTypeError(f"{name}={value!r}: the feature names must be strings, not {key!r}")
    out[key] = check_int(f"{name}[{key!r}]", length, minimum=minimum)
  return out


def check_rate(name: str, value: Any, *, minimum: float = 0.0, min_open: bool = True, allow_none: bool = False) -> Any:
  """A learning rate or decay coefficient: a schedule (any callable step -> value,
  returned as is) or a finite number > minimum (>= with `min_open=False`).

  Raises:
    SettingTypeError, SettingError: as `check_float`, for a value that is not
      callable.
  """
  if callable(value):
    return value
  try:
    return check_float(name, value, minimum=minimum, min_open=min_open, allow_none=allow_none)
  except SettingError as e:
    raise type(e)(f"{e} (or a schedule: step -> value)") from None

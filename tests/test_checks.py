"""Tests for t5lite/checks.py: boundary values, types, NaN and infinity, and the messages."""

import math

import numpy as np
import pytest

from t5lite import checks


def _message(fn, *args, **kwargs) -> str:
  with pytest.raises(ValueError) as e:
    fn(*args, **kwargs)
  return str(e.value)


def test_check_int_accepts_integers_in_range_and_returns_python_ints():
  assert checks.check_int("BATCH_SIZE", 1, minimum=1) == 1
  assert checks.check_int("NUM_DEVICES", 8, minimum=1, maximum=8) == 8
  out = checks.check_int("SEED", np.int64(7), minimum=0)
  assert out == 7 and type(out) is int
  assert checks.check_int("NUM_DEVICES", None, minimum=1, allow_none=True) is None
  assert checks.check_int("DATA_PARALLELISM", -1, minimum=1, also=(-1,)) == -1
  assert checks.check_int("X", -(10**12)) == -(10**12)  # no bounds: any integer


@pytest.mark.parametrize(
  "value, message",
  [
    (0, "BATCH_SIZE=0 must be an integer >= 1"),
    (-1, "BATCH_SIZE=-1 must be an integer >= 1"),
    (True, "BATCH_SIZE=True must be an integer >= 1, not a bool"),
    (np.bool_(True), "BATCH_SIZE=np.True_ must be an integer >= 1, not a bool"),
    (2.5, "BATCH_SIZE=2.5 must be an integer >= 1, not a float"),
    (8.0, "BATCH_SIZE=8.0 must be an integer >= 1, not a float"),
    (math.nan, "BATCH_SIZE=nan must be an integer >= 1, not a float"),
    (math.inf, "BATCH_SIZE=inf must be an integer >= 1, not a float"),
    ("8", "BATCH_SIZE='8' must be an integer >= 1, not a string (write the number without quotes)"),
    (None, "BATCH_SIZE=None must be an integer >= 1, not a NoneType"),
  ],
)
def test_check_int_rejects(value, message):
  assert _message(checks.check_int, "BATCH_SIZE", value, minimum=1) == message


def test_check_int_range_alternatives_and_hint_in_message():
  assert (
    _message(checks.check_int, "NUM_DEVICES", 16, minimum=1, maximum=8, allow_none=True, hint=" (None: all 8 devices)")
    == "NUM_DEVICES=16 must be None or an integer in [1, 8] (None: all 8 devices)"
  )
  assert _message(checks.check_int, "NUM_DEVICES", 0, minimum=1, maximum=8, allow_none=True) == (
    "NUM_DEVICES=0 must be None or an integer in [1, 8]"
  )
  assert _message(checks.check_int, "DATA_PARALLELISM", 0, minimum=1, also=(-1,)) == (
    "DATA_PARALLELISM=0 must be -1 or an integer >= 1"
  )
  assert _message(checks.check_int, "X", 9, maximum=8) == "X=9 must be an integer <= 8"


def test_wrong_types_are_type_errors_and_value_errors():
  """A wrong type is a TypeError (as Python code expects) and a ValueError (what the entry points report)."""
  with pytest.raises(TypeError):
    checks.check_int("X", "8")
  with pytest.raises(checks.SettingTypeError):
    checks.check_float("X", True)
  with pytest.raises(ValueError):
    checks.check_float("X", "0.1")
  with pytest.raises(checks.SettingError) as e:
    checks.check_int("X", 0, minimum=1)
  assert not isinstance(e.value, TypeError)  # a range error is not a type error


def test_check_float_accepts_numbers_in_range_and_returns_python_floats():
  out = checks.check_float("LEARNING_RATE", 1, minimum=0.0, min_open=True)
  assert out == 1.0 and type(out) is float
  assert checks.check_float("decay_rate", 1.0, minimum=0.0, maximum=1.0, min_open=True) == 1.0
  assert checks.check_float("dropout_rate", 0.0, minimum=0.0, maximum=1.0, max_open=True) == 0.0
  assert checks.check_float("eps", np.float32(0.5), minimum=0.0) == 0.5
  assert checks.check_float("clip", None, minimum=0.0, allow_none=True) is None


@pytest.mark.parametrize(
  "value, message",
  [
    (0, "decay_rate=0 must be a finite number in (0.0, 1.0]"),
    (0.0, "decay_rate=0.0 must be a finite number in (0.0, 1.0]"),
    (-1, "decay_rate=-1 must be a finite number in (0.0, 1.0]"),
    (1.0000001, "decay_rate=1.0000001 must be a finite number in (0.0, 1.0]"),
    (math.nan, "decay_rate=nan must be a finite number in (0.0, 1.0]"),
    (math.inf, "decay_rate=inf must be a finite number in (0.0, 1.0]"),
    (True, "decay_rate=True must be a finite number in (0.0, 1.0], not a bool"),
    ("0.8", "decay_rate='0.8' must be a finite number in (0.0, 1.0], not a string (write the number without quotes)"),
    ([0.8], "decay_rate=[0.8] must be a finite number in (0.0, 1.0], not a list"),
  ],
)
def test_check_float_rejects(value, message):
  assert _message(checks.check_float, "decay_rate", value, minimum=0.0, maximum=1.0, min_open=True) == message


def test_check_float_open_and_closed_ends():
  assert _message(checks.check_float, "p", 1.0, minimum=0.0, maximum=1.0, max_open=True) == (
    "p=1.0 must be a finite number in [0.0, 1.0)"
  )
  assert _message(checks.check_float, "lr", 0.0, minimum=0.0, min_open=True) == "lr=0.0 must be a finite number > 0.0"
  assert _message(checks.check_float, "eps", -1e-9, minimum=0.0) == "eps=-1e-09 must be a finite number >= 0.0"
  assert _message(checks.check_float, "x", -math.inf) == "x=-inf must be a finite number"  # no bounds: finite


def test_check_rate_takes_schedules_or_positive_numbers():
  def schedule(step):
    return 0.1 * step

  assert checks.check_rate("lr", schedule) is schedule
  assert checks.check_rate("lr", 3) == 3.0
  assert checks.check_rate("wd", 0.0, min_open=False) == 0.0
  assert (
    _message(checks.check_rate, "lr", -0.1) == "lr=-0.1 must be a finite number > 0.0 (or a schedule: step -> value)"
  )
  with pytest.raises(TypeError, match="not a string"):
    checks.check_rate("lr", "0.1")


def test_check_lengths():
  assert checks.check_lengths("TASK_FEATURE_LENGTHS", {"inputs": np.int32(8), "targets": 4}) == {
    "inputs": 8,
    "targets": 4,
  }
  assert _message(checks.check_lengths, "TASK_FEATURE_LENGTHS", {"inputs": 0}) == (
    "TASK_FEATURE_LENGTHS['inputs']=0 must be an integer >= 1"
  )
  assert _message(checks.check_lengths, "TASK_FEATURE_LENGTHS", {"targets": 2.5}) == (
    "TASK_FEATURE_LENGTHS['targets']=2.5 must be an integer >= 1, not a float"
  )
  assert _message(checks.check_lengths, "TASK_FEATURE_LENGTHS", 512).startswith(
    "TASK_FEATURE_LENGTHS=512 must be a non-empty dict of feature lengths"
  )
  assert _message(checks.check_lengths, "TASK_FEATURE_LENGTHS", {}).startswith("TASK_FEATURE_LENGTHS={} must be")
  assert "feature names must be strings" in _message(checks.check_lengths, "TASK_FEATURE_LENGTHS", {1: 8})

"""Tests for t5lite.optim.schedules: exact values at chosen steps and argument checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite.optim import schedules


def _at(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_rsqrt_values():
  s = schedules.rsqrt(1.0, 10000)
  np.testing.assert_allclose(_at(s, [0, 5000, 10000, 40000]), [0.01, 0.01, 0.01, 0.005], rtol=1e-6)
  np.testing.assert_allclose(float(schedules.rsqrt(2.0, 100)(400)), 0.1, rtol=1e-6)


def test_linear_warmup_values():
  s = schedules.linear_warmup(1.0, 10)
  np.testing.assert_allclose(_at(s, [0, 5, 10, 1000]), [0.0, 0.5, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(_at(schedules.linear_warmup(0.3, 0), [0, 7]), [0.3, 0.3], rtol=1e-6)


def test_linear_decay_values():
  s = schedules.linear_decay(1.0, decay_steps=110, end_value=0.1, warmup_steps=10)
  np.testing.assert_allclose(_at(s, [0, 5, 10, 60, 110, 500]), [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-5)
  s = schedules.linear_decay(2.0, decay_steps=4)
  np.testing.assert_allclose(_at(s, [0, 1, 4, 9]), [2.0, 1.5, 0.0, 0.0], atol=1e-7)


def test_cosine_decay_values():
  s = schedules.cosine_decay(1.0, decay_steps=100)
  np.testing.assert_allclose(_at(s, [0, 50, 100, 200]), [1.0, 0.5, 0.0, 0.0], atol=1e-6)
  s = schedules.cosine_decay(1.0, decay_steps=110, end_value=0.2, warmup_steps=10)
  # warmup 0 -> 1 over 10 steps, then cosine over 100 steps down to 0.2.
  expected_60 = 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 50 / 100))
  np.testing.assert_allclose(_at(s, [0, 5, 10, 60, 110, 300]), [0.0, 0.5, 1.0, expected_60, 0.2, 0.2], rtol=1e-5)


def test_triangular_values():
  s = schedules.triangular(0.1, 1.1, step_size=4)
  np.testing.assert_allclose(_at(s, [0, 2, 4, 6, 8, 10, 12, 16]), [0.1, 0.6, 1.1, 0.6, 0.1, 0.6, 1.1, 0.1], rtol=1e-6)


def test_constant_value():
  np.testing.assert_allclose(_at(schedules.constant(0.25), [0, 10**6]), [0.25, 0.25])


def test_schedules_jit_on_traced_step():
  for s in [
    schedules.rsqrt(1.0, 100),
    schedules.linear_warmup(1.0, 10),
    schedules.linear_decay(1.0, 20, warmup_steps=5),
    schedules.cosine_decay(1.0, 20, warmup_steps=5),
    schedules.triangular(0.0, 1.0, 3),
    schedules.constant(1.0),
  ]:
    got = jax.jit(s)(jnp.asarray(7, jnp.int32))
    np.testing.assert_allclose(float(got), float(s(7)), rtol=1e-6)


def test_create_schedule_by_name():
  s = schedules.create_schedule("rsqrt", base_learning_rate=1.0, warmup_steps=10000)
  np.testing.assert_allclose(float(s(40000)), 0.005, rtol=1e-6)
  s = schedules.create_schedule("triangular", base_lr=0.0, max_lr=1.0, step_size=2)
  np.testing.assert_allclose(float(s(1)), 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="valid names: constant, cosine_decay, linear_decay"):
    schedules.create_schedule("exponential", value=1.0)


@pytest.mark.parametrize(
  "build, message",
  [
    (lambda: schedules.rsqrt(1.0, 0), "warmup_steps=0 must be an integer >= 1"),
    (lambda: schedules.linear_warmup(1.0, -1), "warmup_steps=-1 must be an integer >= 0"),
    (lambda: schedules.triangular(0.0, 1.0, 0), "step_size=0 must be an integer >= 1"),
    (lambda: schedules.triangular(1.0, 0.5, 2), "max_lr=0.5 must be >= base_lr=1.0"),
    (lambda: schedules.cosine_decay(1.0, decay_steps=10, warmup_steps=10), "decay_steps"),
    (lambda: schedules.linear_decay(-1.0, decay_steps=10), r"peak_value=-1.0 must be a finite number > 0"),
  ],
)
def test_argument_validation(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_non_integer_steps_rejected():
  with pytest.raises(TypeError, match="warmup_steps=2.5 must be an integer >= 0, not a float"):
    schedules.linear_warmup(1.0, 2.5)


@pytest.mark.parametrize(
  "build, message",
  [
    (lambda: schedules.rsqrt(0.0, 100), "schedules.rsqrt.base_learning_rate=0.0 must be a finite number > 0.0"),
    (lambda: schedules.rsqrt(math.inf, 100), "schedules.rsqrt.base_learning_rate=inf must be a finite number > 0.0"),
    (lambda: schedules.constant(math.nan), "schedules.constant.value=nan must be a finite number > 0.0"),
    (lambda: schedules.constant(True), "schedules.constant.value=True must be a finite number > 0.0, not a bool"),
    (lambda: schedules.constant("0.1"), "schedules.constant.value='0.1' must be a finite number > 0.0, not a string"),
    (lambda: schedules.rsqrt(1.0, True), "schedules.rsqrt.warmup_steps=True must be an integer >= 1, not a bool"),
    (
      lambda: schedules.linear_warmup(1.0, 10, init_value=-0.1),
      "schedules.linear_warmup.init_value=-0.1 must be a finite number >= 0.0",
    ),
    (
      lambda: schedules.linear_decay(1.0, decay_steps=0),
      "schedules.linear_decay.decay_steps=0 must be an integer >= 1",
    ),
    (lambda: schedules.cosine_decay(1.0, 10, end_value=-1.0), "schedules.cosine_decay.end_value=-1.0 must be"),
    (lambda: schedules.cosine_decay(1.0, 10, exponent=0.0), "schedules.cosine_decay.exponent=0.0 must be"),
    (lambda: schedules.triangular(-0.1, 1.0, 2), "schedules.triangular.base_lr=-0.1 must be a finite number >= 0.0"),
    (lambda: schedules.triangular(0.0, 1.0, 2.0), "schedules.triangular.step_size=2.0 must be an integer >= 1"),
  ],
)
def test_rates_and_steps_are_checked(build, message):
  """Learning rates are finite and > 0 (initial and end values >= 0); steps are
  integers, not bools or floats; messages name the gin binding."""
  with pytest.raises(ValueError) as e:
    build()
  assert str(e.value).startswith(message), str(e.value)

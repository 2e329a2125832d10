"""Learning-rate schedules for t5lite, each an `optax.Schedule` (step -> lr, jit-friendly).

T5's inverse-square-root schedule, linear warmup, linear / cosine decay with
optional warmup, Smith's triangular cyclical schedule and a constant, plus
`create_schedule(name, **kwargs)` for selecting one from configuration.
Arguments are checked when the schedule is built so bad configs fail early
(t5lite.checks: a peak or base rate must be a finite number > 0, an initial or
end rate >= 0, step counts integers; errors name the gin binding).
Where optax has the schedule (linear, cosine, joins) we use it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax

from t5lite import checks


def _steps(schedule: str, name: str, value: object, *, minimum: int) -> int:
  """A step count as an int >= minimum, named by its gin binding (schedules.rsqrt.warmup_steps)."""
  return checks.check_int(f"schedules.{schedule}.{name}", value, minimum=minimum)


def _rate(schedule: str, name: str, value: object, *, positive: bool = True) -> float:
  """A learning rate as a finite float, > 0 (`positive`) or >= 0."""
  return checks.check_float(f"schedules.{schedule}.{name}", value, minimum=0.0, min_open=positive)


def constant(value: float) -> optax.Schedule:
  """lr(step) = value."""
  return optax.constant_schedule(_rate("constant", "value", value))


def rsqrt(base_learning_rate: float = 1.0, warmup_steps: int = 10000) -> optax.Schedule:
  """T5's schedule: lr(step) = base / sqrt(max(step, warmup_steps)).

  The "warmup" is a constant plateau at base / sqrt(warmup_steps), followed by
  inverse-square-root decay.  warmup_steps must be >= 1 (0 would give an
  infinite rate at step 0).
  """
  base = _rate("rsqrt", "base_learning_rate", base_learning_rate)
  warmup = _steps("rsqrt", "warmup_steps", warmup_steps, minimum=1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return base * jnp.reciprocal(jnp.sqrt(jnp.maximum(step, float(warmup))))

  return schedule


def linear_warmup(peak_value: float, warmup_steps: int, init_value: float = 0.0) -> optax.Schedule:
  """Linear ramp from init_value (step 0) to peak_value (step warmup_steps), then constant."""
  peak = _rate("linear_warmup", "peak_value", peak_value)
  init = _rate("linear_warmup", "init_value", init_value, positive=False)
  warmup = _steps("linear_warmup", "warmup_steps", warmup_steps, minimum=0)
  if warmup == 0:
    return optax.constant_schedule(peak)
  return optax.linear_schedule(init_value=init, end_value=peak, transition_steps=warmup)


def _check_decay_args(schedule: str, decay_steps: int, warmup_steps: int) -> tuple[int, int]:
  warmup = _steps(schedule, "warmup_steps", warmup_steps, minimum=0)
  decay = _steps(schedule, "decay_steps", decay_steps, minimum=1)
  if decay <= warmup:
    raise checks.SettingError(
      f"schedules.{schedule}.decay_steps={decay} (the total length, warmup included) must be > warmup_steps={warmup}."
    )
  return decay, warmup


def linear_decay(
  peak_value: float,
  decay_steps: int,
  end_value: float = 0.0,
  warmup_steps: int = 0,
  init_value: float = 0.0,
) -> optax.Schedule:
  """Optional linear warmup init_value -> peak_value over warmup_steps, then linear
  decay to end_value, reached at step decay_steps (the total length, warmup
  included, as in optax.warmup_cosine_decay_schedule); end_value afterwards."""
  peak = _rate("linear_decay", "peak_value", peak_value)
  end = _rate("linear_decay", "end_value", end_value, positive=False)
  init = _rate("linear_decay", "init_value", init_value, positive=False)
  decay, warmup = _check_decay_args("linear_decay", decay_steps, warmup_steps)
  decay_part = optax.linear_schedule(init_value=peak, end_value=end, transition_steps=decay - warmup)
  if warmup == 0:
    return decay_part
  warmup_part = optax.linear_schedule(init_value=init, end_value=peak, transition_steps=warmup)
  return optax.join_schedules([warmup_part, decay_part], [warmup])


def cosine_decay(
  peak_value: float,
  decay_steps: int,
  end_value: float = 0.0,
  warmup_steps: int = 0,
  init_value: float = 0.0,
  exponent: float = 1.0,
) -> optax.Schedule:
  """Optional linear warmup init_value -> peak_value over warmup_steps, then cosine
  decay to end_value, reached at step decay_steps (total length, warmup included);
  end_value afterwards."""
  peak = _rate("cosine_decay", "peak_value", peak_value)
  end = _rate("cosine_decay", "end_value", end_value, positive=False)
  init = _rate("cosine_decay", "init_value", init_value, positive=False)
  exponent = checks.check_float("schedules.cosine_decay.exponent", exponent, minimum=0.0, min_open=True)
  decay, warmup = _check_decay_args("cosine_decay", decay_steps, warmup_steps)
  if warmup == 0:
    alpha = 0.0 if peak == 0.0 else end / peak
    return optax.cosine_decay_schedule(init_value=peak, decay_steps=decay, alpha=alpha, exponent=exponent)
  return optax.warmup_cosine_decay_schedule(
    init_value=init,
    peak_value=peak,
    warmup_steps=warmup,
    decay_steps=decay,
    end_value=end,
    exponent=exponent,
  )


def triangular(base_lr: float, max_lr: float, step_size: int) -> optax.Schedule:
  """Cyclical 'triangular' policy (Smith 2017, "Cyclical Learning Rates").

  The rate rises linearly from base_lr (step 0) to max_lr (step step_size) and
  falls back to base_lr (step 2 * step_size), repeating with period 2 * step_size:
    cycle = floor(1 + step / (2 step_size)); x = |step / step_size - 2 cycle + 1|
    lr = base_lr + (max_lr - base_lr) * max(0, 1 - x)
  """
  base = _rate("triangular", "base_lr", base_lr, positive=False)
  top = _rate("triangular", "max_lr", max_lr)
  if top < base:
    raise checks.SettingError(f"schedules.triangular.max_lr={top} must be >= base_lr={base}.")
  size = _steps("triangular", "step_size", step_size, minimum=1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    cycle = jnp.floor(1.0 + step / (2.0 * size))
    x = jnp.abs(step / size - 2.0 * cycle + 1.0)
    return base + (top - base) * jnp.maximum(0.0, 1.0 - x)

  return schedule


SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
  "constant": constant,
  "rsqrt": rsqrt,
  "linear_warmup": linear_warmup,
  "linear_decay": linear_decay,
  "cosine_decay": cosine_decay,
  "triangular": triangular,
}


def create_schedule(name: str, **kwargs) -> optax.Schedule:
  """Builds the schedule called `name` (see SCHEDULES) with the given keyword arguments."""
  try:
    factory = SCHEDULES[name]
  except (KeyError, TypeError):
    raise ValueError(f"Unknown schedule {name!r}; valid names: {', '.join(sorted(SCHEDULES))}.") from None
  return factory(**kwargs)

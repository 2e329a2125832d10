"""AdamW for t5lite: a thin wrapper over `optax.adamw`.

It exists so AdamW is configured like `adafactor` (keyword arguments, float or
schedule learning rate) and can optionally clip the global gradient norm first.
The math is optax's; the only code here is argument checking and chaining.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import optax

from t5lite import checks
from t5lite.optim import settings, state_axes

PyTree = Any
ScalarOrSchedule = Union[float, optax.Schedule]


def adamw(
  learning_rate: ScalarOrSchedule,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: ScalarOrSchedule = 1e-4,
  global_norm_clip: Optional[float] = None,
  weight_decay_mask: Optional[Any] = None,
) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay, as optax defines it: decay is scaled by lr).

  Args:
    learning_rate: a float or a schedule (step -> lr).
    b1, b2, eps: Adam's moment decays and denominator epsilon.
    weight_decay: decoupled weight decay coefficient (float or schedule).
    global_norm_clip: if set, gradients are first rescaled so their global L2
      norm is at most this value.
    weight_decay_mask: optional optax mask (tree of bools or callable) selecting
      the params that are decayed.

  Raises:
    ValueError (checks.SettingError): learning_rate not > 0, b1 or b2
      outside [0, 1), eps or weight_decay < 0, global_norm_clip not > 0 (or
      None); NaN, infinity, bools and strings everywhere.
  """
  name = "adamw.adamw."  # errors name the gin binding
  learning_rate = settings.check_learning_rate(name + "learning_rate", learning_rate)
  b1 = checks.check_float(name + "b1", b1, minimum=0.0, maximum=1.0, max_open=True)
  b2 = checks.check_float(name + "b2", b2, minimum=0.0, maximum=1.0, max_open=True)
  eps = checks.check_float(name + "eps", eps, minimum=0.0)
  weight_decay = checks.check_rate(name + "weight_decay", weight_decay, min_open=False)
  global_norm_clip = settings.check_clipping(name + "global_norm_clip", global_norm_clip)

  core = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask)
  if global_norm_clip is None:
    return core
  return optax.chain(optax.clip_by_global_norm(global_norm_clip), core)


def adamw_state_logical_axes(opt_state: PyTree, params: PyTree, param_logical_axes: Optional[PyTree]) -> PyTree:
  """Axis names for every leaf of an `adamw` state: mu/nu take their parameter's
  axes, counters get () (`state_axes.opt_state_logical_axes`, which needs no
  rule for AdamW's state)."""
  return state_axes.opt_state_logical_axes(opt_state, params, param_logical_axes)

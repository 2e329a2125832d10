"""Optimizers, learning-rate schedules and the logical axes of optimizer states.

Submodules (import names from them, e.g.
`from t5lite.optim.adafactor import adafactor`):
  adafactor   - Adafactor with T5 defaults and layer-aware factoring; registers
                how its factored statistics are named.
  adamw       - a thin wrapper over optax.adamw (+ optional global-norm clipping).
  schedules   - step -> learning-rate functions and `create_schedule(name, ...)`.
  state_axes  - `opt_state_logical_axes`: logical axis names for any optax state,
                so that it is sharded like the parameters.
  settings    - the checks the optimizers share (learning rate, clipping).
The package does not re-export the `adafactor` / `adamw` functions so that the
names `t5lite.optim.adafactor` and `t5lite.optim.adamw` always mean the modules.
"""

from t5lite.optim import adafactor, adamw, schedules, settings, state_axes

__all__ = ["adafactor", "adamw", "schedules", "settings", "state_axes"]

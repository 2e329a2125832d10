"""Optimizers and learning-rate schedules for t5lite.

Submodules (import names from them, e.g.
`from t5lite.optim.adafactor import adafactor`):
  adafactor  - Adafactor with T5 defaults and layer-aware factoring, plus
               `adafactor_state_logical_axes` to shard its state like the params.
  adamw      - a thin wrapper over optax.adamw (+ optional global-norm clipping).
  schedules  - step -> learning-rate functions and `create_schedule(name, ...)`.
The package does not re-export the `adafactor` / `adamw` functions so that the
names `t5lite.optim.adafactor` and `t5lite.optim.adamw` always mean the modules.
"""

from t5lite.optim import adafactor, adamw, schedules

__all__ = ["adafactor", "adamw", "schedules"]

"""Mesh axis sizes from DATA/FSDP/MODEL/EXPERT_PARALLELISM and a device count.

Fills in the one size that may be -1 ('all the devices left') or refuses the
sizes with a message that names what would fit. Plain Python, no jax: the
launchers check a job with it before anything starts, and `partitioning`
builds its meshes from it.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

from t5lite import checks

AXES = ("data", "fsdp", "model", "expert")


def divisors(n: int) -> list[int]:
  """The positive divisors of `n`, ascending: the device counts a mesh of `n` devices can split into."""
  return [d for d in range(1, n + 1) if n % d == 0]


def plan_mesh(
  num_devices: int,
  data: int = -1,
  fsdp: int = 1,
  model: int = 1,
  expert: int = 1,
  *,
  where: Optional[str] = "the job",
) -> dict[str, int]:
  """Resolves the mesh sizes for `num_devices` devices: {'data': ..., 'fsdp': ..., 'model': ..., 'expert': ...}.

  Args:
    num_devices: how many devices the mesh spans (all processes together).
    data, fsdp, model, expert: DATA/FSDP/MODEL/EXPERT_PARALLELISM, each an
      integer in [1, num_devices] or -1 (at most one): the devices the others
      leave. The batch is split over data x fsdp x expert; a mixture of
      experts' experts over expert.
    where: the hardware, as the messages name it ("TPU slice v4-32 (4 hosts
      x 4 chips)"); None names only the device count.

  Returns:
    The four sizes, whose product is `num_devices`.

  Raises:
    SettingError / SettingTypeError (ValueErrors): a size that is not -1 or an
      integer in [1, num_devices].
    ValueError: two sizes of -1, or sizes that do not multiply to (or, with a
      -1, divide) `num_devices`; the message lists valid choices.
  """
  hint = f" (-1: all devices left; there are {num_devices} devices)"
  sizes = {
    axis: checks.check_int(f"{axis.upper()}_PARALLELISM", value, minimum=1, maximum=num_devices, also=(-1,), hint=hint)
    for axis, value in zip(AXES, (data, fsdp, model, expert))
  }
  free = [axis for axis, value in sizes.items() if value == -1]
  if len(free) > 1:
    raise ValueError(f"Only one of DATA/FSDP/MODEL/EXPERT_PARALLELISM may be -1; got {_mesh_str(sizes)}.")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  valid = divisors(num_devices)
  if free:
    if num_devices % fixed:
      place = f"{where} ({num_devices} devices)" if where else "the devices"
      raise ValueError(
        f"Mesh {_mesh_str(sizes)} does not fit {place}: the fixed sizes multiply to {fixed}, which does not "
        f"divide the {num_devices} devices. Valid products divide {num_devices}: {valid} "
        f"(e.g. {_examples(num_devices)})."
      )
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    has = f"{where} has {num_devices} devices" if where else f"there are {num_devices}"
    raise ValueError(
      f"Mesh {_mesh_str(sizes)} uses {fixed} devices but {has}. Valid choices: sizes whose product is exactly "
      f"{num_devices} (e.g. {_examples(num_devices)}), or set one of them to -1 with the others multiplying to "
      f"one of {valid}."
    )
  return sizes


def _mesh_str(sizes: Mapping[str, int]) -> str:
  return " x ".join(f"{k}={v}" for k, v in sizes.items() if k != "expert" or v != 1)


def _examples(n: int) -> str:
  out = [f"data={n}"]
  if n > 1:
    out.append(f"fsdp={n}")
  for m in (2, 4, 8):
    if n % m == 0 and n // m > 1:
      out.append(f"data={n // m} model={m}")
      break
  return "; ".join(out)

"""Per-device bytes of a mixture of experts' train state under expert parallelism (issue 15).

The `bytes` part of `t5lite.bench.moe`: abstract train states (nothing allocated) of a Switch
preset on meshes of 8 simulated CPU devices (MESHES), with the bytes of the expert kernels and
of their Adafactor statistics per device next to their totals.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEVICES = 8  # simulated CPU devices of the bytes part
DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\d+")
MESHES = (
  ("expert=1", 8, 1, 1, 1),
  ("expert=8", 1, 1, 1, 8),
  ("data=2 x expert=4", 2, 1, 1, 4),
  ("fsdp=2 x expert=4", 1, 2, 1, 4),
)


def flat_with_axes(abstract: Any, axes: Any) -> list[tuple[str, Any, tuple]]:
  """[(path, leaf, logical axis names)] of a tree and its axis-names tree (names at the tree's leaves)."""
  import jax  # pylint: disable=g-import-not-at-top

  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  names = treedef.flatten_up_to(axes)
  return [
    ("/".join(str(getattr(k, "key", k)) for k in path), leaf, tuple(n or ())) for (path, leaf), n in zip(flat, names)
  ]


# ---- part 'bytes': abstract train states on 8 simulated devices -------------


def _bytes(tree_leaves: list) -> tuple[int, int]:
  from t5lite import partitioning  # pylint: disable=g-import-not-at-top

  return partitioning.total_bytes(tree_leaves), partitioning.bytes_per_device(tree_leaves)


def mesh_bytes(preset: str, label: str, data: int, fsdp: int, model_par: int, expert: int) -> dict:
  """Bytes of the parameters and Adafactor state of `preset` (vocab 32128) on one mesh, abstractly."""
  import jax  # pylint: disable=g-import-not-at-top

  from t5lite import partitioning, train_state  # pylint: disable=g-import-not-at-top
  from t5lite.optim import adafactor, schedules, state_axes  # pylint: disable=g-import-not-at-top

  from t5lite.models import model as model_lib, t5  # pylint: disable=g-import-not-at-top

  model = model_lib.EncoderDecoderModel(config=t5.t5_config(preset, vocab_size=32128))
  part = partitioning.Partitioner(data=data, fsdp=fsdp, model=model_par, expert=expert)
  init = train_state.TrainStateInitializer(
    model, adafactor.adafactor, schedules.constant(0.01), part, model.input_shapes(8, {"inputs": 512, "targets": 114})
  )
  params = flat_with_axes(init.abstract_params, init.params.logical_axes)
  unsharded_opt = jax.eval_shape(init.optimizer.init, init.params.unsharded())
  opt_axes = state_axes.opt_state_logical_axes(unsharded_opt, init.params.unsharded(), init.params.logical_axes)
  opt = flat_with_axes(init.abstract_opt_state, opt_axes)
  line: dict[str, Any] = {
    "part": "bytes",
    "preset": preset,
    "mesh_label": label,
    "mesh": dict(part.mesh.shape),
    "devices": part.mesh.size,
    "num_experts": model.config.num_experts,
    "experts_per_device": model.config.num_experts // part.mesh.shape["expert"],
  }
  for what, flat in (("params", params), ("opt_state", opt)):
    leaves = [leaf for _, leaf, _ in flat]
    experts = [leaf for _, leaf, names in flat if "expert" in names]
    total, per_device = _bytes(leaves)
    e_total, e_per_device = _bytes(experts)
    line[f"{what}_bytes"] = total
    line[f"{what}_bytes_per_device"] = per_device
    line[f"{what}_expert_bytes"] = e_total
    line[f"{what}_expert_bytes_per_device"] = e_per_device
    line[f"{what}_expert_fraction_per_device"] = round(e_per_device / e_total, 6) if e_total else None
    line[f"{what}_other_bytes_per_device"] = per_device - e_per_device
  line["notes"] = list(part.notes)
  return line


def run_bytes(presets: Sequence[str], stage: Callable[[str], None] = print) -> list[dict]:
  """`mesh_bytes` of each preset on each of MESHES (needs DEVICES devices)."""
  out = []
  for preset in presets:
    for label, *mesh in MESHES:
      stage(f"bytes: {preset} on {label} ...")
      t0 = time.perf_counter()
      line = mesh_bytes(preset, label, *mesh)
      line["seconds"] = round(time.perf_counter() - t0, 2)
      out.append(line)
  return out


def bytes_in_subprocess(presets: Sequence[str], timeout_s: float, stage: Callable[[str], None] = print) -> list[dict]:
  """The bytes part in a fresh process with 8 simulated devices (jax here already has fewer)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    DEVICE_FLAG.sub("", env.get("XLA_FLAGS", "")) + f" --xla_force_host_platform_device_count={DEVICES}"
  ).strip()
  env.setdefault("JAX_PLATFORMS", "cpu")
  cmd = [sys.executable, "-m", "t5lite.bench.moe", "--parts", "bytes", "--bytes_presets", ",".join(presets)]
  stage(f"bytes: in a subprocess with {DEVICES} simulated devices ...")
  proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout_s, check=True)
  return [l for l in (json.loads(t) for t in proc.stdout.splitlines() if t.strip()) if l.get("part") == "bytes"]

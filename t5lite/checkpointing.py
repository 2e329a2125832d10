"""Orbax checkpoints of a train state, with a compatibility check before restore.

A step directory holds three orbax items: `params`, `opt_state` (standard
pytrees, restored onto whatever shardings the abstract target carries) and
`meta` (JSON: step, data position, parameter shapes, model description). The
meta item lets a run refuse, with a clear message, to resume from a
checkpoint of another model shape instead of failing inside orbax or, worse,
overwriting it. Orbax does the saving (asynchronously), the keep-last-K
policy and the atomic step directories.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
ITEMS = ("params", "opt_state", "meta")


def param_shapes(params: PyTree) -> dict[str, list[int]]:
  """{'encoder/layers_0/...': shape} for a (possibly abstract) params tree."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[key] = [int(d) for d in np.shape(leaf)]
  return out


def describe_mismatch(saved: Mapping[str, list[int]], wanted: Mapping[str, list[int]], limit: int = 5) -> str:
  """A short human description of how two parameter-shape tables differ."""
  lines = []
  for k in sorted(set(saved) | set(wanted)):
    a, b = saved.get(k), wanted.get(k)
    if a != b:
      lines.append(f"{k}: checkpoint {a if a is not None else 'absent'}, this model {b if b is not None else 'absent'}")
  more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
  return "; ".join(lines[:limit]) + more


class Checkpointer:
  """Saves and restores train states under `directory` (MODEL_DIR/checkpoints)."""

  def __init__(self, directory: str, *, keep: Optional[int] = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, params: PyTree, opt_state: PyTree, meta: Mapping[str, Any]) -> None:
    self._manager.save(
        int(step),
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(dict(meta, step=int(step), param_shapes=param_shapes(params))),
        ),
        force=True,
    )

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def check_compatible(self, step: int, abstract_params: PyTree) -> dict:
    """Raises if the checkpoint at `step` holds another model shape; returns its meta."""
    meta = self.read_meta(step)
    wanted = param_shapes(abstract_params)
    if meta.get("param_shapes") != wanted:
      raise ValueError(
          f"{self.directory} holds a checkpoint (step {step}) of a different model shape: "
          f"{describe_mismatch(meta.get('param_shapes', {}), wanted)}. Nothing was overwritten; "
          "use a new MODEL_DIR, or the same model configuration to resume."
      )
    return meta

  def restore(self, step: int, abstract_params: PyTree, abstract_opt_state: PyTree):
    """(params, opt_state, meta) at `step`, placed like the abstract targets."""
    meta = self.check_compatible(step, abstract_params)
    out = self._manager.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
        ),
    )
    return out["params"], out["opt_state"], meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _resolve_params_dir(path: str) -> str:
  """Accepts a run dir, its checkpoints dir, a step dir or a params dir."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if os.path.basename(path) != "params" and not os.path.isdir(os.path.join(path, "params")):
    steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
    if not steps:
      raise FileNotFoundError(
          f"INITIAL_CHECKPOINT_PATH={path!r} holds no checkpoint: give a run directory, its "
          "checkpoints/ directory or a step directory such as .../checkpoints/1000."
      )
    path = os.path.join(path, str(max(steps)))
  if os.path.basename(path) != "params":
    path = os.path.join(path, "params")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"No params item at {path!r}.")
  return path


def load_params(path: str, abstract_params: PyTree) -> PyTree:
  """Parameters of another run's checkpoint (fine-tuning), checked against this model."""
  params_dir = _resolve_params_dir(path)
  meta_path = os.path.join(os.path.dirname(params_dir), "meta")
  if os.path.isdir(meta_path) or os.path.exists(meta_path):
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_path)
    wanted = param_shapes(abstract_params)
    if meta.get("param_shapes") != wanted:
      raise ValueError(
          f"INITIAL_CHECKPOINT_PATH {params_dir} holds another model shape: "
          f"{describe_mismatch(meta.get('param_shapes', {}), wanted)}."
      )
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(params_dir, abstract_params)

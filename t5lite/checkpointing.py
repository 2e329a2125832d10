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
    mismatch = (
        "does not match this run's optimizer (another optimizer or optimizer settings, or a "
        "checkpoint written before Adafactor factored the attention kernels, 2026-11-29). "
        "Nothing was overwritten; resume with the optimizer it was written with, or start a new "
        f"MODEL_DIR with INITIAL_CHECKPOINT_PATH={self.directory}/{step} (parameters only)."
    )
    try:
      out = self._manager.restore(
          step,
          args=ocp.args.Composite(
              params=ocp.args.StandardRestore(abstract_params),
              opt_state=ocp.args.StandardRestore(abstract_opt_state),
          ),
      )
    except (ValueError, TypeError, KeyError) as e:
      raise ValueError(
          f"{self.directory} holds a checkpoint (step {step}) of this model whose optimizer state "
          f"{mismatch} Restore error: {str(e)[:500]}"
      ) from e
    # orbax restores an array with the shape it was saved with, whatever the target's.
    got = [tuple(x.shape) for x in jax.tree.leaves(out["opt_state"])]
    want = [tuple(x.shape) for x in jax.tree.leaves(abstract_opt_state)]
    if got != want:
      diff = next(((g, w) for g, w in zip(got, want) if g != w), (len(got), len(want)))
      raise ValueError(
          f"{self.directory} holds a checkpoint (step {step}) of this model whose optimizer state "
          f"(first difference: {diff[0]} saved, {diff[1]} expected) {mismatch}"
      )
    return out["params"], out["opt_state"], meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def list_checkpoints(path: str) -> list[tuple[int, str]]:
  """(step, step directory) of every finished checkpoint under a run directory,
  its checkpoints/ directory, or a step directory (that step only); oldest first."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if os.path.basename(path) == "params":
    path = os.path.dirname(path)
  if os.path.isdir(os.path.join(path, "params")):
    name = os.path.basename(path)
    return [(int(name) if name.isdigit() else -1, path)]
  if not os.path.isdir(path):
    return []
  steps = sorted(int(d) for d in os.listdir(path) if d.isdigit() and os.path.isdir(os.path.join(path, d, "params")))
  return [(s, os.path.join(path, str(s))) for s in steps]


def resolve_checkpoint(path: str, step: Optional[int] = None, what: str = "CHECKPOINT_PATH") -> tuple[int, str]:
  """(step, params directory) of the latest (or the given) checkpoint under `path`."""
  found = list_checkpoints(path)
  if not found:
    raise FileNotFoundError(
        f"{what}={path!r} holds no checkpoint: give a run directory, its checkpoints/ directory or a step "
        "directory such as .../checkpoints/1000."
    )
  if step is not None:
    found = [f for f in found if f[0] == step]
    if not found:
      raise FileNotFoundError(
          f"{what}={path!r} has no checkpoint of step {step}; it has steps {[s for s, _ in list_checkpoints(path)]}."
      )
  step_found, step_dir = found[-1]
  return step_found, os.path.join(step_dir, "params")


def _resolve_params_dir(path: str, what: str = "INITIAL_CHECKPOINT_PATH") -> str:
  """Accepts a run dir, its checkpoints dir, a step dir or a params dir."""
  return resolve_checkpoint(path, what=what)[1]


def load_params(path: str, abstract_params: PyTree, what: str = "INITIAL_CHECKPOINT_PATH") -> PyTree:
  """Parameters of another run's checkpoint (fine-tuning, inference), checked against this model."""
  params_dir = _resolve_params_dir(path, what)
  meta_path = os.path.join(os.path.dirname(params_dir), "meta")
  if os.path.isdir(meta_path) or os.path.exists(meta_path):
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_path)
    wanted = param_shapes(abstract_params)
    if meta.get("param_shapes") != wanted:
      raise ValueError(
          f"{what} {params_dir} holds another model shape: "
          f"{describe_mismatch(meta.get('param_shapes', {}), wanted)}."
      )
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(params_dir, abstract_params)

"""Orbax checkpoints of a train state, with a compatibility check before restore.

A step directory holds three orbax items: `params`, `opt_state` (standard
pytrees, restored onto whatever shardings the abstract target carries) and
`meta` (JSON: step, data position, parameter shapes, model description, the
size of the task vocabulary; `read_checkpoint_meta` reads it). The
meta item lets a run refuse, with a clear message, to resume from a
checkpoint of another model shape instead of failing inside orbax or, worse,
overwriting it. Orbax does the saving (asynchronously), the keep-last-K
policy and the atomic step directories.

A damaged step (files truncated by a partial copy or a full disk) is told
apart from an incompatible one: an incompatible checkpoint (other parameter
shapes, another optimizer state layout) is read from metadata and refused;
a step whose metadata or data cannot be read is damaged. `restore_latest`
then warns, moves the damaged step out of orbax's way (to
MODEL_DIR/damaged_checkpoints/, never deleted) and restores the newest
readable one.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from t5lite import checks
from t5lite.models import peft

PyTree = Any
ITEMS = ("params", "opt_state", "meta")
DAMAGED_DIR = "damaged_checkpoints"


class DamagedCheckpointError(ValueError):
  """No checkpoint in a directory could be read (each one is damaged)."""


def param_shapes(params: PyTree) -> dict[str, list[int]]:
  """{'encoder/layers_0/...': shape} for a (possibly abstract) params tree."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[key] = [int(d) for d in np.shape(leaf)]
  return out


def _routers(shapes: Mapping[str, list[int]]) -> dict[str, list[int]]:
  """The mixture-of-experts routers of a parameter-shape table: {path: shape}."""
  return {key: shape for key, shape in shapes.items() if key.endswith("/mlp/router") and shape}


def _num_experts(shapes: Mapping[str, list[int]]) -> int:
  """Experts per mixture-of-experts layer of a parameter-shape table (its routers' last dim), 0 for a dense model."""
  routers = list(_routers(shapes).values())
  return int(routers[0][-1]) if routers else 0


def describe_mismatch(saved: Mapping[str, list[int]], wanted: Mapping[str, list[int]], limit: int = 5) -> str:
  """A short human description of how two parameter-shape tables differ (leading with
  the number of experts when a mixture-of-experts model meets a dense one or another size)."""
  lines = []
  experts_saved, experts_wanted = _num_experts(saved), _num_experts(wanted)
  if experts_saved != experts_wanted:
    kind = lambda n: f"a mixture of experts with num_experts={n}" if n else "dense (num_experts=0)"  # noqa: E731
    fix = f"num_experts={experts_saved}" + (" (and its moe_layer_interval)" if experts_saved else "")
    lines.append(
      f"the checkpoint is {kind(experts_saved)} and this model is {kind(experts_wanted)}: set {fix} to use it"
    )
  elif experts_saved and set(_routers(saved)) != set(_routers(wanted)):
    where = lambda shapes: ", ".join(sorted(k[: -len("/mlp/router")] for k in _routers(shapes)))  # noqa: E731
    lines.append(
      f"the checkpoint's mixture-of-experts layers are {where(saved)} and this model's are {where(wanted)}: "
      "set moe_layer_interval (and scan_layers) as the checkpoint's run did"
    )
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
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    handlers = {
      "params": ocp.StandardCheckpointHandler(),
      "opt_state": ocp.StandardCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler(),
    }
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

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
    self._check_param_shapes(step, meta, abstract_params)
    return meta

  def _check_param_shapes(self, step: int, meta: Mapping[str, Any], abstract_params: PyTree) -> None:
    wanted = param_shapes(abstract_params)
    if meta.get("param_shapes") != wanted:
      raise ValueError(
        f"{self.directory} holds a checkpoint (step {step}) of a different model shape: "
        f"{describe_mismatch(meta.get('param_shapes', {}), wanted)}. Nothing was overwritten; "
        "use a new MODEL_DIR, or the same model configuration to resume."
      )

  def _opt_mismatch(self, step: int, detail: str) -> ValueError:
    return ValueError(
      f"{self.directory} holds a checkpoint (step {step}) of this model whose optimizer state "
      f"({detail}) does not match this run's optimizer (another optimizer or optimizer settings, or a "
      "checkpoint written before Adafactor factored the attention kernels). "
      "Nothing was overwritten; resume with the optimizer it was written with, or start a new "
      f"MODEL_DIR with INITIAL_CHECKPOINT_PATH={self.directory}/{step} (parameters only)."
    )

  def newest_readable_meta(self, abstract_params: PyTree) -> Optional[tuple[int, dict]]:
    """(step, meta) of the newest step whose meta can be read, checked against this model.

    Cheap (reads JSON only): the early refusal of a MODEL_DIR of another model.
    Raises ValueError on another model shape; None when there is no step."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        meta = self.read_meta(step)
      except Exception:  # pylint: disable=broad-except  # damaged: restore_latest says so
        continue
      self._check_param_shapes(step, meta, abstract_params)
      return step, meta
    return None

  def _read_checked(self, step: int, abstract_params: PyTree, abstract_opt_state: PyTree):
    """Restores `step`; raises ValueError when incompatible, _Damaged when unreadable."""
    _quiet_abandoned_reads()
    try:
      meta = self.read_meta(step)
      item_meta = self._manager.item_metadata(step)
      saved_opt = item_meta["opt_state"]
      saved_opt = getattr(saved_opt, "tree", saved_opt)
    except Exception as e:  # pylint: disable=broad-except
      _collect_abandoned_reads()
      raise _Damaged(f"its metadata cannot be read ({_first_line(e)})") from e
    self._check_param_shapes(step, meta, abstract_params)
    if saved_opt is not None:
      saved = sorted(tuple(getattr(x, "shape", ())) for x in jax.tree.leaves(saved_opt))
      wanted = sorted(tuple(x.shape) for x in jax.tree.leaves(abstract_opt_state))
      if saved != wanted:
        raise self._opt_mismatch(step, f"{len(saved)} arrays saved, {len(wanted)} expected, shapes differ")
    try:
      out = self._manager.restore(
        step,
        args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params),
          opt_state=ocp.args.StandardRestore(abstract_opt_state),
        ),
      )
    except Exception as e:  # pylint: disable=broad-except
      _collect_abandoned_reads()
      raise _Damaged(f"its arrays cannot be read ({_first_line(e)}): a data file is truncated or corrupt") from e
    # orbax restores an array with the shape it was saved with, whatever the target's.
    got = [tuple(x.shape) for x in jax.tree.leaves(out["opt_state"])]
    want = [tuple(x.shape) for x in jax.tree.leaves(abstract_opt_state)]
    if got != want:
      diff = next(((g, w) for g, w in zip(got, want) if g != w), (len(got), len(want)))
      raise self._opt_mismatch(step, f"first difference: {diff[0]} saved, {diff[1]} expected")
    return out["params"], out["opt_state"], meta

  def restore(self, step: int, abstract_params: PyTree, abstract_opt_state: PyTree):
    """(params, opt_state, meta) at `step`, placed like the abstract targets.

    Raises ValueError when the step holds another model or optimizer layout,
    DamagedCheckpointError when it cannot be read."""
    try:
      return self._read_checked(step, abstract_params, abstract_opt_state)
    except _Damaged as e:
      raise DamagedCheckpointError(f"checkpoint step {step} in {self.directory} is damaged: {e}") from e

  def restore_latest(self, abstract_params: PyTree, abstract_opt_state: PyTree, warn: Callable[[str], None] = print):
    """(step, params, opt_state, meta) of the newest readable step; None when there is none.

    A damaged step is reported through `warn`, moved to
    MODEL_DIR/damaged_checkpoints/STEP (by process 0; never deleted) so that
    new saves do not collide with it, and the next older step is tried.
    Raises ValueError for an incompatible step (nothing is moved) and
    DamagedCheckpointError, naming every step and what is wrong with it, when
    no step is readable (then nothing is moved either).
    """
    steps = sorted(self.all_steps(), reverse=True)
    damaged = []
    for step in steps:
      try:
        params, opt_state, meta = self._read_checked(step, abstract_params, abstract_opt_state)
      except _Damaged as e:
        damaged.append((step, str(e)))
        continue
      for bad, why in damaged:
        moved = self._move_aside(bad, why)
        warn(
          f"warning: checkpoint step {bad} in {self.directory} is damaged: {why}. It was moved to "
          f"{moved}; resuming from step {step} instead."
        )
      if damaged:
        self._manager.reload()
      return step, params, opt_state, meta
    if damaged:
      what = "; ".join(f"step {s}: {why}" for s, why in damaged)
      raise DamagedCheckpointError(
        f"no checkpoint in {self.directory} can be read ({what}). Nothing was moved or deleted; restore "
        "the files (a complete copy of the directory) or use a new MODEL_DIR."
      )
    return None

  def _move_aside(self, step: int, why: str) -> str:
    """Moves a damaged step directory to MODEL_DIR/damaged_checkpoints/ (process 0)."""
    target_dir = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
    target = os.path.join(target_dir, str(step))
    if os.path.exists(target):
      target = f"{target}.{time.strftime('%Y%m%d-%H%M%S')}"
    _sync(f"t5lite_damaged_{step}_before")
    if jax.process_index() == 0:
      os.makedirs(target_dir, exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)), target)
      with open(os.path.join(target, "DAMAGED.txt"), "w", encoding="utf-8") as f:
        f.write(f"step {step} moved here from {self.directory} on {time.strftime('%Y-%m-%d %H:%M:%S')}: {why}\n")
    _sync(f"t5lite_damaged_{step}_after")
    return target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class _Damaged(Exception):
  """A step that cannot be read (internal; see DamagedCheckpointError)."""


def _is_abandoned_read_report(unraisable) -> bool:
  """An orbax/TensorStore read abandoned after another read of the step failed."""
  import inspect  # pylint: disable=g-import-not-at-top

  if inspect.iscoroutine(unraisable.object):
    return True  # "Exception ignored in <coroutine _read_array_index_and_device_put>"
  return (
    unraisable.object is None
    and isinstance(unraisable.exc_value, RuntimeError)
    and str(unraisable.exc_value) == "Event loop is closed"
  )


_QUIET_HOOK_INSTALLED = False


def _quiet_abandoned_reads() -> None:
  """Keeps the reports of reads abandoned in a damaged step off the console.

  When one array of a damaged step fails, orbax gives up on the others: their
  coroutines report their own failure when garbage collected, and TensorStore
  callbacks that complete after orbax closed its event loop report
  "RuntimeError: Event loop is closed", each as a traceback through
  `sys.unraisablehook`, from other threads, during the failing call and
  after it. Before a step is read, a hook that drops exactly those two
  reports (and passes every other one on) is installed for the rest of the
  process, with a filter on the `asyncio` logger for the same reads' "Task
  exception was never retrieved". The warning that names the damaged step is what the user sees.
  """
  import sys  # pylint: disable=g-import-not-at-top

  global _QUIET_HOOK_INSTALLED
  if _QUIET_HOOK_INSTALLED:
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_abandoned_read_report(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
  # asyncio logs the same abandoned reads as "Task exception was never retrieved".
  logging.getLogger("asyncio").addFilter(_AbandonedReadLogFilter())
  _QUIET_HOOK_INSTALLED = True


class _AbandonedReadLogFilter(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" for failed TensorStore reads only."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not str(record.msg).startswith("Task exception was never retrieved"):
      return True
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and ("tensorstore_spec" in str(exc) or "TensorStore" in str(exc)))


def _collect_abandoned_reads() -> None:
  """Collects the coroutines a failed read abandoned, now (their reports are dropped)."""
  import gc  # pylint: disable=g-import-not-at-top

  gc.collect()


def _first_line(e: BaseException, limit: int = 300) -> str:
  text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  text = text.split(". See full TensorStore details")[0]
  return text[:limit] + ("..." if len(text) > limit else "")


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)


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


def _read_step_meta(step_dir: str) -> Optional[dict]:
  """The meta item of a step directory, or None when it has none (raises what orbax raises)."""
  meta_path = os.path.join(step_dir, "meta")
  if not (os.path.isdir(meta_path) or os.path.exists(meta_path)):
    return None
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_path)


def read_checkpoint_meta(path: str, what: str = "INITIAL_CHECKPOINT_PATH", step: Optional[int] = None) -> dict:
  """The meta (JSON: step, data position, param_shapes, vocabulary_size, ...) of the
  latest (or `step`'s) checkpoint under `path`.

  `path` is any path `load_params` takes: a run directory, its checkpoints/
  directory, a step directory or its params/ directory. Returns {} when
  `path` holds no t5lite checkpoint (a Hugging Face model directory, say, or
  a path that does not exist: the loader says what is wrong with it) or the
  checkpoint has no meta item.

  Raises:
    FileNotFoundError: `step` is given and `path` has checkpoints, but not that step.
    DamagedCheckpointError: the meta item is there but cannot be read (names the step directory).
  """
  if not list_checkpoints(path):
    return {}
  _, params_dir = resolve_checkpoint(path, step, what)
  step_dir = os.path.dirname(params_dir)
  try:
    meta = _read_step_meta(step_dir)
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds for a damaged file
    raise DamagedCheckpointError(f"{what}: the meta of {step_dir} cannot be read ({_first_line(e)})") from e
  return dict(meta or {})


def load_params(
  path: str,
  abstract_params: PyTree,
  what: str = "INITIAL_CHECKPOINT_PATH",
  new_heads: Optional[Callable[[tuple[str, ...]], PyTree]] = None,
  head_names: tuple[str, ...] = (),
) -> PyTree:
  """Parameters of another run's checkpoint (fine-tuning, inference), checked against this model.

  `abstract_params`: the model's parameters as (sharded) ShapeDtypeStructs;
  the result has their structure and placement. A checkpoint of a
  parameter-efficient run (LoRA, prompt tuning: its meta names a
  `base_checkpoint`) holds adapters only: they are read from it and the rest
  from the base checkpoint it names (which must still exist).

  Fine-tuning with another head (an encoder-only MLM checkpoint for a
  classifier): `head_names` are the top-level parameter names that belong to
  a head, this model's or another's. When the checkpoint and this model
  differ only in those, the shared parameters are read, the checkpoint's
  other head is left out, and this model's head parameters the checkpoint
  lacks come from `new_heads(names)` (a tree with those top-level names).

  Raises:
    FileNotFoundError: `path` (or an adapter checkpoint's base) holds no checkpoint.
    ValueError: the checkpoint (or the base) holds another model shape, or
      holds adapters while this model has none (naming its base and the way out).
  """
  params_dir = _resolve_params_dir(path, what)
  meta = _read_step_meta(os.path.dirname(params_dir))
  if meta is not None and meta.get("base_checkpoint"):
    return _load_adapters_and_base(params_dir, meta, abstract_params, what)
  if meta is not None:
    wanted = param_shapes(abstract_params)
    saved = meta.get("param_shapes") or {}
    outside = lambda shapes: {k: v for k, v in shapes.items() if k.split("/")[0] not in head_names}  # noqa: E731
    if saved != wanted and new_heads is not None and head_names and outside(saved) == outside(wanted):
      return _load_with_new_heads(params_dir, saved, abstract_params, new_heads)
    if saved != wanted:
      raise ValueError(
        f"{what} {params_dir} holds another model shape: {describe_mismatch(meta.get('param_shapes', {}), wanted)}."
      )
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(params_dir, abstract_params)


def _load_with_new_heads(
  params_dir: str, saved: Mapping[str, list[int]], abstract_params: PyTree, new_heads: Callable
) -> PyTree:
  """The checkpoint's parameters that this model has (see `load_params`), plus fresh heads."""
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in p): leaf
    for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  }
  some = next(iter(flat.values()))
  sharding = getattr(some, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  target: dict = {}
  for key, shape in saved.items():
    leaf = flat.get(key)
    if leaf is None or list(leaf.shape) != list(shape):
      leaf = jax.ShapeDtypeStruct(tuple(shape), np.float32, sharding=sharding)  # a head this model does not have
    node = target
    *parents, name = key.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[name] = leaf
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(params_dir, target)
  # A head whose parameters are not all in the checkpoint with this model's shapes is made anew.
  shapes = param_shapes(abstract_params)
  fits = lambda name: all(saved.get(k) == v for k, v in shapes.items() if k.split("/")[0] == name)  # noqa: E731
  top = set(abstract_params)
  out = {k: v for k, v in restored.items() if k in top and fits(k)}
  missing = tuple(sorted(top - set(out)))
  if missing:
    out.update(new_heads(missing))
  dropped = sorted(set(restored) - set(out))
  logging.warning(
    "read %s without its head %s; this model's head %s starts from fresh parameters", params_dir, dropped, list(missing)
  )
  return out


def _load_adapters_and_base(params_dir: str, meta: Mapping[str, Any], abstract_params: PyTree, what: str) -> PyTree:
  """An adapter checkpoint's adapters joined with its base's parameters (see `load_params`)."""
  adapters, base = _read_adapters(params_dir, meta, peft.trainable(abstract_params), what)
  base_params = load_params(base["path"], peft.frozen(abstract_params), what=f"the base checkpoint of {params_dir}")
  return peft.combine(base_params, adapters)


def load_adapters(
  path: str,
  abstract_adapters: PyTree,
  step: Optional[int] = None,
  *,
  base: Optional[Mapping[str, Any]] = None,
  adapters: Optional[Mapping[str, Any]] = None,
  what: str = "the adapter checkpoint",
) -> tuple[PyTree, dict, int, str]:
  """(adapters, meta, step, step directory) of a LoRA / prompt-tuning checkpoint, without reading its base.

  For serving several adapters of one base in turn (`inference.Predictor.use_adapters`):
  `abstract_adapters` is `peft.trainable` of the model's abstract (sharded)
  parameters; the adapters come back in its structure and placement. The
  meta's `base_checkpoint` is {'path': base step directory, 'step'}, its
  `adapters` the configuration `peft.describe` recorded (absent in
  checkpoints written before 2026-12-03). `base`: the base the caller
  serves ({'path', 'step'}, compared by real path and step); `adapters`:
  `peft.describe` of the caller's model. Both are checked before any array
  is read.

  Raises:
    FileNotFoundError: `path` holds no checkpoint (of `step`).
    ValueError: a bad `step`; the checkpoint holds no adapters (a whole
      model's: it names no base); it names another base than `base` (both
      named); its recorded adapters differ from `adapters` (LoRA rank or
      alpha, prompt length: both described), or its shapes from
      `abstract_adapters` (the parameters named).
  """
  step = checks.check_int("step", step, minimum=0, allow_none=True, hint=" (None: the latest checkpoint)")
  found_step, params_dir = resolve_checkpoint(path, step, what=what)
  step_dir = os.path.dirname(params_dir)
  where = f"{what}: {path} (step {found_step})"
  meta = _read_step_meta(step_dir) or {}
  saved_base = meta.get("base_checkpoint")
  if not saved_base:
    raise ValueError(f"{where} holds a whole model, not LoRA / prompt-tuning adapters: inference.load it instead")
  same = lambda b: (os.path.realpath(str(b.get("path"))), b.get("step"))  # noqa: E731
  if base is not None and same(saved_base) != same(base):
    raise ValueError(
      f"{where} holds adapters of the base {saved_base.get('path')} (step {saved_base.get('step')}), but this "
      f"model serves the base {base.get('path')} (step {base.get('step')})"
    )
  if adapters is not None and meta.get("adapters") is not None and meta["adapters"] != dict(adapters):
    raise ValueError(
      f"{where} holds {peft.summary(meta['adapters'])}, this model has {peft.summary(adapters)}: a run with "
      "other adapters has a model configuration of its own, so inference.load it"
    )
  out, _ = _read_adapters(params_dir, meta, abstract_adapters, where)
  return out, dict(meta), found_step, step_dir


def _read_adapters(
  params_dir: str, meta: Mapping[str, Any], abstract_adapters: PyTree, what: str
) -> tuple[PyTree, dict]:
  """(adapters, base_checkpoint) of an adapter checkpoint's params directory, checked against `abstract_adapters`."""
  base = dict(meta["base_checkpoint"])
  if not abstract_adapters:
    raise ValueError(
      f"{what} {params_dir} holds LoRA / prompt-tuning adapters for the base checkpoint {base.get('path')}, "
      "but this model has no adapters: load it with the model configuration of the run that wrote it (its "
      "config.gin sets lora / prompt_tuning), or fold LoRA adapters into the base first with `t5lite lora merge`."
    )
  wanted = param_shapes(abstract_adapters)
  if meta.get("param_shapes") != wanted:
    raise ValueError(
      f"{what} {params_dir} holds other adapters than this model's: "
      f"{describe_mismatch(meta.get('param_shapes', {}), wanted)}; load that run with its own model "
      "configuration (its config.gin: inference.load)."
    )
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(params_dir, abstract_adapters), base

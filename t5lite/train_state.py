"""The train state and how it is made: shardings, fresh init, restore with its checks.

`TrainState` is (step, params, opt_state). `ParamLayout` gives a model's
parameters their logical axes and shardings on a partitioner's mesh (what
inference needs); `TrainStateInitializer` adds the optimizer and its state's
shardings, creates a fresh state directly into them or restores one from a
checkpoint after checking it (parameter shapes, optimizer layout, data
stream), and describes the layout (`model-info.txt`). `DataStream` is what a
checkpoint's data position means and how a resume reads it back.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from t5lite import checkpointing, partitioning
from t5lite.hf import files as hf_files
from t5lite.hf import weights as hf_weights
from t5lite.models import peft
from t5lite.models import prompt_tuning as prompt_lib
from t5lite.models.model import BaseModel
from t5lite.optim import state_axes

PyTree = Any
Log = Callable[[str], None]


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; params: the model's parameter tree; opt_state: the optax state."""

  step: jax.Array
  params: PyTree
  opt_state: PyTree


def with_shardings(abstract: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs of `abstract` (arrays or ShapeDtypeStructs) placed with
  `shardings` (a tree of jax Shardings of the same structure)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def make_optimizer(
  optimizer_factory: Callable[..., optax.GradientTransformation],
  learning_rate: Any,
  logical_axes: Optional[PyTree],
) -> optax.GradientTransformation:
  """Calls an optimizer factory with the schedule (or a float) and, if it takes
  them, the parameters' logical axes. Raises what the factory raises for a bad
  setting (ValueError naming it)."""
  kwargs = {"learning_rate": learning_rate}
  if "logical_axes" in inspect.signature(optimizer_factory).parameters:
    kwargs["logical_axes"] = logical_axes
  return optimizer_factory(**kwargs)


@dataclasses.dataclass(frozen=True)
class ParamLayout:
  """A model's parameters on a mesh: logical axis names, shardings and abstract
  parameters (ShapeDtypeStructs carrying those shardings, the target of a restore)."""

  logical_axes: PyTree
  shardings: PyTree
  abstract: PyTree

  @classmethod
  def create(
    cls, model: BaseModel, partitioner: partitioning.Partitioner, input_shapes: Mapping[str, tuple[int, ...]]
  ) -> "ParamLayout":
    """The layout of `model`'s parameters for inputs of `input_shapes` (parameter
    shapes depend on which features there are, not on their sizes). Fits the
    partitioner's rules to the parameters first (`Partitioner.fit_to`: a rule
    whose mesh axes do not divide a dimension is dropped, with a note)."""
    logical_axes = model.param_logical_axes(input_shapes)
    unsharded = flax.core.meta.unbox(model.abstract_params(input_shapes))
    partitioner.fit_to(unsharded, logical_axes)
    shardings = partitioner.shardings_for(logical_axes)
    return cls(logical_axes, shardings, with_shardings(unsharded, shardings))

  def unsharded(self) -> PyTree:
    """The abstract parameters without shardings."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), self.abstract)


@dataclasses.dataclass(frozen=True)
class DataStream:
  """The training data stream whose position a checkpoint records, in rows.

  `spec` describes the stream (task, lengths, converter, packing, shuffling,
  seed) as it reads back from the checkpoint's JSON, or None when unknown;
  `batch_size` is the global batch size in rows; `seed` the run's seed."""

  batch_size: int
  seed: int = 0
  spec: Optional[Mapping[str, Any]] = None

  def __post_init__(self):
    if self.spec is not None:  # tuples -> lists, as JSON gives them back
      object.__setattr__(self, "spec", json.loads(json.dumps(dict(self.spec), sort_keys=True)))

  def position_meta(self, rows_consumed: int) -> dict[str, Any]:
    """The data position to save with a checkpoint after `rows_consumed` rows
    (JSON-ready: rows, batch size, batches, seed, processes, the stream's spec)."""
    meta = {
      "rows_consumed": int(rows_consumed),
      "batch_size": self.batch_size,
      "batches_consumed": int(rows_consumed) // self.batch_size,
      "seed": self.seed,
      "process_count": jax.process_count(),
    }
    if self.spec is not None:
      meta["data"] = self.spec
    return meta

  def rows_consumed(self, step: int, meta: Mapping[str, Any], checkpoint_dir: str, log: Optional[Log] = None) -> int:
    """Rows consumed at a saved `step`, after checking that this run reads the same stream.

    Another task, lengths, converter, packing, shuffling or seed is another
    stream, where the saved position means nothing: ValueError naming each
    difference and the way out (the MODEL_DIR above `checkpoint_dir`). Another
    batch size is converted (the run continues at the same row) and reported
    through `log`. A checkpoint saved before positions were recorded in rows
    (no 'rows_consumed') counts batches_consumed * its batch size, with a note."""
    saved = meta.get("data")
    if self.spec is not None and saved is not None and saved != self.spec:
      diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, this run {self.spec.get(k)!r}"
        for k in sorted(set(saved) | set(self.spec))
        if saved.get(k) != self.spec.get(k)
      ]
      raise ValueError(
        f"{os.path.dirname(checkpoint_dir)} was trained on another data stream than this run asks for "
        f"({'; '.join(diffs)}). Its data position (step {step}, {meta.get('rows_consumed')} rows consumed) means "
        "nothing for another stream, so the run was not resumed and nothing was written. Resume with the values "
        "of the checkpoint, or start a new MODEL_DIR with "
        f"INITIAL_CHECKPOINT_PATH={checkpoint_dir}/{step} to train on the new data from its start."
      )
    if "rows_consumed" in meta:
      rows = int(meta["rows_consumed"])
    else:
      saved_batch = int(meta.get("batch_size", self.batch_size))
      rows = int(meta.get("batches_consumed", step)) * saved_batch
      if log:
        log(
          f"note: checkpoint step {step} predates row positions; continuing at row {rows} "
          f"({meta.get('batches_consumed', step)} batches of {saved_batch})."
        )
    saved_batch = meta.get("batch_size")
    if log and saved_batch is not None and int(saved_batch) != self.batch_size:
      log(
        f"BATCH_SIZE changed from {saved_batch} to {self.batch_size} since step {step}: continuing at row {rows} "
        "of the same data stream (no example skipped or repeated)."
      )
    return rows


def check_peft_base(config: Any, initial_checkpoint_path: Optional[str]) -> None:
  """Refuses a parameter-efficient run (config sets lora / prompt_tuning) without an orbax base to start from.

  Raises:
    ValueError: `initial_checkpoint_path` is None or a Hugging Face directory (which the adapter
      checkpoints could not name: convert it first), naming the way out.
  """
  if not peft.enabled(config):
    return
  path = initial_checkpoint_path
  if not path:
    raise ValueError(
      "LoRA and prompt tuning adapt a pretrained model, but INITIAL_CHECKPOINT_PATH is None: set it to the "
      "base model's run directory or checkpoint (e.g. INITIAL_CHECKPOINT_PATH = 'runs/quickstart'), or set "
      "the model's lora / prompt_tuning to None to train the whole model."
    )
  if hf_files.has_config(path) and not checkpointing.list_checkpoints(path):
    raise ValueError(
      f"INITIAL_CHECKPOINT_PATH={path!r} is a Hugging Face directory; LoRA and prompt tuning need an orbax base "
      "checkpoint that their checkpoints can name: convert it first (t5lite convert from-hf) and start from that."
    )


class TrainStateInitializer:
  """The train state's layout on a mesh, and its creation or restore into it.

  Parameters are sharded by their logical names; the optimizer state like its
  parameter (`t5lite.optim.state_axes`: a momentum buffer takes the
  parameter's names, Adafactor's factored statistics keep its other names),
  or replicated, with a note in the partitioner, when its layout cannot be
  matched to the parameters. Nothing is computed until `fresh` or a restore.

  Parameter-efficient fine-tuning (the model config sets `lora` or
  `prompt_tuning`, t5lite.models.peft): the state's params hold base and
  adapters, the optimizer (and its state) only the adapters; the base comes
  from INITIAL_CHECKPOINT_PATH, checkpoints hold the adapters and name that
  base (`base_checkpoint`), and a restore reads the base it names."""

  def __init__(
    self,
    model: BaseModel,
    optimizer_factory: Callable[..., optax.GradientTransformation],
    learning_rate: Any,
    partitioner: partitioning.Partitioner,
    input_shapes: Mapping[str, tuple[int, ...]],
  ):
    self.model = model
    self.partitioner = part = partitioner
    self.input_shapes = dict(input_shapes)
    self.params = ParamLayout.create(model, part, self.input_shapes)
    self.peft = peft.enabled(model.config)
    # What trains (and what a checkpoint holds): the adapters under PEFT, else everything.
    self.trained_axes = peft.trainable(self.params.logical_axes) if self.peft else self.params.logical_axes
    self.trained_abstract = peft.trainable(self.params.abstract) if self.peft else self.params.abstract
    self.base_checkpoint: Optional[dict] = None  # PEFT: the base the adapters apply to (set by fresh / restore)
    self.optimizer = make_optimizer(optimizer_factory, learning_rate, self.trained_axes)
    unsharded_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), self.trained_abstract)
    unsharded_opt = jax.eval_shape(self.optimizer.init, unsharded_params)
    try:
      opt_axes = state_axes.opt_state_logical_axes(unsharded_opt, unsharded_params, self.trained_axes)
      self.opt_shardings = jax.tree.map(lambda _, axes: part.shardings_for(axes), unsharded_opt, opt_axes)
    except ValueError as e:
      part.notes.append(f"optimizer state kept replicated: its layout could not be matched to the parameters ({e})")
      self.opt_shardings = jax.tree.map(lambda _: part.replicated, unsharded_opt)
    self.abstract_opt_state = with_shardings(unsharded_opt, self.opt_shardings)
    self.state_shardings = TrainState(step=part.replicated, params=self.params.shardings, opt_state=self.opt_shardings)

  @property
  def abstract_params(self) -> PyTree:
    return self.params.abstract

  def step_array(self, step: int) -> jax.Array:
    """The step as the state holds it: an int32 scalar, replicated."""
    return jax.device_put(jnp.asarray(step, jnp.int32), self.partitioner.replicated)

  def trained(self, params: PyTree) -> PyTree:
    """The part of a full parameter tree that trains (and is checkpointed): the adapters under PEFT, else all."""
    return peft.trainable(params) if self.peft else params

  def fresh(
    self, seed: int, initial_checkpoint_path: Optional[str] = None, prompt_text_ids: Optional[list[int]] = None
  ) -> TrainState:
    """A new state at step 0: parameters from PRNG key `seed` (created from their
    shapes straight into their shardings; see BaseModel.init_params), or read
    from `initial_checkpoint_path` when fine-tuning (ValueError for another
    model's checkpoint, FileNotFoundError when there is none), and the
    optimizer's initial state, created in its shardings. A Hugging Face
    directory (config.json + safetensors) as `initial_checkpoint_path` is read
    straight into the shardings, each device's shard from its slice of the
    file (t5lite.hf.weights.import_params), so a large model never sits whole
    on one host; its config.json must describe this run's model
    (t5lite.hf.weights.import_directory names any field that differs).

    Under PEFT the base is read from `initial_checkpoint_path` (an orbax
    checkpoint; ValueError without one, FileNotFoundError when it holds none)
    and the adapters are created from `seed` (LoRA B = 0); a soft prompt
    starts from the base's token embeddings (prompt_tuning.initial_prompt,
    with `prompt_text_ids`, the tokenised init_text, for init='text'). A PEFT
    checkpoint as `initial_checkpoint_path` gives its base and its adapters."""
    if self.peft:
      return self._fresh_peft(seed, initial_checkpoint_path, prompt_text_ids)
    with self.partitioner.context():
      path = initial_checkpoint_path
      if path and hf_files.has_config(path) and not checkpointing.list_checkpoints(path):
        params = hf_weights.import_directory(str(path), self.model.config, self.params.abstract)
      elif initial_checkpoint_path:
        params = checkpointing.load_params(
          initial_checkpoint_path,
          self.params.abstract,
          new_heads=lambda names: self.model.init_params(
            jax.random.key(seed), self.input_shapes, self.params.shardings, select=lambda t: {n: t[n] for n in names}
          ),
          head_names=getattr(self.model, "head_names", ()),
        )
      else:
        params = self.model.init_params(jax.random.key(seed), self.input_shapes, self.params.shardings)
      opt_state = jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)(params)
    return TrainState(step=self.step_array(0), params=params, opt_state=opt_state)

  def _fresh_peft(self, seed: int, path: Optional[str], prompt_text_ids: Optional[list[int]]) -> TrainState:
    check_peft_base(self.model.config, path)
    meta = checkpointing.read_checkpoint_meta(path)
    with self.partitioner.context():
      if meta.get("base_checkpoint"):  # another adapter run: its base and its adapters
        params = checkpointing.load_params(path, self.params.abstract)
        self.base_checkpoint = dict(meta["base_checkpoint"])
      else:
        base = checkpointing.load_params(path, peft.frozen(self.params.abstract))
        step, params_dir = checkpointing.resolve_checkpoint(path, what="INITIAL_CHECKPOINT_PATH")
        self.base_checkpoint = {"path": os.path.dirname(params_dir), "step": step}
        adapters = self.model.init_params(
          jax.random.key(seed), self.input_shapes, self.params.shardings, select=peft.trainable
        )
        params = peft.combine(base, self._initial_prompt(adapters, base, seed, prompt_text_ids))
      opt_state = jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)(self.trained(params))
    return TrainState(step=self.step_array(0), params=params, opt_state=opt_state)

  def _initial_prompt(self, adapters: PyTree, base: PyTree, seed: int, text_ids: Optional[list[int]]) -> PyTree:
    """`adapters` with a soft prompt set from the base's token embeddings (unchanged without prompt tuning)."""
    cfg = getattr(self.model.config, "prompt_tuning", None)
    if cfg is None:
      return adapters
    shardings = peft.trainable(self.params.shardings)
    out = {}
    for stack, sub in adapters.items():
      sub = dict(sub)
      if prompt_lib.PARAM_NAME in sub:
        embedding = base["token_embedder"]["embedding"]
        value = prompt_lib.initial_prompt(cfg, embedding, jax.random.key(seed + 7), text_ids)
        sub[prompt_lib.PARAM_NAME] = jax.device_put(value, shardings[stack][prompt_lib.PARAM_NAME])
      out[stack] = sub
    return out

  def check_checkpoints(self, checkpointer: checkpointing.Checkpointer, data: DataStream) -> None:
    """Refuses a checkpoint directory of another model or data stream, from the
    newest step whose metadata is readable (JSON only; a damaged step is dealt
    with by `restore_latest`). Raises ValueError naming what differs."""
    found = checkpointer.newest_readable_meta(self.trained_abstract)
    if found is not None:
      step, meta = found
      data.rows_consumed(step, meta, checkpointer.directory)

  def restore_latest(
    self, checkpointer: checkpointing.Checkpointer, data: DataStream, log: Optional[Log] = None, warn: Log = print
  ) -> Optional[tuple[TrainState, int]]:
    """(state, rows of the data stream consumed) from the newest readable
    checkpoint (a damaged newer one is moved aside with a warning, see
    Checkpointer.restore_latest), placed in this layout's shardings; None when
    there is no checkpoint.

    Raises ValueError for a checkpoint of another model, optimizer or data
    stream, checkpointing.DamagedCheckpointError when no checkpoint is readable."""
    found = checkpointer.restore_latest(self.trained_abstract, self.abstract_opt_state, warn=warn)
    if found is None:
      return None
    step, params, opt_state, meta = found
    rows = data.rows_consumed(step, meta, checkpointer.directory, log)
    if self.peft:
      base_meta = meta.get("base_checkpoint")
      if not base_meta:
        raise ValueError(f"checkpoint step {step} in {checkpointer.directory} names no base checkpoint")
      with self.partitioner.context():
        base = checkpointing.load_params(
          base_meta["path"], peft.frozen(self.params.abstract), what=f"the base checkpoint of {checkpointer.directory}"
        )
      self.base_checkpoint = dict(base_meta)
      params = peft.combine(base, params)
    return TrainState(step=self.step_array(step), params=params, opt_state=opt_state), rows

  def model_info(self) -> str:
    """The mesh, the rules, per-device bytes and each parameter's sharding (model-info.txt)."""
    part = self.partitioner
    abstract = self.params.abstract
    lines = [
      f"mesh: {dict(part.mesh.shape)} over {jax.device_count()} devices in {jax.process_count()} process(es)",
      f"logical-axis rules: {list(part.active_rules)}",
      *[f"note: {n}" for n in part.notes],
      f"parameters: {partitioning.total_bytes(abstract):,} bytes in all, "
      f"{partitioning.bytes_per_device(abstract):,} per device",
      f"optimizer state: {partitioning.total_bytes(self.abstract_opt_state):,} bytes in all, "
      f"{partitioning.bytes_per_device(self.abstract_opt_state):,} per device",
      "",
      "parameter  shape  logical axes  partition spec",
    ]
    flat_axes = partitioning.axes_leaves(self.params.logical_axes)
    for (path, leaf), names in zip(jax.tree_util.tree_flatten_with_path(abstract)[0], flat_axes):
      key = "/".join(str(getattr(k, "key", k)) for k in path)
      lines.append(f"{key}  {tuple(leaf.shape)}  {names}  {leaf.sharding.spec}")
    return "\n".join(lines) + "\n"

  def write_model_info(self, model_dir: str) -> None:
    """Writes `model_info()` to MODEL_DIR/model-info.txt (process 0 only)."""
    if jax.process_index() == 0:
      os.makedirs(model_dir, exist_ok=True)
      with open(os.path.join(model_dir, "model-info.txt"), "w", encoding="utf-8") as f:
        f.write(self.model_info())

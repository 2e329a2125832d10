"""The train step (a pure function under jax.jit) and the loop around it.

`train_step` does gradient accumulation over microbatches with `lax.scan`,
normalizes the loss over the whole batch (so accumulation does not change the
result), applies the optax update and returns metrics. `Trainer` is the thin
object outside jit: it runs the loop, saves checkpoints at their cadence with
the data position, writes summaries (with throughput and MFU) and the progress
bar, evaluates, and stops on a NaN loss. The state itself (shardings, fresh
init, restore and its checks, model-info.txt) is `t5lite.train_state`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5lite import checkpointing, partitioning, summaries, throughput
from t5lite.models import peft
from t5lite.models.model import BaseModel
from t5lite.train_state import DataStream, TrainState, TrainStateInitializer

PyTree = Any
Batch = Mapping[str, jax.Array]


def _split_microbatches(batch: Batch, n: int) -> Batch:
  return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def compute_gradients(
  model: BaseModel,
  params: PyTree,
  batch: Batch,
  rng: jax.Array,
  num_microbatches: int,
  frozen: Optional[PyTree] = None,
):
  """Summed gradients and metrics over the batch, accumulated microbatch by microbatch.

  Gradients are taken with respect to `params`; `frozen` (parameter-efficient
  fine-tuning: the base model, t5lite.models.peft) joins them in the model's
  parameters but gets no gradient. Auxiliary losses that are means over the batch rows (a mixture of experts'
  load-balancing and router z-losses) get `aux_scale` = denominator / rows,
  so that every microbatch adds its rows' share and the sum, divided by the
  denominator, is their mean over the whole batch."""
  scale, denom = model.loss_scale(batch)
  rows = jax.tree.leaves(batch)[0].shape[0]
  aux_scale = denom / rows

  def loss_fn(p, b, r, s):
    full = p if frozen is None else peft.combine(frozen, p)
    return model.loss_fn(full, b, r, s, aux_scale=aux_scale)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_microbatches <= 1:
    (_, metrics), grads = grad_fn(params, batch, rng, scale)
  else:
    micro = _split_microbatches(dict(batch), num_microbatches)
    micro_scale = scale.reshape((num_microbatches, -1) + scale.shape[1:])

    def body(carry, xs):
      acc_grads, acc_metrics = carry
      mb, mb_scale, i = xs
      (_, m), g = grad_fn(params, mb, jax.random.fold_in(rng, i), mb_scale)
      return (jax.tree.map(jnp.add, acc_grads, g), jax.tree.map(jnp.add, acc_metrics, m)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    first_metrics = jax.eval_shape(
      lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng, micro_scale[0])[0][1]
    )
    zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first_metrics)
    (grads, metrics), _ = jax.lax.scan(body, (zeros, zero_metrics), (micro, micro_scale, jnp.arange(num_microbatches)))
  grads = jax.tree.map(lambda g: g / denom, grads)
  metrics = dict(metrics, denominator=denom)
  return grads, metrics


def train_step(
  state: TrainState,
  batch: Batch,
  rng: jax.Array,
  *,
  model: BaseModel,
  optimizer: optax.GradientTransformation,
  learning_rate: Callable[[jax.Array], jax.Array],
  num_microbatches: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step; pure, for jax.jit.

  With parameter-efficient fine-tuning (the model config sets lora or
  prompt_tuning) only the adapters get gradients and updates, and the base
  parameters pass through unchanged; `param_norm` and `grad_norm` are then the adapters'."""
  step_rng = jax.random.fold_in(rng, state.step)
  frozen = None
  trained = state.params
  if peft.enabled(model.config):
    trained, frozen = peft.trainable(state.params), peft.frozen(state.params)
  grads, m = compute_gradients(model, trained, batch, step_rng, num_microbatches, frozen)
  updates, opt_state = optimizer.update(grads, state.opt_state, trained)
  params = optax.apply_updates(trained, updates)
  denom = m["denominator"]
  metrics = {
    "loss": m["loss_sum"] / denom,
    "z_loss": m["z_loss_sum"] / denom,
    "accuracy": m["correct"] / jnp.maximum(m["target_tokens"], 1.0),
    "target_tokens": m["target_tokens"],
    "grad_norm": optax.global_norm(grads),
    "param_norm": optax.global_norm(params),
    "learning_rate": learning_rate(state.step),
    **model.train_metrics(m),
  }
  if frozen is not None:
    params = peft.combine(frozen, params)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: PyTree, batch: Batch, *, model: BaseModel) -> dict[str, jax.Array]:
  """Summed loss and accuracy counts on one batch (no dropout), per real target token."""
  weights = model.loss_weights(batch).astype(jnp.float32)
  _, m = model.loss_fn(params, batch, None, weights)
  return m


@dataclasses.dataclass
class TrainerConfig:
  """How long and how often; validated before any work starts.

  Fields are named in errors by the gin macros that set them (TRAIN_STEPS,
  BATCH_SIZE, ...). Raises ValueError (checks.SettingError) for a value of
  the wrong type (a bool, a float, a string) or outside its range: steps,
  sizes and intervals >= 1, EVAL_EVERY >= 0 (0: never), KEEP_CHECKPOINTS
  None (all) or >= 1, SEED in [0, 2**32 - 1], and a BATCH_SIZE that
  NUM_MICROBATCHES does not divide."""

  train_steps: int
  batch_size: int
  task_feature_lengths: Mapping[str, int]
  eval_every: int = 0
  eval_steps: int = 10
  checkpoint_every: int = 1000
  keep_checkpoints: Optional[int] = 3
  summary_every: int = 50
  num_microbatches: int = 1
  seed: int = 0
  async_checkpointing: bool = True
  progress: bool = True

  def __post_init__(self):
    from t5lite import checks  # pylint: disable=g-import-not-at-top

    for name in ("train_steps", "batch_size", "eval_steps", "checkpoint_every", "summary_every", "num_microbatches"):
      setattr(self, name, checks.check_int(name.upper(), getattr(self, name), minimum=1))
    self.eval_every = checks.check_int("EVAL_EVERY", self.eval_every, minimum=0, hint=" (0: never)")
    self.keep_checkpoints = checks.check_int(
      "KEEP_CHECKPOINTS", self.keep_checkpoints, minimum=1, allow_none=True, hint=" (None: keep all)"
    )
    self.seed = checks.check_int("SEED", self.seed, minimum=0, maximum=2**32 - 1)
    self.task_feature_lengths = checks.check_lengths("TASK_FEATURE_LENGTHS", self.task_feature_lengths)
    if self.batch_size % self.num_microbatches:
      raise checks.SettingError(
        f"BATCH_SIZE={self.batch_size} is not divisible by NUM_MICROBATCHES={self.num_microbatches}; "
        f"use a multiple of {self.num_microbatches}."
      )


class Trainer:
  """Runs a training job in MODEL_DIR: create or resume, loop, summarize, checkpoint.

  `state_init` (a train_state.TrainStateInitializer) holds the state's layout
  and makes the state; `abstract_params` / `abstract_opt_state` are its
  sharded ShapeDtypeStructs. `vocabulary_size` (the number of ids of the
  task's vocabulary, as `train.train` computes it) goes into every
  checkpoint's meta, where `checkpointing.read_checkpoint_meta` finds it for
  the next run that starts from or resumes the checkpoint. `prompt_text_ids`:
  the tokenised init_text of a soft prompt (PromptTuningConfig.init='text'). Raises ValueError
  at construction for a batch size the mesh does not divide, or a MODEL_DIR
  holding a checkpoint of another model or data stream (nothing is written then)."""

  def __init__(
    self,
    model: BaseModel,
    optimizer_factory: Callable[..., optax.GradientTransformation],
    learning_rate: Callable[[jax.Array], jax.Array],
    config: TrainerConfig,
    model_dir: str,
    initial_checkpoint_path: Optional[str] = None,
    partitioner: Optional[partitioning.Partitioner] = None,
    data_spec: Optional[Mapping[str, Any]] = None,
    vocabulary_size: Optional[int] = None,
    prompt_text_ids: Optional[list[int]] = None,
  ):
    self.model = model
    self.vocabulary_size = vocabulary_size
    self.prompt_text_ids = prompt_text_ids
    self.config = config
    self.model_dir = os.path.abspath(model_dir)
    self.learning_rate = learning_rate
    self.is_primary = jax.process_index() == 0
    self.partitioner = part = partitioner or partitioning.Partitioner()
    part.check_batch_size(config.batch_size)
    part.check_batch_size(config.batch_size // config.num_microbatches)
    self.state_init = TrainStateInitializer(
      model,
      optimizer_factory,
      learning_rate,
      part,
      model.input_shapes(config.batch_size, config.task_feature_lengths),
    )
    self.optimizer = self.state_init.optimizer
    self.data = DataStream(config.batch_size, config.seed, data_spec)
    self.checkpointer = checkpointing.Checkpointer(
      os.path.join(self.model_dir, "checkpoints"),
      keep=config.keep_checkpoints,
      async_save=config.async_checkpointing,
    )
    # Refuse an incompatible MODEL_DIR (another model, another data stream)
    # before anything else happens; a damaged step is dealt with at restore.
    self.state_init.check_checkpoints(self.checkpointer, self.data)
    self.initial_checkpoint_path = initial_checkpoint_path
    self.summaries = summaries.Summaries(self.model_dir, enabled=self.is_primary)
    self.last_metric_eval: dict[str, float] = {}
    # Rows over the batch axes, the rest replicated: one sharding for features of any rank
    # (an encoder-only classifier's labels are [batch]).
    batch_sharding = part.batch_sharding(1)
    state_shardings = self.state_init.state_shardings
    self._train_step = jax.jit(
      functools.partial(
        train_step,
        model=model,
        optimizer=self.optimizer,
        learning_rate=learning_rate,
        num_microbatches=config.num_microbatches,
      ),
      in_shardings=(state_shardings, batch_sharding, part.replicated),
      out_shardings=(state_shardings, part.replicated),
      donate_argnums=(0,),
    )
    self._eval_step = jax.jit(
      functools.partial(eval_step, model=model),
      in_shardings=(state_shardings.params, batch_sharding),
      out_shardings=part.replicated,
    )
    self._compiled_step = None
    self.flops_per_step = model.flops_per_step(config.batch_size, config.task_feature_lengths)
    self.tokens_per_step = model.tokens_per_step(config.batch_size, config.task_feature_lengths)

  @property
  def abstract_params(self) -> PyTree:
    """The parameters' ShapeDtypeStructs with their shardings."""
    return self.state_init.abstract_params

  @property
  def abstract_opt_state(self) -> PyTree:
    """The optimizer state's ShapeDtypeStructs with their shardings."""
    return self.state_init.abstract_opt_state

  # ---- state ---------------------------------------------------------------
  def fresh_state(self) -> TrainState:
    """A new train state: parameters from the seed (created from their shapes,
    placed straight into their shardings; see BaseModel.init_params), or from
    INITIAL_CHECKPOINT_PATH when fine-tuning, the optimizer's initial state and step 0."""
    return self.state_init.fresh(self.config.seed, self.initial_checkpoint_path, self.prompt_text_ids)

  def compile_train_step(self, state: TrainState, batch: Batch, rng: jax.Array):
    """Compiles the train step for these arguments' shapes and shardings ahead
    of time (loaded from the persistent compilation cache when it holds it;
    see t5lite.runtime.setup_compilation_cache) and keeps it for `train_step`.
    Returns the compiled step."""
    with self.partitioner.context():
      self._compiled_step = self._train_step.lower(state, batch, rng).compile()
    return self._compiled_step

  def train_step(self, state: TrainState, batch: Batch, rng: jax.Array):
    """(new state, metrics) of one optimizer step; the state is donated.

    Uses the step `compile_train_step` compiled; arguments it was not compiled
    for (another batch shape, dtype or sharding: the compiled step refuses them
    before running, with a TypeError or ValueError) go through the jitted step,
    which compiles what it needs."""
    with self.partitioner.context():
      if self._compiled_step is None:
        return self._train_step(state, batch, rng)
      try:
        return self._compiled_step(state, batch, rng)
      except (TypeError, ValueError):  # refused before running: nothing was donated
        return self._train_step(state, batch, rng)

  def restore_or_init(
    self, log: Callable[[str], None] = print, warn: Optional[Callable[[str], None]] = None
  ) -> tuple[TrainState, int]:
    """(state, rows of the data stream consumed): the newest readable checkpoint
    in MODEL_DIR (a damaged newer one is moved aside with a warning, see
    Checkpointer.restore_latest), else a fresh (or fine-tuning) state at row 0.

    Raises ValueError for a checkpoint of another model, optimizer or data
    stream, checkpointing.DamagedCheckpointError when no checkpoint is readable."""
    found = self.state_init.restore_latest(self.checkpointer, self.data, log, warn=warn or log)
    if found is not None:
      return found
    self._startup_log(
      "no checkpoint in MODEL_DIR: creating the train state"
      + (" from INITIAL_CHECKPOINT_PATH ..." if self.initial_checkpoint_path else " ...")
    )
    return self.fresh_state(), 0

  def save(self, state: TrainState, rows_consumed: int) -> None:
    """Saves the state and the data position (rows of the stream consumed)."""
    meta = dict(self.data.position_meta(rows_consumed), model=type(self.model).__name__)
    if self.vocabulary_size is not None:
      meta["vocabulary_size"] = int(self.vocabulary_size)
    if self.state_init.peft:  # the adapters only, and the base they apply to
      meta["base_checkpoint"] = self.state_init.base_checkpoint
      meta["adapters"] = peft.describe(self.model.config)
    self.checkpointer.save(int(state.step), self.state_init.trained(state.params), state.opt_state, meta)

  # ---- loop ----------------------------------------------------------------
  def evaluate(self, params: PyTree, batches: Iterator[Batch], step: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    local = self.config.batch_size // jax.process_count()
    for batch in batches:
      if len(next(iter(batch.values()))) != local:
        break
      with self.partitioner.context():
        m = jax.device_get(self._eval_step(params, self.partitioner.global_batch(batch, self.config.batch_size)))
      for k, v in m.items():  # scalars, and a mixture of experts' per-layer expert counts
        totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
    if not totals:
      return {}
    tokens = max(float(totals["target_tokens"]), 1.0)
    result = {
      "loss": float(totals["loss_sum"]) / tokens,
      "z_loss": float(totals["z_loss_sum"]) / tokens,
      "accuracy": float(totals["correct"]) / tokens,
      "target_tokens": float(totals["target_tokens"]),
    }
    # A mixture of experts' routing on the eval split (eval capacity factor): moe/* as in training.
    result.update({k: float(v) for k, v in self.model.train_metrics(totals).items()})
    self.summaries.write(step, "eval", result)
    return result

  def _metric_eval(self, fn, params: PyTree, step: int, write: Callable[[str], None]) -> dict[str, float]:
    flat = {f"{task}/{name}": float(v) for task, m in fn(params, step).items() for name, v in m.items()}
    if flat:
      self.summaries.write(step, "infer_eval", flat)
      write(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(flat.items())))
    self.last_metric_eval = flat
    return flat

  def train(
    self,
    train_batches: Callable[[int], Iterator[Batch]],
    eval_batches: Optional[Callable[[], Iterator[Batch]]] = None,
    log: Callable[[str], None] = print,
    metric_eval: Optional[Callable[[PyTree, int], Mapping[str, Mapping[str, float]]]] = None,
    metric_eval_every: int = 0,
    on_start: Optional[Callable[[int], None]] = None,
  ) -> dict[str, float]:
    """Trains to `train_steps`; `train_batches(start_row)` yields this process's
    part of each global batch of the data stream from row `start_row` on.

    `on_start(step)` runs once the state is restored (or created) and checked,
    before the first step (`t5lite train` writes the run's config.gin there:
    `train.train`'s `on_start` is `gin_entry.write_config`).

    `metric_eval(params, step) -> {task: {metric: value}}` (decoding and the
    task's metrics, see `evaluation.MetricEvaluator` and
    `evaluation.metric_eval_fn`) runs every
    `metric_eval_every` steps and at the end; its values are written as the
    'infer_eval' split of the summaries."""
    cfg = self.config
    startup = self._startup_log
    t0 = time.perf_counter()
    state, rows = self.restore_or_init(log, warn=lambda message: print(message, file=sys.stderr))
    jax.block_until_ready(state)  # the time of the whole state, not of its dispatch
    start_step = int(state.step)
    startup(
      f"train state ready in {time.perf_counter() - t0:.2f} s "
      f"({f'restored step {start_step}' if start_step else 'step 0'})"
    )
    self.state_init.write_model_info(self.model_dir)
    if on_start is not None:
      on_start(start_step)
    if start_step >= cfg.train_steps:
      log(f"{self.model_dir} is already at step {start_step} >= TRAIN_STEPS={cfg.train_steps}; nothing to do.")
      return {}
    if start_step:
      log(f"resuming from step {start_step} in {self.checkpointer.directory}")
    rng = jax.random.key(cfg.seed + 1)
    batches = (self.partitioner.global_batch(b, cfg.batch_size) for b in train_batches(rows))
    last_metrics: dict[str, float] = {}
    last_saved = start_step if start_step else None
    progress = summaries.progress_bar(start_step, cfg.train_steps, enabled=cfg.progress and self.is_primary)
    window_start, window_steps, compile_done = time.perf_counter(), 0, False
    step = start_step
    try:
      t0 = time.perf_counter()
      first = next(batches)
      startup(f"first batch in {time.perf_counter() - t0:.2f} s; compiling the train step ...")
      t0 = time.perf_counter()
      self.compile_train_step(state, first, rng)
      startup(f"train step compiled in {time.perf_counter() - t0:.2f} s")
      batches = itertools.chain([first], batches)
      t0 = time.perf_counter()
      while step < cfg.train_steps:
        state, metrics = self.train_step(state, next(batches), rng)
        rows += cfg.batch_size
        step += 1
        window_steps += 1
        if not compile_done:
          jax.block_until_ready(metrics)
          compile_done = True
          startup(f"first step in {time.perf_counter() - t0:.2f} s")
          window_start, window_steps = time.perf_counter(), 0
        progress.update(1)
        is_summary = step % cfg.summary_every == 0 or step == cfg.train_steps
        is_ckpt = step % cfg.checkpoint_every == 0 or step == cfg.train_steps
        if is_summary or is_ckpt:
          m = {k: float(v) for k, v in jax.device_get(metrics).items()}
          if not math.isfinite(m["loss"]):
            raise FloatingPointError(
              f"Loss is {m['loss']} at step {step}; stopping. The last good checkpoint is "
              f"{'step ' + str(last_saved) if last_saved else 'none'} in {self.checkpointer.directory}."
            )
          if is_summary and window_steps:
            elapsed = time.perf_counter() - window_start
            step_s = elapsed / window_steps
            m["step_time_s"] = step_s
            m["tokens_per_s"] = self.tokens_per_step / step_s
            m["flops_per_s"] = self.flops_per_step / step_s
            util = throughput.mfu(m["flops_per_s"])
            if util is not None:
              m["mfu"] = util
            window_start, window_steps = time.perf_counter(), 0
          if is_summary:
            self.summaries.write(step, "train", m)
            progress.set_postfix(summaries.progress_postfix(m))
            last_metrics = m
          if is_ckpt:
            self.save(state, rows)
            last_saved = step
        if eval_batches is not None and cfg.eval_every and step % cfg.eval_every == 0:
          paused = time.perf_counter()
          result = self.evaluate(state.params, eval_batches(), step)
          window_start += time.perf_counter() - paused  # evaluation is not step time
          if result:
            progress.write(f"step {step}: eval loss {result['loss']:.4f} accuracy {result['accuracy']:.4f}")
        if metric_eval is not None and metric_eval_every and (step % metric_eval_every == 0 or step == cfg.train_steps):
          paused = time.perf_counter()
          self._metric_eval(metric_eval, state.params, step, progress.write)
          window_start += time.perf_counter() - paused
      if eval_batches is not None and cfg.eval_every and step % cfg.eval_every:
        self.evaluate(state.params, eval_batches(), step)
    finally:
      progress.close()
      self.checkpointer.wait()
      self.summaries.flush()
    self.state = state
    return last_metrics

  def _startup_log(self, message: str) -> None:
    """Start-up progress on stderr, as it happens (primary process only)."""
    if self.is_primary:
      print(f"startup: {message}", file=sys.stderr, flush=True)

  def close(self) -> None:
    self.checkpointer.close()
    self.summaries.close()

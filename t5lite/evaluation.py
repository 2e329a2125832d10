"""Metric evaluation: decode a task split with a `Predictor` and score it with seqio's Evaluator.

Used by both the trainer's periodic evaluation (`metric_eval_fn`, INFER_EVAL_EVERY) and
`t5lite eval` (`t5lite.eval.evaluate`). seqio does the evaluation proper: it caches the
split, calls our predict and score functions, decodes and postprocesses the outputs and
applies each task's metric functions (t5lite.metrics has the ones seqio lacks). The task or
mixture must be registered first (`import t5lite_tasks`, or the module that registers it).
`decode_options` turns the decoding settings `t5lite eval` and `t5lite infer` share into
checked `DecodeOptions`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from t5lite import features, inference, partitioning
from t5lite.models.model import BaseModel, DecodeOptions

# DecodeOptions field -> the gin macro that sets it in runs/infer.gin and runs/eval.gin.
DECODE_MACROS = {
  "max_decode_len": "MAX_DECODE_LEN",
  "beam_size": "BEAM_SIZE",
  "alpha": "LENGTH_PENALTY_ALPHA",
  "temperature": "TEMPERATURE",
  "top_k": "TOP_K",
  "top_p": "TOP_P",
}


def decode_options(
  task_feature_lengths: Mapping[str, int],
  *,
  method: str = "greedy",
  max_decode_len: Optional[int] = None,
  **settings: Any,
) -> DecodeOptions:
  """DecodeOptions from the decoding settings of `t5lite infer` and `t5lite eval`.

  Args:
    task_feature_lengths: the task's feature lengths; `max_decode_len` None
      decodes up to its 'targets' length (64 without one).
    method: 'greedy', 'sample' or 'beam' (DECODE_METHOD).
    max_decode_len: the most tokens to decode (MAX_DECODE_LEN), or None.
    **settings: other DecodeOptions fields (beam_size, alpha, temperature,
      top_k, top_p), as the gin macros in DECODE_MACROS set them.

  Every setting given is checked whatever the method (a BEAM_SIZE=0 left in a
  gin file is an error before someone switches to beam search), and errors
  name the gin macro.

  Raises:
    ValueError: an unknown method or option; checks.SettingError (a
      ValueError) for a value of the wrong type or range, e.g.
      `BEAM_SIZE=0 must be an integer >= 1`.
  """
  given = dict(settings) if max_decode_len is None else {"max_decode_len": max_decode_len, **settings}
  checked = inference.check_decode_settings(given, DECODE_MACROS)
  checked.setdefault("max_decode_len", task_feature_lengths.get("targets", 64))
  return DecodeOptions(method=method, **checked)


class MetricEvaluator:
  """seqio's Evaluator for one task or mixture, driven by a `Predictor`.

  Built once (seqio caches the split's examples and targets); call it with a
  predictor and a step to get {task: {metric: value}} (floats; non-scalar
  metrics are left out). With `output_dir`, seqio's loggers write TensorBoard
  events and JSON there (process 0 only). In a multi-process run every process
  decodes its share of the examples and the metrics are computed on process 0;
  every process must call it.

  Raises (on construction):
    ValueError: an unknown task or mixture, or a split it does not have.
  """

  def __init__(
    self,
    model: BaseModel,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    *,
    split: str = "validation",
    output_dir: Optional[str] = None,
    num_examples: Optional[int] = None,
    seed: int = 0,
  ):
    import seqio  # pylint: disable=g-import-not-at-top

    from t5lite.data import pipeline, registration  # pylint: disable=g-import-not-at-top

    task = registration.get_task_or_mixture(mixture_or_task_name)  # clear error for an unknown name
    if split not in task.splits:
      raise ValueError(f"Split {split!r} is not in {mixture_or_task_name!r}; valid: {sorted(task.splits)}.")
    self.model = model
    primary = jax.process_index() == 0
    loggers = [seqio.PyLoggingLogger, seqio.JSONLogger, seqio.TensorBoardLogger] if output_dir and primary else []
    if loggers:
      os.makedirs(output_dir, exist_ok=True)
    self.evaluator = seqio.Evaluator(
      mixture_or_task_name,
      feature_converter=pipeline.feature_converter(model.feature_converter_cls, pack=False),
      eval_split=split,
      use_cached=False,
      seed=seed,
      sequence_length=dict(task_feature_lengths),
      num_examples=num_examples,
      logger_cls=loggers,
      log_dir=output_dir if loggers else None,
    )

  @staticmethod
  def _examples(ds, rows_of_this_process: bool):
    items = list(ds.as_numpy_iterator())
    if rows_of_this_process and jax.process_count() > 1:
      items = items[jax.process_index() :: jax.process_count()]
    index = [int(i) for i, _ in items]
    feats = {k: np.stack([f[k] for _, f in items]) for k in (items[0][1] if items else {})}
    return index, feats

  def __call__(self, predictor: inference.Predictor, step: int) -> dict[str, dict[str, float]]:
    def predict_fn(ds, model_feature_shapes=None):
      del model_feature_shapes
      index, feats = self._examples(ds, True)
      inputs = features.prompts(feats) if index else np.zeros((0, 1), np.int32)
      tokens, _ = predictor.predict_tokens(inputs)
      # Fixed-length rows (padding after EOS): seqio stacks them; its
      # vocabulary's decode stops at EOS.
      return _gather([(i, row) for i, row in zip(index, tokens)])

    def score_fn(ds, model_feature_shapes=None):
      del model_feature_shapes
      index, feats = self._examples(ds, True)
      scores = predictor.score_examples(feats) if index else []
      return _gather([(i, float(s)) for i, s in zip(index, scores)])

    metrics_future, _ = self.evaluator.evaluate(
      compute_metrics=jax.process_index() == 0, step=step, predict_fn=predict_fn, score_fn=score_fn
    )
    metrics = metrics_future.result() if metrics_future is not None else {}
    return {task: {k: float(v) for k, v in m.items() if np.ndim(v) == 0} for task, m in metrics.items()}


def _gather(pairs: list) -> list:
  """Every process's (index, value) pairs, on every process."""
  if jax.process_count() == 1:
    return pairs
  import pickle  # pylint: disable=g-import-not-at-top

  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  blob = np.frombuffer(pickle.dumps(pairs), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([blob.size], np.int32))).reshape(-1)
  padded = np.zeros((int(sizes.max()),), np.uint8)
  padded[: blob.size] = blob
  blobs = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  out = []
  for b, n in zip(blobs, sizes):
    out.extend(pickle.loads(b[:n].tobytes()))
  return out


def metric_eval_fn(
  model: BaseModel,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  partitioner: partitioning.Partitioner,
  batch_size: int,
  split: str = "validation",
  num_examples: Optional[int] = None,
  seed: int = 0,
  output_dir: Optional[str] = None,
) -> Callable[[Any, int], dict[str, dict[str, float]]]:
  """The trainer's `metric_eval(params, step) -> {task: {metric: value}}` callback.

  Decodes `num_examples` examples (None: all) of `split` greedily, up to the
  'targets' length, with the parameters being trained, and scores them with
  the task's metric functions. `batch_size` is the global batch size (each
  process decodes batch_size / process_count rows at a time); `partitioner`
  is the trainer's, so the parameters are used in place. The Predictor is
  built at the first call and reused (its compiled functions too).

  Raises:
    ValueError: an unknown task or mixture, or a split it does not have.
  """
  evaluator = MetricEvaluator(
    model,
    mixture_or_task_name,
    task_feature_lengths,
    split=split,
    num_examples=num_examples,
    seed=seed,
    output_dir=output_dir,
  )
  holder = {}

  def fn(params, step):
    if "predictor" not in holder:
      holder["predictor"] = inference.Predictor(
        model,
        params,
        batch_size=batch_size // jax.process_count(),
        partitioner=partitioner,
        task_feature_lengths=task_feature_lengths,
        options=decode_options(task_feature_lengths),
      )
    holder["predictor"].params = params
    return evaluator(holder["predictor"], step)

  return fn

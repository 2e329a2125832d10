"""Evaluation entry point: seqio's Evaluator over one checkpoint or all of a run.

    python -m t5lite.eval --gin_file=runs/quickstart_finetune/config.gin \\
        --gin_file=runs/eval.gin --gin.EVAL_OUTPUT_DIR=\\"/tmp/eval\\"

seqio does the evaluation proper: it caches the split, calls our predict and
score functions, decodes and postprocesses the outputs and applies each
task's metric functions (t5lite.metrics has the ones seqio lacks). Its
loggers write the scores to TensorBoard event files and to
`{task}-metrics.jsonl` (with the predictions in `{task}-{step}.jsonl`) under
EVAL_OUTPUT_DIR. This module adds `results.json` there: {step: {task:
{metric: value}}}, and skips steps already in it when run again. With
CHECKPOINT_STEPS = 'all' every checkpoint of CHECKPOINT_PATH is evaluated,
oldest first; 'latest' (the default) takes the newest; a list takes those.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import numpy as np

from t5lite import checkpointing, inference, partitioning
from t5lite.models.model import BaseModel, DecodeOptions, DecoderOnlyModel

REQUIRED_MACROS = ("EVAL_OUTPUT_DIR", "CHECKPOINT_PATH", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "MODEL")


def _steps_to_run(checkpoint_path: str, checkpoint_steps: Union[str, int, Sequence[int]]) -> list[tuple[int, str]]:
  found = checkpointing.list_checkpoints(checkpoint_path)
  if not found:
    checkpointing.resolve_checkpoint(checkpoint_path)  # raises the clear error
  if checkpoint_steps == "all":
    return found
  if checkpoint_steps == "latest":
    return found[-1:]
  wanted = [checkpoint_steps] if isinstance(checkpoint_steps, int) else list(checkpoint_steps)
  have = {s: d for s, d in found}
  missing = [s for s in wanted if s not in have]
  if missing:
    raise ValueError(f"CHECKPOINT_STEPS {missing} not found under {checkpoint_path!r}; it has steps {sorted(have)}.")
  return [(s, have[s]) for s in wanted]


def _prompts(model: BaseModel, feats: Mapping[str, np.ndarray]) -> np.ndarray:
  """Inputs to decode from, out of seqio model features."""
  if "encoder_input_tokens" in feats:
    return feats["encoder_input_tokens"]
  if not isinstance(model, DecoderOnlyModel) or "decoder_causal_attention" not in feats:
    raise ValueError("decoding needs inputs: evaluate a decoder-only model on a prefix-LM (inputs/targets) task")
  # PrefixLM features: the first sum(causal) - 1 target tokens are the inputs.
  causal = feats["decoder_causal_attention"]
  targets = feats["decoder_target_tokens"]
  n_inputs = causal.sum(axis=1) - 1
  out = np.zeros((len(targets), int(n_inputs.max(initial=1))), np.int32)
  for r, n in enumerate(n_inputs):
    out[r, :n] = targets[r, :n]
  return out


class MetricEvaluator:
  """seqio's Evaluator for one task or mixture, driven by a `Predictor`.

  Built once (seqio caches the split's examples and targets); call it with a
  predictor and a step to get {task: {metric: value}}. With `output_dir`,
  seqio's loggers write TensorBoard events and JSON there (process 0 only).
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

    import t5lite_tasks  # pylint: disable=g-import-not-at-top,unused-import
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
      feature_converter=pipeline.feature_converter(model.FEATURE_CONVERTER, pack=False),
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
    model = self.model

    def predict_fn(ds, model_feature_shapes=None):
      del model_feature_shapes
      index, feats = self._examples(ds, True)
      inputs = _prompts(model, feats) if index else np.zeros((0, 1), np.int32)
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


def evaluate(
  *,
  model: BaseModel,
  checkpoint_path: str,
  output_dir: str,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  split: str = "validation",
  checkpoint_steps: Union[str, int, Sequence[int]] = "latest",
  batch_size: int = 8,
  method: str = "greedy",
  max_decode_len: Optional[int] = None,
  beam_size: int = 4,
  alpha: float = 0.6,
  num_examples: Optional[int] = None,
  seed: int = 0,
  data_dir: Optional[str] = None,
  partitioner: Optional[partitioning.Partitioner] = None,
) -> dict[int, dict[str, dict[str, float]]]:
  """Evaluates the chosen checkpoints; returns {step: {task: {metric: value}}}."""
  if data_dir:
    from t5lite.data import sources  # pylint: disable=g-import-not-at-top

    sources.set_data_dir(data_dir)
  options = DecodeOptions(
    method=method,
    max_decode_len=max_decode_len or task_feature_lengths.get("targets", 64),
    beam_size=beam_size,
    alpha=alpha,
  )
  steps = _steps_to_run(checkpoint_path, checkpoint_steps)
  os.makedirs(output_dir, exist_ok=True)
  results_path = os.path.join(output_dir, "results.json")
  results: dict[str, Any] = {}
  if os.path.exists(results_path):
    with open(results_path, encoding="utf-8") as f:
      results = json.load(f)
  todo = [(s, d) for s, d in steps if str(s) not in results]
  if not todo:
    return {int(k): v for k, v in results.items()}
  metric_evaluator = MetricEvaluator(
    model,
    mixture_or_task_name,
    task_feature_lengths,
    split=split,
    output_dir=output_dir,
    num_examples=num_examples,
    seed=seed,
  )
  partitioner = partitioner or partitioning.Partitioner()
  abstract, _ = inference.Predictor.shardings(model, partitioner)
  predictor = None
  for step, step_dir in todo:
    start = time.time()
    params = checkpointing.load_params(step_dir, abstract, what="CHECKPOINT_PATH")
    if predictor is None:
      predictor = inference.Predictor(
        model,
        params,
        batch_size=batch_size,
        partitioner=partitioner,
        task_feature_lengths=task_feature_lengths,
        options=options,
        seed=seed,
        step=step,
      )
    else:
      predictor.params, predictor.step = params, step  # same shardings: the compiled functions are reused
    results[str(step)] = metric_evaluator(predictor, step)
    results[str(step)]["_seconds"] = round(time.time() - start, 2)
    if jax.process_index() == 0:
      tmp = results_path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True)
      os.replace(tmp, results_path)
  return {int(k): v for k, v in results.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
  from t5lite import train  # pylint: disable=g-import-not-at-top

  rc, results = train.run_gin_entry(argv, "t5lite.eval", "evaluate", REQUIRED_MACROS, "eval")
  for step in sorted(results or {}):
    metrics = {t: m for t, m in results[step].items() if not t.startswith("_")}
    print(f"step {step}: {json.dumps(metrics, sort_keys=True)}")
  return rc


if __name__ == "__main__":
  from t5lite import runtime  # pylint: disable=g-import-not-at-top

  runtime.apply_process_settings()
  sys.exit(main())

"""Evaluation entry point: the task's metrics over one checkpoint or all of a run.

    python -m t5lite.eval --gin_file=runs/quickstart_finetune/config.gin \\
        --gin_file=runs/eval.gin --gin.EVAL_OUTPUT_DIR=\\"/tmp/eval\\"

`evaluate()` chooses the checkpoints and scores each with
`evaluation.MetricEvaluator` (seqio's Evaluator), whose loggers write the
scores to TensorBoard event files and to `{task}-metrics.jsonl` (with the
predictions in `{task}-{step}.jsonl`) under EVAL_OUTPUT_DIR. This module adds
`results.json` there: {step: {task: {metric: value}}}, and skips steps already
in it when run again. With CHECKPOINT_STEPS = 'all' every checkpoint of
CHECKPOINT_PATH is evaluated, oldest first; 'latest' (the default) takes the
newest; a list takes those. `main()` runs it from the command line through
`gin_entry`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping, Optional, Sequence, Union

import jax

from t5lite import checkpointing, evaluation, inference, partitioning
from t5lite.models.model import BaseModel


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
  vocabulary_model: Optional[str] = None,
  partitioner: Optional[partitioning.Partitioner] = None,
) -> dict[int, dict[str, dict[str, float]]]:
  """Evaluates the chosen checkpoints; returns {step: {task: {metric: value}}} for every step in results.json.

  Each step's entry also holds '_seconds', the time its evaluation took. The
  task or mixture must be registered (`import t5lite_tasks`, or the module
  that registers it). `vocabulary_model` (macro VOCABULARY_MODEL, which a
  run's config.gin carries): the SentencePiece model the default vocabulary
  uses, as in `train.train` (see `vocab.use_model_file`); None: the default.

  Raises:
    FileNotFoundError: no checkpoint under `checkpoint_path`, no VOCABULARY_MODEL file.
    ValueError: a CHECKPOINT_STEPS step that is not there, a decoding setting
      out of range (named by its gin macro), an unknown task or split, a
      VOCABULARY_MODEL that is not a T5 SentencePiece model.
  """
  from t5lite.data import vocab  # pylint: disable=g-import-not-at-top

  vocab.use_model_file(vocabulary_model)  # before any task vocabulary is used
  if data_dir:
    from t5lite.data import data_dirs  # pylint: disable=g-import-not-at-top

    data_dirs.set_data_dir(data_dir)
  options = evaluation.decode_options(
    task_feature_lengths, method=method, max_decode_len=max_decode_len, beam_size=beam_size, alpha=alpha
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
  metric_evaluator = evaluation.MetricEvaluator(
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
  """`python -m t5lite.eval` / `t5lite eval`: evaluate() as the gin files configure it.

  Prints each step's metrics as a JSON line; returns the exit code (0, or 1
  after a one-line error, see gin_entry.run_gin_entry).
  """
  from t5lite import gin_entry  # pylint: disable=g-import-not-at-top

  rc, results = gin_entry.run_gin_entry(argv, "eval")
  for step in sorted(results or {}):
    metrics = {t: m for t, m in results[step].items() if not t.startswith("_")}
    print(f"step {step}: {json.dumps(metrics, sort_keys=True)}")
  return rc


if __name__ == "__main__":
  from t5lite import runtime  # pylint: disable=g-import-not-at-top

  runtime.apply_process_settings()
  sys.exit(main())

"""Training entry point: `python -m t5lite.train --gin_file=... --gin.MODEL_DIR=\\"...\\"`.

`train()` is what the run gin files configure (gin/runs/pretrain.gin,
finetune.gin); `main()` parses T5X-style flags, writes MODEL_DIR/config.gin
for a new run and calls it. Running the same command again resumes from the
latest checkpoint in MODEL_DIR, including the position in the data.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import optax

from t5lite import partitioning
from t5lite import trainer as trainer_lib
from t5lite.models.model import BaseModel
from t5lite.optim import adafactor, schedules


def _data(mixture_or_task_name, task_feature_lengths, batch_size, converter, pack, seed, data_dir, shuffle=True):
  """Host-local batch iterators for training (with skip) and evaluation."""
  from t5lite.data import pipeline, registration, sources  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  import t5lite_tasks  # pylint: disable=g-import-not-at-top,unused-import

  if data_dir:
    sources.set_data_dir(data_dir)
  task = registration.get_task_or_mixture(mixture_or_task_name)
  nproc = jax.process_count()
  if batch_size % nproc:
    raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by the {nproc} processes.")
  shard = seqio.ShardInfo(jax.process_index(), nproc) if nproc > 1 else None
  local = batch_size // nproc

  def train_batches(skip: int):
    ds = pipeline.get_dataset(
        mixture_or_task_name, task_feature_lengths, split="train", batch_size=local,
        converter=converter, pack=pack, shuffle=shuffle, seed=seed, shard_info=shard, num_epochs=None,
    )
    return ds.skip(skip).as_numpy_iterator()

  def eval_batches_factory(split: str, steps: int):
    if split not in task.splits:
      return None

    def eval_batches():
      ds = pipeline.get_dataset(
          mixture_or_task_name, task_feature_lengths, split=split, batch_size=local,
          converter=converter, pack=pack, shuffle=False, seed=seed, shard_info=shard, num_epochs=1,
      )
      return ds.take(steps).as_numpy_iterator()

    return eval_batches

  vocab_size = max(t.output_features["targets"].vocabulary.vocab_size for t in getattr(task, "tasks", [task]))
  return train_batches, eval_batches_factory, vocab_size


def train(
    *,
    model: BaseModel,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    train_steps: int,
    batch_size: int,
    optimizer: Callable[..., optax.GradientTransformation] = adafactor.adafactor,
    learning_rate: Optional[optax.Schedule] = None,
    eval_every: int = 0,
    eval_steps: int = 10,
    eval_split: str = "validation",
    checkpoint_every: int = 1000,
    keep_checkpoints: Optional[int] = 3,
    summary_every: int = 50,
    num_microbatches: int = 1,
    seed: int = 0,
    pack: bool = True,
    shuffle: bool = True,
    initial_checkpoint_path: Optional[str] = None,
    data_dir: Optional[str] = None,
    async_checkpointing: bool = True,
    progress: bool = True,
    partitioner: Optional[partitioning.Partitioner] = None,
    infer_eval_every: int = 0,
    infer_eval_examples: Optional[int] = None,
) -> dict[str, float]:
  """Trains `model` on a seqio task or mixture; returns the last train metrics.

  With `infer_eval_every`, every so many steps (and at the end) the model
  decodes `infer_eval_examples` examples (None: all) of `eval_split` and the
  task's metric functions score them (seqio Evaluator); the scores go to the
  summaries ('infer_eval') and MODEL_DIR/infer_eval, and are returned among
  the metrics as 'infer_eval/{task}/{metric}'."""
  learning_rate = learning_rate or schedules.rsqrt(1.0, 10000)
  config = trainer_lib.TrainerConfig(
      train_steps=train_steps, batch_size=batch_size, task_feature_lengths=dict(task_feature_lengths),
      eval_every=eval_every, eval_steps=eval_steps, checkpoint_every=checkpoint_every,
      keep_checkpoints=keep_checkpoints, summary_every=summary_every, num_microbatches=num_microbatches,
      seed=seed, async_checkpointing=async_checkpointing, progress=progress,
  )
  train_batches, eval_factory, vocab_size = _data(
      mixture_or_task_name, task_feature_lengths, batch_size, model.FEATURE_CONVERTER, pack, seed, data_dir,
      shuffle,
  )
  if model.config.vocab_size < vocab_size:
    raise ValueError(
        f"The model's vocab_size={model.config.vocab_size} is smaller than the vocabulary of "
        f"{mixture_or_task_name!r} ({vocab_size} ids); set the model's vocab_size >= {vocab_size}."
    )
  trainer = trainer_lib.Trainer(
      model, optimizer, learning_rate, config, model_dir, initial_checkpoint_path=initial_checkpoint_path,
      partitioner=partitioner,
  )
  try:
    eval_batches = eval_factory(eval_split, eval_steps) if eval_every else None
    metric_eval = None
    if infer_eval_every:
      metric_eval = _metric_eval_fn(model, trainer, mixture_or_task_name, task_feature_lengths, eval_split,
                                    infer_eval_examples, seed, batch_size)
    metrics = trainer.train(train_batches, eval_batches, metric_eval=metric_eval, metric_eval_every=infer_eval_every)
    if metrics and getattr(trainer, "last_metric_eval", None):
      metrics.update({f"infer_eval/{k}": v for k, v in trainer.last_metric_eval.items()})
    return metrics
  finally:
    trainer.close()


def _metric_eval_fn(model, trainer, name, lengths, split, num_examples, seed, batch_size):
  """params, step -> {task: {metric: value}}: decode and score with the task's metrics."""
  from t5lite import eval as eval_lib, inference  # pylint: disable=g-import-not-at-top
  from t5lite.models.model import DecodeOptions  # pylint: disable=g-import-not-at-top

  evaluator = eval_lib.MetricEvaluator(model, name, lengths, split=split, num_examples=num_examples, seed=seed,
                                       output_dir=os.path.join(trainer.model_dir, "infer_eval"))
  holder = {}

  def fn(params, step):
    if "predictor" not in holder:
      holder["predictor"] = inference.Predictor(
          model, params, batch_size=batch_size // jax.process_count(), partitioner=trainer.partitioner,
          task_feature_lengths=lengths, options=DecodeOptions(max_decode_len=lengths.get("targets", 64)))
    holder["predictor"].params = params
    return evaluator(holder["predictor"], step)

  return fn


# --------------------------------------------------------------------------- #
# Command line (gin only here, at the edge).
# --------------------------------------------------------------------------- #
REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "BATCH_SIZE")


def parse_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """Splits T5X-style flags into gin files, gin bindings and search paths."""
  files, bindings, paths = [], [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    name, eq, value = arg.partition("=")
    if not eq and name in ("--gin_file", "--gin_search_paths", "--gin_bindings") and i + 1 < len(args):
      value, i = args[i + 1], i + 1
      eq = "="
    if name == "--gin_file" and eq:
      files.append(value)
    elif name == "--gin_bindings" and eq:
      bindings.append(value)
    elif name == "--gin_search_paths" and eq:
      paths.extend(p for p in value.split(",") if p)
    elif name.startswith("--gin.") and eq:
      bindings.append(f"{name[len('--gin.'):]} = {value}")
    else:
      raise SystemExit(
          f"Unknown flag {arg!r}. Use --gin_file=FILE, --gin.NAME=VALUE, --gin_bindings='NAME = VALUE' "
          "or --gin_search_paths=DIR,DIR."
      )
    i += 1
  if not files:
    raise SystemExit("Give at least one --gin_file (e.g. --gin_file=experiments/quickstart.gin).")
  return files, bindings, paths


def configure_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = (),
                  required: Sequence[str] = REQUIRED_MACROS) -> None:
  """Parses gin files (found in the cwd, the search paths or the installed gin/) and bindings.

  A `required` macro left at %gin.REQUIRED gets an error that names it."""
  import gin  # pylint: disable=g-import-not-at-top

  from t5lite import gin_paths  # pylint: disable=g-import-not-at-top

  gin.clear_config()
  _guard_gin_package_reader(gin)
  ours = gin_paths.gin_dir()
  for path in [*([ours] if ours else []), *search_paths, os.getcwd()]:
    gin.add_config_file_search_path(path)
  # gin logs an error for every search-path miss before it finds a file.
  quiet = _DropGinPathMisses()
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=True)
  except ValueError as e:
    msg = str(e)
    for macro in required:
      if msg.startswith(f"{macro}/macro.value set to `%gin.REQUIRED`"):
        raise ValueError(
            f"The required gin macro {macro} is not set: add --gin.{macro}=... or bind it in an experiment file."
        ) from e
    raise
  except IOError as e:
    raise FileNotFoundError(f"{e}. Gin files are looked up in {ours}, --gin_search_paths and the cwd.") from e
  finally:
    logging.getLogger().removeFilter(quiet)


def _guard_gin_package_reader(gin) -> None:
  """Keeps gin's package-path file check from crashing on a namespace package.

  gin looks for `runs/pretrain.gin` as a file of a Python package `runs` too;
  a folder named like one of our gin folders in the working directory (the
  `runs/` that `make train` writes, say) is then a namespace package without a
  file, and gin's check raises TypeError instead of saying "not here". This
  wraps each registered check so that such a folder counts as "not here" and
  the search goes on to the gin search paths. (gin keeps its readers in
  `gin.config._FILE_READERS`; if that changes, nothing is wrapped.)
  """
  readers = getattr(getattr(gin, "config", None), "_FILE_READERS", None)
  if not isinstance(readers, list):
    return
  for i, entry in enumerate(readers):
    reader, exists = entry
    if getattr(exists, "t5lite_guarded", False):
      continue

    def guarded(path, _exists=exists):
      try:
        return _exists(path)
      except TypeError:
        return False

    guarded.t5lite_guarded = True
    readers[i] = (reader, guarded)


class _DropGinPathMisses(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


def write_config(model_dir: str) -> Optional[str]:
  """Writes MODEL_DIR/config.gin (all bindings) for a run that starts from scratch."""
  import gin  # pylint: disable=g-import-not-at-top

  if jax.process_index() != 0:
    return None
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, "config.gin")
  checkpoints = os.path.join(model_dir, "checkpoints")
  if os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints)):
    return None  # resuming: keep the config of the run that started it
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(gin.config_str())
  os.replace(tmp, path)
  return path


def run_gin_entry(argv: Optional[Sequence[str]], module_name: str, fn_name: str, required: Sequence[str],
                  command: str) -> tuple[int, Any]:
  """The shared body of the gin entry points (train, infer, eval): parse the
  T5X-style flags, join a multi-process job, configure gin, call the
  configured `module_name.fn_name`. Returns (exit code, result); errors in the
  input are printed as `t5lite COMMAND: error: ...` with exit code 1."""
  import importlib  # pylint: disable=g-import-not-at-top

  import gin  # pylint: disable=g-import-not-at-top

  from t5lite import distributed  # pylint: disable=g-import-not-at-top

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  files, bindings, paths = parse_flags(sys.argv[1:] if argv is None else argv)
  distributed.maybe_initialize()  # before any jax computation
  try:
    configure_gin(files, bindings, paths, required=required)
    if command == "train":
      write_config(gin.query_parameter("%MODEL_DIR"))
    # The module gin configured (not __main__, when run with python -m).
    fn = getattr(importlib.import_module(module_name), fn_name)
    return 0, gin.get_configurable(fn)()
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    print(f"t5lite {command}: error: {e}", file=sys.stderr)
    return 1, None


def main(argv: Optional[Sequence[str]] = None) -> int:
  rc, metrics = run_gin_entry(argv, "t5lite.train", "train", REQUIRED_MACROS, "train")
  if rc:
    return rc
  import gin  # pylint: disable=g-import-not-at-top

  model_dir = gin.query_parameter("%MODEL_DIR")
  if metrics:
    print(f"done: step metrics {', '.join(f'{k}={v:.4g}' for k, v in sorted(metrics.items()))}")
  print(f"run directory: {os.path.abspath(model_dir)}")
  print(f"TensorBoard:   tensorboard --logdir {os.path.abspath(model_dir)}")
  return 0


if __name__ == "__main__":
  from t5lite import runtime  # pylint: disable=g-import-not-at-top

  runtime.apply_process_settings()  # before JAX starts computing (see t5lite.runtime)
  sys.exit(main())

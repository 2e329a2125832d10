"""Training entry point: `python -m t5lite.train --gin_file=... --gin.MODEL_DIR=\\"...\\"`.

`train()` is what the run gin files configure (gin/runs/pretrain.gin,
finetune.gin): data, trainer and evaluation for one run. `main()` runs it from
the command line through `gin_entry` (flags, gin, the task package), which
writes MODEL_DIR/config.gin at each start. Running the same command again
resumes from the latest checkpoint in MODEL_DIR, including the position in
the data.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import optax

from t5lite import checkpointing, evaluation, partitioning, runtime, train_state
from t5lite import trainer as trainer_lib
from t5lite.hf import files as hf_files
from t5lite.models.model import BaseModel
from t5lite.optim import adafactor, schedules


def _data(mixture_or_task_name, task_feature_lengths, batch_size, converter, pack, seed, data_dir, shuffle=True):
  """This process's batch iterators for training (from a row of the stream) and evaluation.

  Both read one stream for all processes and keep this process's rows of each
  global batch (`pipeline.host_batches`), so the batches do not depend on the
  number of processes. Also returns the text vocabularies of its tasks (the
  inputs', else the targets')."""
  from t5lite.data import data_dirs, pipeline, registration  # pylint: disable=g-import-not-at-top

  if data_dir:
    data_dirs.set_data_dir(data_dir)
  task = registration.get_task_or_mixture(mixture_or_task_name)
  common = dict(
    global_batch_size=batch_size,
    converter=converter,
    pack=pack,
    seed=seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  if batch_size % jax.process_count():
    raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by the {jax.process_count()} processes.")

  def train_batches(start_row: int):
    return _reading(
      pipeline.host_batches(
        mixture_or_task_name, task_feature_lengths, shuffle=shuffle, num_epochs=None, start_row=start_row, **common
      ),
      mixture_or_task_name,
    )

  def eval_batches_factory(split: str, steps: int):
    if split not in task.splits:
      return None

    def eval_batches():
      ds = pipeline.host_batches(
        mixture_or_task_name, task_feature_lengths, split=split, shuffle=False, num_epochs=1, **common
      )
      return _reading(ds.take(steps), mixture_or_task_name)

    return eval_batches

  tasks = getattr(task, "tasks", [task])
  # The text vocabulary: the inputs' (a classification task's targets are labels), else the targets'.
  vocabularies = [t.output_features.get("inputs", t.output_features["targets"]).vocabulary for t in tasks]
  return train_batches, eval_batches_factory, vocabularies


def check_num_classes(model: Any, mixture_or_task_name: str, tasks: Sequence[Any]) -> None:
  """Refuses a classification model whose num_classes differs from the task's declared classes
  (the number of names of its targets' ClassLabelVocabulary), naming both."""
  if getattr(model, "head", None) != "classification":
    return
  for t in tasks:
    names = getattr(t.output_features["targets"].vocabulary, "names", None)
    if names is not None and len(names) != model.num_classes:
      raise ValueError(
        f"EncoderOnlyModel.num_classes={model.num_classes} but task {t.name!r}"
        f"{'' if t.name == mixture_or_task_name else f' of {mixture_or_task_name!r}'} "
        f"declares {len(names)} classes {list(names)}; set num_classes = {len(names)}"
      )


def _reading(ds: Any, mixture_or_task_name: str):
  """Iterates a tf.data dataset as numpy batches; an error inside the input pipeline (a
  preprocessor's check, such as a label outside a task's classes) becomes a ValueError naming the
  task and TensorFlow's message. Raised in the caller's frame (not left inside a TensorFlow
  traceback), so the pipeline's iterator is released before the process exits: an iterator whose
  tf.numpy_function calls are still pending when Python shuts down hangs the exit."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  it = ds.as_numpy_iterator()
  while True:
    message = None
    try:
      batch = next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      message = (e.message or str(e)).strip().splitlines()[0]
      if "assertion failed:" in message:  # tf.debugging.Assert's data: "[Unknown label] [maybe] [...]"
        message = " ".join(re.findall(r"\[(.*?)\]", message.split("assertion failed:", 1)[1])).replace(" ;", ";")
    if message is not None:
      del it
      raise ValueError(f"the input pipeline of {mixture_or_task_name!r} failed: {message}")
    yield batch


def _prompt_text_ids(model: Any, vocabulary: Any) -> Optional[list[int]]:
  """The task vocabulary's ids of a soft prompt's init_text (PromptTuningConfig.init='text'), else None."""
  cfg = getattr(model.config, "prompt_tuning", None)
  if cfg is None or cfg.init != "text":
    return None
  ids = [int(i) for i in vocabulary.encode(cfg.init_text)]
  if not ids:
    raise ValueError(f"PromptTuningConfig.init_text={cfg.init_text!r} gives no token of the task's vocabulary")
  return ids


def check_vocabulary_size(
  vocab_size: int,
  vocab_source: str,
  mixture_or_task_name: str,
  model_dir: str,
  initial_checkpoint_path: Optional[str] = None,
) -> None:
  """Refuses a checkpoint this run would start from whose task vocabulary had another number of ids.

  The checkpoint is MODEL_DIR's newest one with a readable meta when there is
  one (a resume), else INITIAL_CHECKPOINT_PATH's. Its meta's
  `vocabulary_size` (written by the trainer, and by the Hugging Face
  converter: 32,100 for T5's spiece.model) must equal `vocab_size`, the
  number of ids of this run's task vocabulary (`vocab_source` says where it
  comes from); a Hugging Face directory's is that of its spiece.model. A
  checkpoint without the key (older runs, a Hugging Face directory without
  spiece.model) is not checked: its embedding rows are all the check has, and
  `train` compares those with the task already.

  Raises:
    ValueError: the sizes differ; the message gives both, where each comes
      from, and how to choose (VOCABULARY_MODEL, or another task).
  """
  ckpt_dir = os.path.join(model_dir, "checkpoints")
  found = None
  for step, _ in reversed(checkpointing.list_checkpoints(ckpt_dir)):
    try:
      found = ("MODEL_DIR", ckpt_dir, checkpointing.read_checkpoint_meta(ckpt_dir, "MODEL_DIR", step=step))
      break
    except checkpointing.DamagedCheckpointError:
      continue  # the trainer reports a damaged step and falls back to an older one
  if found is None and initial_checkpoint_path:
    meta = checkpointing.read_checkpoint_meta(initial_checkpoint_path, "INITIAL_CHECKPOINT_PATH")
    if not meta and hf_files.is_hf_dir(initial_checkpoint_path):  # its spiece.model, when it ships one
      meta = {"step": 0, "vocabulary_size": hf_files.spiece_vocabulary_size(initial_checkpoint_path)}
    found = ("INITIAL_CHECKPOINT_PATH", initial_checkpoint_path, meta)
  if found is None or found[2].get("vocabulary_size") is None:
    return
  setting, path, meta = found
  saved = int(meta["vocabulary_size"])
  if saved == vocab_size:
    return
  ours = f"this run's task {mixture_or_task_name!r} has a vocabulary of {vocab_size} ids ({vocab_source})"
  theirs = f"{setting}={path!r} (step {meta.get('step', '?')}) was trained with a vocabulary of {saved} ids"
  if setting == "MODEL_DIR":
    fix = (
      "Nothing was overwritten; resume with the vocabulary the run was started with (its VOCABULARY_MODEL is "
      "in MODEL_DIR/config.gin), or use a new MODEL_DIR."
    )
  else:
    fix = (
      "Set VOCABULARY_MODEL to the SentencePiece model the checkpoint was trained with (for a converted Hugging "
      f"Face checkpoint, the spiece.model of its directory), or choose a task whose vocabulary has {saved} ids."
    )
  raise ValueError(f"{theirs} (vocabulary_size in its checkpoint meta), but {ours}. {fix}")


def data_spec(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  converter: Union[type, str],
  pack: bool,
  shuffle: bool,
  seed: int,
) -> dict[str, Any]:
  """What the training data stream, and so a saved data position, depends on.

  `converter` is the seqio FeatureConverter class (or its short name); the spec
  records its short name ('enc_dec', 'lm', 'prefix_lm'), as checkpoints always have."""
  from t5lite.data import pipeline  # pylint: disable=g-import-not-at-top

  return {
    "mixture_or_task_name": mixture_or_task_name,
    "task_feature_lengths": {k: task_feature_lengths[k] for k in sorted(task_feature_lengths)},
    "feature_converter": pipeline.converter_name(converter),
    "pack": bool(pack),
    "shuffle": bool(shuffle),
    "seed": seed,
  }


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
  compilation_cache_dir: Optional[str] = None,
  vocabulary_model: Optional[str] = None,
  on_start: Optional[Callable[[str, int], Any]] = None,
) -> dict[str, float]:
  """Trains `model` on a seqio task or mixture; returns the last train metrics.

  `compilation_cache_dir` (macro COMPILATION_CACHE_DIR): JAX's persistent
  compilation cache, so that a restarted or resumed run loads its compiled
  train step instead of compiling it again. None: $T5LITE_COMPILATION_CACHE_DIR
  or ~/.cache/t5lite/jax_compilation_cache; 'none': off. A directory that
  cannot be written gets one warning and the run goes on without the cache
  (see t5lite.runtime.setup_compilation_cache).

  With `infer_eval_every`, every so many steps (and at the end) the model
  decodes `infer_eval_examples` examples (None: all) of `eval_split` and the
  task's metric functions score them (seqio Evaluator); the scores go to the
  summaries ('infer_eval') and MODEL_DIR/infer_eval, and are returned among
  the metrics as 'infer_eval/{task}/{metric}'.

  `vocabulary_model` (macro VOCABULARY_MODEL): a SentencePiece model file
  that the tasks built on the default vocabulary (the built-in ones) use for
  this run, e.g. the spiece.model of a Hugging Face T5 checkpoint (see
  `vocab.use_model_file`); None: the default vocabulary. The number of ids of
  the task's vocabulary goes into each checkpoint's meta, and a run that
  starts from (INITIAL_CHECKPOINT_PATH) or resumes a checkpoint whose meta
  gives another number is refused before any step (`check_vocabulary_size`).

  `on_start(model_dir, start_step)` runs once the run has restored (or
  created) its state and checked it, before the first step; `t5lite train`
  passes `gin_entry.write_config`, which records the run's gin config there,
  so a refused resume writes none.

  The task or mixture must be registered (`import t5lite_tasks`, or the module
  that registers it).

  Raises:
    ValueError: a setting out of range or of the wrong type (named by its gin
      macro), an unknown task, a model vocabulary smaller than the task's, a
      checkpoint in MODEL_DIR that does not fit this run, a VOCABULARY_MODEL
      that is not a T5 SentencePiece model, a checkpoint trained with another
      vocabulary size.
    FileNotFoundError: VOCABULARY_MODEL names no file.
    FloatingPointError: the loss became NaN (the last good checkpoint is kept).
  """
  from t5lite import checks  # pylint: disable=g-import-not-at-top
  from t5lite.data import vocab  # pylint: disable=g-import-not-at-top

  # Settings nothing below checks before work starts (TrainerConfig, the partitioner and the model check theirs).
  if not isinstance(model_dir, (str, os.PathLike)) or not str(model_dir).strip():
    raise ValueError(
      f"MODEL_DIR={model_dir!r} must be a path (a non-empty string), e.g. --gin.MODEL_DIR=\\\"/tmp/run\\\"."
    )
  checks.check_lengths("TASK_FEATURE_LENGTHS", task_feature_lengths)
  checks.check_int("INFER_EVAL_EVERY", infer_eval_every, minimum=0, hint=" (0: never)")
  checks.check_int("INFER_EVAL_EXAMPLES", infer_eval_examples, minimum=1, allow_none=True, hint=" (None: all)")
  train_state.make_optimizer(optimizer, learning_rate or 1.0, None)  # its hyper-parameters, before any data
  learning_rate = learning_rate or schedules.rsqrt(1.0, 10000)
  vocab.use_model_file(vocabulary_model)  # before any task vocabulary is used
  runtime.setup_compilation_cache(compilation_cache_dir)
  config = trainer_lib.TrainerConfig(
    train_steps=train_steps,
    batch_size=batch_size,
    task_feature_lengths=dict(task_feature_lengths),
    eval_every=eval_every,
    eval_steps=eval_steps,
    checkpoint_every=checkpoint_every,
    keep_checkpoints=keep_checkpoints,
    summary_every=summary_every,
    num_microbatches=num_microbatches,
    seed=seed,
    async_checkpointing=async_checkpointing,
    progress=progress,
  )
  if not checkpointing.list_checkpoints(str(model_dir)):  # a new LoRA / prompt-tuning run needs its base
    train_state.check_peft_base(model.config, initial_checkpoint_path)
  train_batches, eval_factory, vocabularies = _data(
    mixture_or_task_name,
    task_feature_lengths,
    batch_size,
    model.feature_converter_cls,
    pack,
    seed,
    data_dir,
    shuffle,
  )
  from t5lite.data import pipeline, registration  # pylint: disable=g-import-not-at-top

  task = registration.get_task_or_mixture(mixture_or_task_name)
  check_num_classes(model, mixture_or_task_name, getattr(task, "tasks", [task]))
  pipeline.feature_converter(model.feature_converter_cls, pack)  # refuses packing a classifier, before any work
  largest = max(vocabularies, key=lambda v: v.vocab_size)
  vocab_size, vocab_source = largest.vocab_size, vocab.describe_vocabulary(largest)
  if vocabulary_model is not None and not any(vocab.is_default_vocabulary(v) for v in vocabularies):
    print(
      f"warning: VOCABULARY_MODEL={vocabulary_model!r} does not apply to {mixture_or_task_name!r}: its tasks "
      "have vocabularies of their own (only tasks built on the default vocabulary follow it).",
      file=sys.stderr,
    )
  if model.config.vocab_size < vocab_size:
    raise ValueError(
      f"The model's vocab_size={model.config.vocab_size} is smaller than the vocabulary of "
      f"{mixture_or_task_name!r} ({vocab_size} ids); set the model's vocab_size >= {vocab_size}."
    )
  check_vocabulary_size(vocab_size, vocab_source, mixture_or_task_name, model_dir, initial_checkpoint_path)
  trainer = trainer_lib.Trainer(
    model,
    optimizer,
    learning_rate,
    config,
    model_dir,
    initial_checkpoint_path=initial_checkpoint_path,
    partitioner=partitioner,
    data_spec=data_spec(mixture_or_task_name, task_feature_lengths, model.feature_converter_cls, pack, shuffle, seed),
    vocabulary_size=vocab_size,
    prompt_text_ids=_prompt_text_ids(model, largest),
  )
  try:
    eval_batches = eval_factory(eval_split, eval_steps) if eval_every else None
    metric_eval = None
    if infer_eval_every:
      metric_eval = evaluation.metric_eval_fn(
        model,
        mixture_or_task_name,
        task_feature_lengths,
        partitioner=trainer.partitioner,
        batch_size=batch_size,
        split=eval_split,
        num_examples=infer_eval_examples,
        seed=seed,
        output_dir=os.path.join(trainer.model_dir, "infer_eval"),
      )
    metrics = trainer.train(
      train_batches,
      eval_batches,
      metric_eval=metric_eval,
      metric_eval_every=infer_eval_every,
      on_start=(lambda step: on_start(model_dir, step)) if on_start else None,
    )
    if metrics and trainer.last_metric_eval:
      metrics.update({f"infer_eval/{k}": v for k, v in trainer.last_metric_eval.items()})
    return metrics
  finally:
    trainer.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m t5lite.train` / `t5lite train`: train() as the gin files configure it.

  Returns the exit code: 0, or 1 after a one-line error (see gin_entry.run_gin_entry).
  """
  from t5lite import gin_entry  # pylint: disable=g-import-not-at-top

  rc, metrics = gin_entry.run_gin_entry(argv, "train", on_start=gin_entry.write_config)
  if rc:
    return rc
  model_dir = gin_entry.macro_value("MODEL_DIR")
  if metrics:
    print(f"done: step metrics {', '.join(f'{k}={v:.4g}' for k, v in sorted(metrics.items()))}")
  print(f"run directory: {os.path.abspath(model_dir)}")
  print(f"TensorBoard:   tensorboard --logdir {os.path.abspath(model_dir)}")
  return 0


if __name__ == "__main__":
  runtime.apply_process_settings()  # before JAX starts computing (see t5lite.runtime)
  sys.exit(main())

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

from t5lite import partitioning, runtime
from t5lite import trainer as trainer_lib
from t5lite.models.model import BaseModel
from t5lite.optim import adafactor, schedules


def _data(mixture_or_task_name, task_feature_lengths, batch_size, converter, pack, seed, data_dir, shuffle=True):
  """This process's batch iterators for training (from a row of the stream) and evaluation.

  Both read one stream for all processes and keep this process's rows of each
  global batch (`pipeline.host_batches`), so the batches do not depend on the
  number of processes."""
  from t5lite.data import pipeline, registration, sources  # pylint: disable=g-import-not-at-top
  import t5lite_tasks  # pylint: disable=g-import-not-at-top,unused-import

  if data_dir:
    sources.set_data_dir(data_dir)
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
    return pipeline.host_batches(
      mixture_or_task_name, task_feature_lengths, shuffle=shuffle, num_epochs=None, start_row=start_row, **common
    ).as_numpy_iterator()

  def eval_batches_factory(split: str, steps: int):
    if split not in task.splits:
      return None

    def eval_batches():
      ds = pipeline.host_batches(
        mixture_or_task_name, task_feature_lengths, split=split, shuffle=False, num_epochs=1, **common
      )
      return ds.take(steps).as_numpy_iterator()

    return eval_batches

  vocab_size = max(t.output_features["targets"].vocabulary.vocab_size for t in getattr(task, "tasks", [task]))
  return train_batches, eval_batches_factory, vocab_size


def data_spec(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  converter: str,
  pack: bool,
  shuffle: bool,
  seed: int,
) -> dict[str, Any]:
  """What the training data stream, and so a saved data position, depends on."""
  return {
    "mixture_or_task_name": mixture_or_task_name,
    "task_feature_lengths": {k: task_feature_lengths[k] for k in sorted(task_feature_lengths)},
    "feature_converter": converter,
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
  the metrics as 'infer_eval/{task}/{metric}'."""
  from t5lite import checks  # pylint: disable=g-import-not-at-top

  # Settings nothing below checks before work starts (TrainerConfig, the partitioner and the model check theirs).
  if not isinstance(model_dir, (str, os.PathLike)) or not str(model_dir).strip():
    raise ValueError(
      f"MODEL_DIR={model_dir!r} must be a path (a non-empty string), e.g. --gin.MODEL_DIR=\\\"/tmp/run\\\"."
    )
  checks.check_lengths("TASK_FEATURE_LENGTHS", task_feature_lengths)
  checks.check_int("INFER_EVAL_EVERY", infer_eval_every, minimum=0, hint=" (0: never)")
  checks.check_int("INFER_EVAL_EXAMPLES", infer_eval_examples, minimum=1, allow_none=True, hint=" (None: all)")
  trainer_lib.make_optimizer(optimizer, learning_rate or 1.0, None)  # its hyper-parameters, before any data
  learning_rate = learning_rate or schedules.rsqrt(1.0, 10000)
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
  train_batches, eval_factory, vocab_size = _data(
    mixture_or_task_name,
    task_feature_lengths,
    batch_size,
    model.FEATURE_CONVERTER,
    pack,
    seed,
    data_dir,
    shuffle,
  )
  if model.config.vocab_size < vocab_size:
    raise ValueError(
      f"The model's vocab_size={model.config.vocab_size} is smaller than the vocabulary of "
      f"{mixture_or_task_name!r} ({vocab_size} ids); set the model's vocab_size >= {vocab_size}."
    )
  trainer = trainer_lib.Trainer(
    model,
    optimizer,
    learning_rate,
    config,
    model_dir,
    initial_checkpoint_path=initial_checkpoint_path,
    partitioner=partitioner,
    data_spec=data_spec(mixture_or_task_name, task_feature_lengths, model.FEATURE_CONVERTER, pack, shuffle, seed),
  )
  try:
    eval_batches = eval_factory(eval_split, eval_steps) if eval_every else None
    metric_eval = None
    if infer_eval_every:
      metric_eval = _metric_eval_fn(
        model, trainer, mixture_or_task_name, task_feature_lengths, eval_split, infer_eval_examples, seed, batch_size
      )
    metrics = trainer.train(
      train_batches,
      eval_batches,
      metric_eval=metric_eval,
      metric_eval_every=infer_eval_every,
      on_start=lambda step: write_config(model_dir, step),
    )
    if metrics and getattr(trainer, "last_metric_eval", None):
      metrics.update({f"infer_eval/{k}": v for k, v in trainer.last_metric_eval.items()})
    return metrics
  finally:
    trainer.close()


def _metric_eval_fn(model, trainer, name, lengths, split, num_examples, seed, batch_size):
  """params, step -> {task: {metric: value}}: decode and score with the task's metrics."""
  from t5lite import eval as eval_lib, inference  # pylint: disable=g-import-not-at-top
  from t5lite.models.model import DecodeOptions  # pylint: disable=g-import-not-at-top

  evaluator = eval_lib.MetricEvaluator(
    model,
    name,
    lengths,
    split=split,
    num_examples=num_examples,
    seed=seed,
    output_dir=os.path.join(trainer.model_dir, "infer_eval"),
  )
  holder = {}

  def fn(params, step):
    if "predictor" not in holder:
      holder["predictor"] = inference.Predictor(
        model,
        params,
        batch_size=batch_size // jax.process_count(),
        partitioner=trainer.partitioner,
        task_feature_lengths=lengths,
        options=DecodeOptions(max_decode_len=lengths.get("targets", 64)),
      )
    holder["predictor"].params = params
    return evaluator(holder["predictor"], step)

  return fn


# --------------------------------------------------------------------------- #
# Command line (gin only here, at the edge).
# --------------------------------------------------------------------------- #
REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "BATCH_SIZE")


_FLAGS = ("--gin_file", "--gin_bindings", "--gin_search_paths")
_FLAG_USAGE = "use --gin_file=FILE, --gin.NAME=VALUE, --gin_bindings='NAME = VALUE' or --gin_search_paths=DIR,DIR"


def parse_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """Splits T5X-style flags into gin files, gin bindings and search paths.

  Raises:
    ValueError: an unknown flag (naming the closest real one), a flag without
      its value, or no --gin_file at all.
  """
  files, bindings, paths = [], [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    name, eq, value = arg.partition("=")
    if not eq and name in _FLAGS and i + 1 < len(args):
      value, i = args[i + 1], i + 1
      eq = "="
    if name == "--gin_file" and eq:
      files.append(value)
    elif name == "--gin_bindings" and eq:
      bindings.append(value)
    elif name == "--gin_search_paths" and eq:
      paths.extend(p for p in value.split(",") if p)
    elif name.startswith("--gin.") and eq:
      bindings.append(f"{name[len('--gin.') :]} = {value}")
    else:
      raise ValueError(_flag_problem(arg, name, bool(eq)))
    i += 1
  if not files:
    raise ValueError("give at least one --gin_file (e.g. --gin_file=experiments/quickstart.gin)")
  return files, bindings, paths


def _flag_problem(arg: str, name: str, has_value: bool) -> str:
  """What is wrong with a command-line argument parse_flags does not take, and the fix."""
  import difflib  # pylint: disable=g-import-not-at-top

  if name in _FLAGS or (name.startswith("--gin.") and not has_value):
    return f"{name} needs a value: {name}=VALUE"
  if not arg.startswith("-"):
    return f"unexpected argument {arg!r}; gin files are given as --gin_file={arg} ({_FLAG_USAGE})"
  close = difflib.get_close_matches(name, _FLAGS, n=1, cutoff=0.6)
  if close:
    return f"unknown flag {arg!r}; did you mean {close[0]}?"
  return f"unknown flag {arg!r}; {_FLAG_USAGE}"


# The run file each gin entry point needs, for messages that say what to include.
RUN_FILES = {"train": "runs/pretrain.gin", "infer": "runs/infer.gin", "eval": "runs/eval.gin"}
# Macros whose usual fix is a file rather than a flag.
_MACRO_FIXES = {"MODEL": "a model file defines it: give e.g. --gin_file=models/t5_1_1/small.gin before the run file"}


def configure_gin(
  files: Sequence[str],
  bindings: Sequence[str],
  search_paths: Sequence[str] = (),
  required: Sequence[str] = REQUIRED_MACROS,
  run_file: str = RUN_FILES["train"],
) -> None:
  """Parses gin files (found in the cwd, the search paths or the installed gin/) and bindings.

  Everything is checked before anything runs: files and bindings parse, every
  macro set on the command line is read somewhere (a mistyped name is not
  silently ignored), every macro read is set, and the `required` macros
  (run_file is the file that uses them) are set.

  Raises:
    FileNotFoundError: a gin file (or an include) not found; names the closest
      gin file there is.
    ValueError: any other mistake, in one line with the file and line where
      there is one: a syntax error, an unknown configurable, parameter or
      import, a macro set on the command line that nothing reads (naming the
      closest macro that is read), a macro read but never set, a required
      macro left unset.
  """
  import gin  # pylint: disable=g-import-not-at-top

  from t5lite import gin_paths  # pylint: disable=g-import-not-at-top

  gin.clear_config()
  _guard_gin_package_reader(gin)
  ours = gin_paths.gin_dir()
  known = getattr(gin.config, "_LOCATION_PREFIXES", [])
  for path in [*([ours] if ours else []), *search_paths, os.getcwd()]:
    if path not in known:
      gin.add_config_file_search_path(path)
  gin_dirs = [*([ours] if ours else []), *search_paths]
  # gin logs an error for every search-path miss before it finds a file.
  quiet = _DropGinPathMisses()
  logging.getLogger().addFilter(quiet)
  try:
    # One at a time, so that an error names the file or the binding it is in.
    for path in files:
      _parse_one(gin.parse_config_file, path, path, gin_dirs)
    for binding in bindings:
      _parse_one(gin.parse_config, binding, f"the binding {binding!r}", gin_dirs)
    _check_macros(gin, bindings, required, run_file)
    try:
      gin.finalize()
    except ValueError as e:
      raise ValueError(_required_problem(str(e)) or _one_line(e)) from None
  finally:
    logging.getLogger().removeFilter(quiet)


def _parse_one(parse: Callable[[str], Any], arg: str, source: str, gin_dirs: Sequence[str]) -> None:
  """parse(arg), with any error turned into _gin_parse_error's one-line error."""
  try:
    parse(arg)
  except Exception as e:  # pylint: disable=broad-except  # gin raises SyntaxError, TokenError, AttributeError, ...
    raise _gin_parse_error(e, source, gin_dirs) from e


def _gin_parse_error(e: Exception, source: str, gin_dirs: Sequence[str]) -> Exception:
  """A one-line error for a gin file or binding that does not parse.

  gin reports its errors with the location on extra lines, a syntax error as
  SyntaxError or tokenize.TokenError, an unknown module attribute as
  AttributeError; this puts each on one line with the fix."""
  import re  # pylint: disable=g-import-not-at-top
  import tokenize  # pylint: disable=g-import-not-at-top

  if isinstance(e, tokenize.TokenError):
    return ValueError(f"gin syntax error in {source}: a bracket or a string is not closed ({e.args[0]})")
  if isinstance(e, SyntaxError):
    where = f"{e.filename} line {e.lineno}" if e.filename else source
    detail = (e.msg or "").strip().splitlines()[-1].strip() if e.msg else "invalid syntax"
    return ValueError(
      f"gin syntax error in {where}: {detail} in `{(e.text or '').strip()}` (a value is a Python "
      "literal, a quoted string, @configurable or %MACRO)"
    )
  text = str(e)
  first = text.strip().splitlines()[0].strip() if text.strip() else type(e).__name__
  loc = re.search(r'In file "([^"]+)", line (\d+)\n\s*(.*)', text)
  where = f"{loc.group(1)} line {loc.group(2)}: `{loc.group(3).strip()}`" if loc else source
  if isinstance(e, OSError) and first.startswith("Unable to open file"):
    missing = re.match(r"Unable to open file: (.*?)\. Searched config paths", first)
    name = missing.group(1) if missing else first
    found = _closest(name, _gin_files(gin_dirs, name))
    return FileNotFoundError(
      f"gin file {name!r} not found{f' (included from {where})' if loc else ''}; gin files are looked up in "
      f"{', '.join(gin_dirs + ['the cwd'])}" + (f"; did you mean {found}?" if found else "")
    )
  fix = ""
  attr = re.match(r"Couldn't resolve selector (\S+); <module '([\w.]+)'.*has no attribute (\w+)", first)
  param = re.match(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", first)
  if attr:
    first = f"unknown configurable {attr.group(1)}: module {attr.group(2)} has no {attr.group(3)}"
    fix = _closest(attr.group(3), _module_names(attr.group(2)))
    fix = f"; did you mean {fix}?" if fix else ""
  elif param:
    fix = _closest(param.group(2), _parameter_names(param.group(1)))
    fix = f"; did you mean {fix}?" if fix else ""
  elif "No configurable matching" in first:
    name = re.search(r"No configurable matching (?:reference )?'@?([\w./]+?)(?:\(\))?'", first)
    module, _, attr = (name.group(1).split("/")[-1] if name else "").rpartition(".")
    fix = _closest(attr, _module_names(module)) if module else None
    fix = (
      f"; did you mean {module}.{fix}?"
      if fix
      else "; check the spelling, and that a gin file imports its module (e.g. `from t5lite.optim import adamw`)"
    )
  return ValueError(f"{first.rstrip('.')} (in {where}){fix}")


def _closest(name: str, candidates: Sequence[str]) -> Optional[str]:
  """The candidate most like `name` (case-insensitive, difflib), or None if none is close."""
  import difflib  # pylint: disable=g-import-not-at-top

  lower = {c.lower(): c for c in candidates}
  close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
  return lower[close[0]] if close else None


def _gin_files(gin_dirs: Sequence[str], missing: str) -> list[str]:
  """The .gin files under the gin directories (relative) and beside a missing path."""
  out = []
  for d in gin_dirs:
    for root, _, names in os.walk(d):
      out += [os.path.relpath(os.path.join(root, n), d) for n in names if n.endswith(".gin")]
  beside = os.path.dirname(missing)
  if beside and os.path.isdir(beside):
    out += [os.path.join(beside, n) for n in os.listdir(beside) if n.endswith(".gin")]
  return out


def _module_names(module_name: str) -> list[str]:
  """The public names of the imported module `module_name` (a full name or the
  alias a gin file imports it as, e.g. 'adamw' for t5lite.optim.adamw)."""
  names = set()
  for full, module in list(sys.modules.items()):
    if module is not None and (full == module_name or full.endswith("." + module_name)):
      names.update(n for n in dir(module) if not n.startswith("_"))
  return sorted(names)


def _parameter_names(selector: str) -> list[str]:
  """The parameters of the registered configurables whose name ends like `selector`."""
  import inspect  # pylint: disable=g-import-not-at-top

  import gin  # pylint: disable=g-import-not-at-top

  last = selector.split(".")[-1]
  names = []
  for key, configurable in gin.config._REGISTRY.items():  # pylint: disable=protected-access
    if key.split(".")[-1] == last:
      try:
        names += list(inspect.signature(configurable.wrapped).parameters)
      except (TypeError, ValueError):
        pass
  return names


def _command_line_macros(bindings: Sequence[str]) -> dict[str, str]:
  """{macro name: its binding} for the bindings that set a macro (NAME = VALUE)."""
  from gin import config_parser  # pylint: disable=g-import-not-at-top

  class _NoReferences(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_configurable_name, evaluate):
      return None

    def macro(self, macro_name):
      return None

  out = {}
  for binding in bindings:
    for statement in config_parser.ConfigParser(binding, _NoReferences()):
      if isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
        out["/".join(filter(None, (statement.scope, statement.selector)))] = binding
  return out


def _macros(gin) -> tuple[set[str], dict[str, str]]:
  """(the macros set, {macro read: the first binding that reads it}) in the parsed config."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  macro = gin.get_configurable(gin.config.macro)
  defined = {scope for scope, selector in config if selector == "gin.macro"}
  read: dict[str, str] = {}
  for (scope, selector), params in sorted(config.items()):
    for param, value in params.items():
      where = scope if selector == "gin.macro" else f"{'.'.join(selector.split('.')[-2:])}.{param}"
      for ref in gin.config.iterate_references(value, to=macro):
        read.setdefault("/".join(ref.scopes), where)
  return defined, read


def _check_macros(gin, bindings: Sequence[str], required: Sequence[str], run_file: str) -> None:
  """Raises ValueError for a command-line macro nothing reads, a macro read but never
  set, or a required macro no gin file uses (see configure_gin)."""
  defined, read = _macros(gin)
  for name, binding in _command_line_macros(bindings).items():
    if name in read:
      continue
    if name in required:
      raise ValueError(
        f"no gin file reads the macro {name} set on the command line: include the run file that "
        f"uses it (--gin_file={run_file})"
      )
    close = _closest(name, list(read))
    fix = f"did you mean {close} (--gin.{close}=...)?" if close else f"the macros read are {', '.join(sorted(read))}"
    raise ValueError(
      f"the macro {name} set on the command line ({binding!r}) is not read by any gin binding "
      f"(no %{name} in the gin files); {fix}"
    )
  for name in sorted(set(read) - defined):
    close = _closest(name, list(defined))
    fix = _MACRO_FIXES.get(name) or (f"did you mean %{close}?" if close else f"set it with --gin.{name}=...")
    raise ValueError(f"{read[name]} reads the macro %{name}, which no gin file or flag sets; {fix}")
  for name in required:
    if name not in defined:
      raise ValueError(
        f"no gin file uses the required macro {name}: include the run file (--gin_file={run_file}), after a model file"
      )


def _required_problem(message: str) -> Optional[str]:
  """gin's `X set to %gin.REQUIRED but not subsequently overridden` as what to set, or None."""
  import re  # pylint: disable=g-import-not-at-top

  match = re.match(r"(\S+?)(/macro\.value)? set to `%gin\.REQUIRED`", message)
  if not match:
    return None
  name = match.group(1)
  what = "macro" if match.group(2) else "setting"
  return f"The required gin {what} {name} is not set: add --gin.{name}=... or bind it in an experiment file."


def _one_line(e: BaseException) -> str:
  """An exception's message on one line, without gin's notes (the call site, a dump of the whole config)."""
  text = str(e).split(" in config string:")[0]
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  lines = [line for line in lines if not line.startswith("In call to configurable")]
  return " ".join(lines) or type(e).__name__


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


CONFIG_HISTORY_DIR = "config_history"
# True while run_gin_entry calls the configured function. Read and set on the
# imported module `t5lite.train` (`_entry_state()`), which is another module
# object than `__main__` under `python -m t5lite.train`.
_GIN_ENTRY_ACTIVE = False


def _entry_state():
  import importlib  # pylint: disable=g-import-not-at-top

  return importlib.import_module("t5lite.train")


def write_config(model_dir: str, start_step: int = 0) -> Optional[str]:
  """Writes the operative gin config of this start of a run (process 0 only).

  MODEL_DIR/config.gin always holds the config of the latest start, which is
  what `inference.load` and `--gin_file=MODEL_DIR/config.gin` read; every
  start also leaves MODEL_DIR/config_history/NNN_start_step_S.gin (the
  NNN-th start, at step S), so a run
  resumed with other settings keeps the record of each. Called once the
  checkpoint to resume from has been checked, so a refused resume writes
  nothing. Returns config.gin's path, or None off process 0 or without gin
  bindings (train() called from Python, not through a gin entry point)."""
  if jax.process_index() != 0 or not _entry_state()._GIN_ENTRY_ACTIVE:  # pylint: disable=protected-access
    return None
  import gin  # pylint: disable=g-import-not-at-top

  text = gin.config_str()
  if not text.strip():
    return None
  history = os.path.join(model_dir, CONFIG_HISTORY_DIR)
  os.makedirs(history, exist_ok=True)
  path = os.path.join(model_dir, "config.gin")
  number = 1 + sum(1 for name in os.listdir(history) if name.endswith(".gin"))
  for target in (os.path.join(history, f"{number:03d}_start_step_{start_step}.gin"), path):
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, target)
  return path


def run_gin_entry(
  argv: Optional[Sequence[str]], module_name: str, fn_name: str, required: Sequence[str], command: str
) -> tuple[int, Any]:
  """The shared body of the gin entry points (train, infer, eval): parse the
  T5X-style flags, join a multi-process job, configure gin, call the
  configured `module_name.fn_name`. Returns (exit code, result); errors in the
  input (flags, gin files, settings) are printed as one line
  `t5lite COMMAND: error: ...` on stderr with exit code 1, no traceback."""
  import importlib  # pylint: disable=g-import-not-at-top

  import gin  # pylint: disable=g-import-not-at-top

  from t5lite import distributed  # pylint: disable=g-import-not-at-top

  # TensorFlow (the data path) host-only and quiet before a gin file's imports start it.
  from t5lite.data import tensorflow_setup  # pylint: disable=g-import-not-at-top

  tensorflow_setup.setup()
  try:
    files, bindings, paths = parse_flags(sys.argv[1:] if argv is None else argv)
    distributed.maybe_initialize()  # before any jax computation
    configure_gin(files, bindings, paths, required=required, run_file=RUN_FILES.get(command, RUN_FILES["train"]))
    # The module gin configured (not __main__, when run with python -m).
    fn = getattr(importlib.import_module(module_name), fn_name)
    _check_bound(gin, fn, RUN_FILES.get(command, RUN_FILES["train"]))
    state = _entry_state()
    state._GIN_ENTRY_ACTIVE = True  # pylint: disable=protected-access
    try:
      return 0, gin.get_configurable(fn)()
    finally:
      state._GIN_ENTRY_ACTIVE = False  # pylint: disable=protected-access
  except (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, FloatingPointError) as e:
    # checks.SettingTypeError is a ValueError too.
    print(f"t5lite {command}: error: {_with_macro(gin, _one_line(e))}", file=sys.stderr)
    return 1, None


def _check_bound(gin, fn: Callable[..., Any], run_file: str) -> None:
  """Raises ValueError if the gin config leaves a required argument of `fn` unbound
  (a run without its run file), instead of the TypeError the call would raise."""
  import inspect  # pylint: disable=g-import-not-at-top

  try:
    bound = gin.get_bindings(fn, resolve_references=False)
  except ValueError:  # no gin file configures fn
    bound = {}
  missing = [
    p.name
    for p in inspect.signature(fn).parameters.values()
    if p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in bound
  ]
  if missing:
    raise ValueError(
      f"the gin files bind no {', '.join(missing)} for {fn.__module__}.{fn.__name__}: include the "
      f"run file (--gin_file={run_file}) after a model file"
    )


def _with_macro(gin, message: str) -> str:
  """`message` plus the macro that sets the binding it starts with, where one does.

  Library errors name a setting by its gin binding (`schedules.rsqrt.warmup_steps=0
  must be ...`); users set most of them through a macro (WARMUP_STEPS)."""
  import re  # pylint: disable=g-import-not-at-top

  match = re.match(r"([A-Za-z_][\w.]*)\.(\w+)=", message)
  if not match:
    return message
  selector, param = match.groups()
  for (_, key), params in getattr(gin.config, "_CONFIG", {}).items():
    value = params.get(param)
    if (key == selector or key.endswith("." + selector)) and repr(value).startswith("%"):
      return f"{message} (set by the macro {repr(value)[1:]})"
  return message


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

"""Running a library function from the command line under gin (T5X-style flags).

`train.main`, `eval.main` and `infer.main` call `run_gin_entry`: parse the flags, join a
multi-process job, parse and check the gin files and bindings, register the task package's
tasks, and call the function the run gin file configures. Errors in the flags, the gin files
or the settings come back as one line `t5lite COMMAND: error: ...`. This is the command line's
gin edge, and the one module of the package that imports the task package `t5lite_tasks`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
import os
import re
import sys
import tokenize
from typing import Any, Callable, Optional, Sequence

import gin
from gin import config_parser

from t5lite import gin_paths


@dataclasses.dataclass(frozen=True)
class GinCommand:
  """A command-line entry point: the function a run gin file configures, and what that file needs."""

  module: str  # the module holding the function (imported, not `__main__`, under python -m)
  function: str  # the function the run file binds
  run_file: str  # the run file that binds it, for messages that say what to include
  required: tuple[str, ...]  # macros the run file reads that must be set


COMMANDS = {
  "train": GinCommand(
    "t5lite.train",
    "train",
    "runs/pretrain.gin",
    ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "BATCH_SIZE"),
  ),
  "infer": GinCommand(
    "t5lite.infer",
    "infer",
    "runs/infer.gin",
    ("INFER_OUTPUT_DIR", "CHECKPOINT_PATH", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "MODEL"),
  ),
  "eval": GinCommand(
    "t5lite.eval",
    "evaluate",
    "runs/eval.gin",
    ("EVAL_OUTPUT_DIR", "CHECKPOINT_PATH", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "MODEL"),
  ),
}
# The package whose import registers the built-in seqio tasks and mixtures.
TASK_PACKAGE = "t5lite_tasks"
# Macros that runs/eval.gin and runs/infer.gin read from the file before them (a run's
# config.gin), with the value they take when that file does not set them: a model file, or a
# config.gin written before the macro existed. gin has no default for a macro that a later
# file must not override, so configure_gin supplies these.
OPTIONAL_MACROS = {"VOCABULARY_MODEL": None}


def import_task_modules() -> None:
  """Registers the built-in seqio tasks and mixtures by importing the task package.

  The library never imports `t5lite_tasks` (it depends on the library, not the
  other way round); a Python user imports it, or their own task module, as with
  seqio and T5X. The command-line entry points call this once their flags and
  gin files have been checked, before the configured function runs.

  Raises:
    ModuleNotFoundError: t5lite_tasks is not installed (install t5lite, or run
      from a checkout with `pip install -e .`).
  """
  importlib.import_module(TASK_PACKAGE)


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
  if name in _FLAGS or (name.startswith("--gin.") and not has_value):
    return f"{name} needs a value: {name}=VALUE"
  if not arg.startswith("-"):
    return f"unexpected argument {arg!r}; gin files are given as --gin_file={arg} ({_FLAG_USAGE})"
  close = difflib.get_close_matches(name, _FLAGS, n=1, cutoff=0.6)
  if close:
    return f"unknown flag {arg!r}; did you mean {close[0]}?"
  return f"unknown flag {arg!r}; {_FLAG_USAGE}"


# Macros whose usual fix is a file rather than a flag.
_MACRO_FIXES = {"MODEL": "a model file defines it: give e.g. --gin_file=models/t5_1_1/small.gin before the run file"}


def configure_gin(
  files: Sequence[str],
  bindings: Sequence[str],
  search_paths: Sequence[str] = (),
  required: Sequence[str] = COMMANDS["train"].required,
  run_file: str = COMMANDS["train"].run_file,
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
  gin.clear_config()
  _guard_gin_package_reader()
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
    _set_optional_macros()
    _check_macros(bindings, required, run_file)
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
  last = selector.split(".")[-1]
  names = []
  for key, configurable in gin.config._REGISTRY.items():  # pylint: disable=protected-access
    if key.split(".")[-1] == last:
      try:
        signature = inspect.signature(configurable.wrapped)
      except (TypeError, ValueError):  # a builtin without a signature: it names no parameters
        continue
      names += list(signature.parameters)
  return names


def _command_line_macros(bindings: Sequence[str]) -> dict[str, str]:
  """{macro name: its binding} for the bindings that set a macro (NAME = VALUE)."""

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


def _macros() -> tuple[set[str], dict[str, str]]:
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


def _check_macros(bindings: Sequence[str], required: Sequence[str], run_file: str) -> None:
  """Raises ValueError for a command-line macro nothing reads, a macro read but never
  set, or a required macro no gin file uses (see configure_gin)."""
  defined, read = _macros()
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


def _set_optional_macros() -> None:
  """Sets each OPTIONAL_MACROS macro that the parsed config reads but nothing sets to its default."""
  defined, read = _macros()
  for name, value in OPTIONAL_MACROS.items():
    if name in read and name not in defined:
      gin.parse_config(f"{name} = {value!r}")


def _required_problem(message: str) -> Optional[str]:
  """gin's `X set to %gin.REQUIRED but not subsequently overridden` as what to set, or None."""
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


def _guard_gin_package_reader() -> None:
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


def write_config(model_dir: str, start_step: int = 0) -> Optional[str]:
  """Writes the operative gin config of this start of a run (process 0 only).

  `t5lite train` hands this to `train.train` as its `on_start`, which calls it
  once the checkpoint to resume from has been checked, so a refused resume
  writes nothing. MODEL_DIR/config.gin always holds the config of the latest
  start, which is what `inference.load` and `--gin_file=MODEL_DIR/config.gin`
  read; every start also leaves MODEL_DIR/config_history/NNN_start_step_S.gin
  (the NNN-th start, at step S), so a run resumed with other settings keeps the
  record of each. Returns config.gin's path, or None off process 0 or when gin
  holds no config.

  Raises:
    OSError: MODEL_DIR cannot be written.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_index() != 0:
    return None
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


def macro_value(name: str) -> Any:
  """The value of the gin macro `name` in the parsed config (e.g. 'MODEL_DIR').

  Raises:
    ValueError: no gin file or binding sets the macro.
  """
  return gin.query_parameter(f"%{name}")


def run_gin_entry(argv: Optional[Sequence[str]], command: str, **kwargs: Any) -> tuple[int, Any]:
  """The shared body of the gin entry points: runs `COMMANDS[command]` from the command line.

  Parses the T5X-style flags (`argv`, or sys.argv[1:] when None), joins a
  multi-process job, configures and checks gin, registers the task package's
  tasks and calls the configured function with `kwargs` (arguments that are not
  gin settings, such as train's `on_start`). Returns (exit code, the function's
  result); errors in the input (flags, gin files, settings) are printed as one
  line `t5lite COMMAND: error: ...` on stderr with exit code 1 and result None,
  no traceback.

  Raises:
    KeyError: `command` is not one of COMMANDS.
  """
  from t5lite import distributed  # pylint: disable=g-import-not-at-top

  # TensorFlow (the data path) host-only and quiet before a gin file's imports start it.
  from t5lite.data import tensorflow_setup  # pylint: disable=g-import-not-at-top

  entry = COMMANDS[command]
  tensorflow_setup.setup()
  try:
    files, bindings, paths = parse_flags(sys.argv[1:] if argv is None else argv)
    distributed.maybe_initialize()  # before any jax computation
    configure_gin(files, bindings, paths, required=entry.required, run_file=entry.run_file)
    # The module gin configured (not __main__, when run with python -m).
    fn = getattr(importlib.import_module(entry.module), entry.function)
    _check_bound(fn, entry.run_file)
    import_task_modules()
    return 0, gin.get_configurable(fn)(**kwargs)
  except (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, FloatingPointError) as e:
    # checks.SettingTypeError is a ValueError too.
    print(f"t5lite {command}: error: {_with_macro(_one_line(e))}", file=sys.stderr)
    return 1, None


def _check_bound(fn: Callable[..., Any], run_file: str) -> None:
  """Raises ValueError if the gin config leaves a required argument of `fn` unbound
  (a run without its run file), instead of the TypeError the call would raise."""
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


def _with_macro(message: str) -> str:
  """`message` plus the macro that sets the binding it starts with, where one does.

  Library errors name a setting by its gin binding (`schedules.rsqrt.warmup_steps=0
  must be ...`); users set most of them through a macro (WARMUP_STEPS)."""
  match = re.match(r"([A-Za-z_][\w.]*)\.(\w+)=", message)
  if not match:
    return message
  selector, param = match.groups()
  for (_, key), params in getattr(gin.config, "_CONFIG", {}).items():
    value = params.get(param)
    if (key == selector or key.endswith("." + selector)) and repr(value).startswith("%"):
      return f"{message} (set by the macro {repr(value)[1:]})"
  return message

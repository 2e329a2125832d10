"""Tests for t5lite/gin_entry.py: the gin command line of train, infer and eval.

Mistakes in the flags or the gin files are one line on stderr with exit code 1,
before any work; gin files are found beside a `runs/` folder in the working
directory.
"""

import os

import pytest

from t5lite import gin_entry, train as train_lib


def test_gin_errors_name_the_problem(tmp_path, capsys):
  assert train_lib.main(["--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/pretrain.gin"]) == 1
  assert "required gin macro MODEL_DIR is not set" in capsys.readouterr().err
  bad = tmp_path / "bad.gin"
  bad.write_text(
    "from __gin__ import dynamic_registration\nfrom t5lite.models import t5\n\nt5.T5Config.no_such_field = 3\n"
  )
  assert train_lib.main([f"--gin_file={bad}"]) == 1
  err = capsys.readouterr().err
  assert "bad.gin" in err and "line 4" in err
  assert train_lib.main(["--gin_file=experiments/nope.gin"]) == 1
  assert "nope.gin" in capsys.readouterr().err


def test_gin_includes_work_beside_a_runs_folder(tmp_path, monkeypatch):
  """A runs/ folder in the working directory (make train writes one) is a namespace
  package to Python; gin's package-path lookup of 'runs/pretrain.gin' must not crash."""
  (tmp_path / "runs" / "quickstart").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` puts the cwd first
  gin_entry.configure_gin(["experiments/quickstart_finetune.gin"], ['MODEL_DIR = "/tmp/x"'])
  import gin  # pylint: disable=g-import-not-at-top

  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "synthetic_reverse"
  gin.clear_config()


def test_switch_quickstart_configures_experts_and_the_expert_axis():
  import gin  # pylint: disable=g-import-not-at-top

  from t5lite import partitioning  # pylint: disable=g-import-not-at-top
  from t5lite.models import t5  # pylint: disable=g-import-not-at-top

  try:
    gin_entry.configure_gin(["experiments/quickstart_switch.gin"], ['MODEL_DIR = "/tmp/x"', "EXPERT_PARALLELISM = 8"])
    cfg = gin.get_configurable(t5.T5Config)()
    assert (cfg.num_experts, cfg.moe_layer_interval, cfg.vocab_size) == (8, 2, 8192)
    assert (cfg.train_capacity_factor, cfg.eval_capacity_factor) == (1.25, 2.0)
    part = gin.get_configurable(partitioning.Partitioner)()
    assert dict(part.mesh.shape) == {"data": 1, "fsdp": 1, "model": 1, "expert": 8}
  finally:
    gin.clear_config()


# --------------------------------------------------------------------------- #
# Command-line and gin mistakes: one line on stderr, exit code 1, before any work.
# --------------------------------------------------------------------------- #
def _error(capsys, command="train"):
  """The message of the one line a failed command printed on stderr."""
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"t5lite {command}: error: "), err
  return lines[0][len(f"t5lite {command}: error: ") :]


QUICKSTART = ["--gin_file=experiments/quickstart.gin", "--gin.MODEL_DIR='/nonexistent/t5lite_test_run'"]


@pytest.mark.parametrize(
  "flags, message",
  [
    # A mistyped macro is not ignored (it trained the experiment's 500 steps); the closest one is named.
    (
      QUICKSTART + ["--gin.TRAIN_STEP=2"],
      "the macro TRAIN_STEP set on the command line ('TRAIN_STEP = 2') is not read by any gin binding "
      "(no %TRAIN_STEP in the gin files); did you mean TRAIN_STEPS (--gin.TRAIN_STEPS=...)?",
    ),
    (
      QUICKSTART + ["--gin_bindings=batch_size = 8"],
      "the macro batch_size set on the command line ('batch_size = 8') is not read by any gin binding "
      "(no %batch_size in the gin files); did you mean BATCH_SIZE (--gin.BATCH_SIZE=...)?",
    ),
    # Unknown flags, a flag without its value.
    (
      ["--gin_fle=experiments/quickstart.gin"],
      "unknown flag '--gin_fle=experiments/quickstart.gin'; did you mean --gin_file?",
    ),
    (
      ["experiments/quickstart.gin"],
      "unexpected argument 'experiments/quickstart.gin'; gin files are given as --gin_file=experiments/quickstart.gin "
      "(use --gin_file=FILE, --gin.NAME=VALUE, --gin_bindings='NAME = VALUE' or --gin_search_paths=DIR,DIR)",
    ),
    (QUICKSTART + ["--gin.TRAIN_STEPS"], "--gin.TRAIN_STEPS needs a value: --gin.TRAIN_STEPS=VALUE"),
    ([], "give at least one --gin_file (e.g. --gin_file=experiments/quickstart.gin)"),
    # gin syntax errors (SyntaxError and tokenize.TokenError used to escape as tracebacks).
    (
      QUICKSTART + ["--gin.TRAIN_STEPS=(1"],
      "gin syntax error in the binding 'TRAIN_STEPS = (1': a bracket or a string is not closed "
      "(EOF in multi-line statement)",
    ),
    (
      QUICKSTART + ["--gin.MIXTURE_OR_TASK_NAME=pydocs_lm"],
      "gin syntax error in the binding 'MIXTURE_OR_TASK_NAME = pydocs_lm': Failed to parse token 'pydocs_lm' in "
      "`MIXTURE_OR_TASK_NAME = pydocs_lm` (a value is a Python literal, a quoted string, @configurable or %MACRO)",
    ),
    # Unknown configurables, references and parameters, with the closest real name.
    (
      QUICKSTART + ["--gin.t5.T5Conf.d_model=3"],
      "No configurable matching 't5.T5Conf' (in the binding 't5.T5Conf.d_model = 3'); did you mean t5.T5Config?",
    ),
    (
      QUICKSTART + ["--gin.train_lib.train.optimizer=@adamw.adamww"],
      "No configurable matching reference '@adamw.adamww' (in the binding 'train_lib.train.optimizer = @adamw.adamww'); "
      "did you mean adamw.adamw?",
    ),
    (
      QUICKSTART + ["--gin.t5.T5Config.d_modle=3"],
      "Configurable 't5.T5Config' doesn't have a parameter named 'd_modle' (in the binding "
      "'t5.T5Config.d_modle = 3'); did you mean d_model?",
    ),
    # A macro read but never set (gin printed the whole config), a required macro left unset.
    (
      QUICKSTART + ["--gin.TRAIN_STEPS=%TRAIN_STEP"],
      "TRAIN_STEPS reads the macro %TRAIN_STEP, which no gin file or flag sets; did you mean %TRAIN_STEPS?",
    ),
    (
      ["--gin_file=runs/pretrain.gin"],
      "train_lib.train.model reads the macro %MODEL, which no gin file or flag sets; a model file defines it: "
      "give e.g. --gin_file=models/t5_1_1/small.gin before the run file",
    ),
    (
      ["--gin_file=experiments/quickstart.gin"],
      "The required gin macro MODEL_DIR is not set: add --gin.MODEL_DIR=... or bind it in an experiment file.",
    ),
    (
      ["--gin_file=models/t5_1_1/tiny.gin"],
      "no gin file uses the required macro MODEL_DIR: include the run file (--gin_file=runs/pretrain.gin), "
      "after a model file",
    ),
    (
      ["--gin_file=models/t5_1_1/tiny.gin", "--gin.MODEL_DIR='/tmp/x'"],
      "no gin file reads the macro MODEL_DIR set on the command line: include the run file that uses it "
      "(--gin_file=runs/pretrain.gin)",
    ),
    # Bad values, named by the macro users set.
    (
      QUICKSTART + ["--gin.NUM_DEVICES=16"],
      "NUM_DEVICES=16 must be None or an integer in [1, 8] (None: all 8 devices)",
    ),
    (
      QUICKSTART + ["--gin.NUM_DEVICES=-1"],
      "NUM_DEVICES=-1 must be None or an integer in [1, 8] (None: all 8 devices)",
    ),
    (QUICKSTART + ["--gin.NUM_DEVICES=0"], "NUM_DEVICES=0 must be None or an integer in [1, 8] (None: all 8 devices)"),
    (
      QUICKSTART + ["--gin.BATCH_SIZE='16'"],
      "BATCH_SIZE='16' must be an integer >= 1, not a string (write the number without quotes)",
    ),
    (QUICKSTART + ["--gin.TRAIN_STEPS=500.0"], "TRAIN_STEPS=500.0 must be an integer >= 1, not a float"),
    (QUICKSTART + ["--gin.EVAL_EVERY=True"], "EVAL_EVERY=True must be an integer >= 0, not a bool (0: never)"),
    (QUICKSTART + ["--gin.KEEP_CHECKPOINTS=0"], "KEEP_CHECKPOINTS=0 must be None or an integer >= 1 (None: keep all)"),
    (QUICKSTART + ["--gin.INFER_EVAL_EXAMPLES=0"], "INFER_EVAL_EXAMPLES=0 must be None or an integer >= 1 (None: all)"),
    (
      QUICKSTART + ["--gin.WARMUP_STEPS=0"],
      "schedules.rsqrt.warmup_steps=0 must be an integer >= 1 (set by the macro WARMUP_STEPS)",
    ),
    (
      QUICKSTART + ["--gin.LEARNING_RATE=1e999"],
      "schedules.rsqrt.base_learning_rate=inf must be a finite number > 0.0 (set by the macro LEARNING_RATE)",
    ),
    (
      QUICKSTART + ["--gin.adafactor.adafactor.decay_rate=1.5"],
      "adafactor.adafactor.decay_rate=1.5 must be a finite number in (0.0, 1.0]",
    ),
    (
      QUICKSTART + ["--gin.t5.T5Config.dropout_rate=1.0"],
      "T5Config.dropout_rate=1.0 must be a finite number in [0.0, 1.0)",
    ),
    (
      QUICKSTART + ["--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 58}"],
      "TASK_FEATURE_LENGTHS['inputs']=0 must be an integer >= 1",
    ),
    # An empty or missing run directory would train into the working directory or crash.
    (
      ["--gin_file=experiments/quickstart.gin", "--gin.MODEL_DIR=''"],
      'MODEL_DIR=\'\' must be a path (a non-empty string), e.g. --gin.MODEL_DIR=\\"/tmp/run\\".',
    ),
    (
      ["--gin_file=experiments/quickstart.gin", "--gin.MODEL_DIR=None"],
      'MODEL_DIR=None must be a path (a non-empty string), e.g. --gin.MODEL_DIR=\\"/tmp/run\\".',
    ),
  ],
)
def test_command_line_and_gin_mistakes_are_one_line_errors(flags, message, capsys, no_work):
  assert train_lib.main(flags) == 1
  assert _error(capsys) == message


def test_errors_in_gin_files_name_the_file_and_line(tmp_path, capsys, no_work):
  bad = tmp_path / "bad.gin"
  bad.write_text("from __gin__ import dynamic_registration\nfrom t5lite.models import t5\n\nt5.T5Confg.d_model = 3\n")
  assert train_lib.main([f"--gin_file={bad}"]) == 1
  assert _error(capsys) == (
    f"unknown configurable t5.T5Confg: module t5lite.models.t5 has no T5Confg (in {bad} line 4: "
    "`t5.T5Confg.d_model = 3`); did you mean T5Config?"
  )
  bad.write_text("from __gin__ import dynamic_registration\nfrom t5lite.models import t5\nt5.T5Config.d_model = abc\n")
  assert train_lib.main([f"--gin_file={bad}"]) == 1
  assert _error(capsys).startswith(f"gin syntax error in {bad} line 3: Failed to parse token 'abc'")
  bad.write_text("include 'experiments/quickstart_finetun.gin'\n")
  assert train_lib.main([f"--gin_file={bad}"]) == 1
  err = _error(capsys)
  assert err.startswith(f"gin file 'experiments/quickstart_finetun.gin' not found (included from {bad} line 1")
  assert err.endswith("; did you mean experiments/quickstart_finetune.gin?")
  bad.write_text("from t5lite.models import t6\n")
  assert train_lib.main([f"--gin_file={bad}"]) == 1
  assert _error(capsys) == f"No module named 't5lite.models.t6' (in {bad} line 1: `from t5lite.models import t6`)"


def test_infer_and_eval_refuse_a_mistyped_macro(tmp_path, capsys):
  from t5lite import eval as eval_lib, infer as infer_lib  # pylint: disable=g-import-not-at-top

  common = [
    "--gin_file=models/t5_1_1/tiny.gin",
    f"--gin.MODEL_DIR='{tmp_path}'",
    "--gin.MIXTURE_OR_TASK_NAME='ttrain_span_corruption'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
  ]
  assert (
    infer_lib.main(
      common + ["--gin_file=runs/infer.gin", f"--gin.INFER_OUTPUT_DIR='{tmp_path}/infer'", "--gin.BEAM_SIZ=2"]
    )
    == 1
  )
  assert _error(capsys, "infer").endswith(
    "is not read by any gin binding (no %BEAM_SIZ in the gin files); did you mean BEAM_SIZE (--gin.BEAM_SIZE=...)?"
  )
  assert (
    eval_lib.main(
      common + ["--gin_file=runs/eval.gin", f"--gin.EVAL_OUTPUT_DIR='{tmp_path}/eval'", "--gin.CHECKPOINT_STEP='all'"]
    )
    == 1
  )
  assert _error(capsys, "eval").endswith("did you mean CHECKPOINT_STEPS (--gin.CHECKPOINT_STEPS=...)?")
  # eval.gin has no NUM_DEVICES macro: the binding itself, checked where the partitioner reads it.
  assert (
    eval_lib.main(
      common
      + ["--gin_file=runs/eval.gin", "--gin.EVAL_OUTPUT_DIR='x'", "--gin.partitioning.Partitioner.num_devices=-1"]
    )
    == 1
  )
  assert _error(capsys, "eval") == "NUM_DEVICES=-1 must be None or an integer in [1, 8] (None: all 8 devices)"
  assert sorted(os.listdir(tmp_path)) == []


def test_a_mistyped_macro_from_the_shell_prints_one_line_and_no_traceback(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys as sys_lib  # pylint: disable=g-import-not-at-top

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [
      sys_lib.executable,
      "-m",
      "t5lite.train",
      "--gin_file=experiments/quickstart.gin",
      f'--gin.MODEL_DIR="{tmp_path}"',
      "--gin.TRAIN_STEP=2",
    ],
    cwd=repo,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines() == [
    "t5lite train: error: the macro TRAIN_STEP set on the command line ('TRAIN_STEP = 2') is not read by any gin "
    "binding (no %TRAIN_STEP in the gin files); did you mean TRAIN_STEPS (--gin.TRAIN_STEPS=...)?"
  ]
  assert os.listdir(tmp_path) == []  # no config.gin, no checkpoint: nothing ran


# --------------------------------------------------------------------------- #
# The entry table, the task package, run_gin_entry and write_config.
# --------------------------------------------------------------------------- #
def probe(*, value, extra=None):
  """The function the test command 'probe' runs (configured by PROBE_GIN)."""
  return value, extra


PROBE_GIN = """
from __gin__ import dynamic_registration
from tests import test_gin_entry

VALUE = 3
test_gin_entry.probe.value = %VALUE
"""


@pytest.fixture
def probe_command(tmp_path, monkeypatch):
  """Registers the command 'probe' (tests.test_gin_entry.probe) and records when the task package is imported."""
  gin_file = tmp_path / "probe.gin"
  gin_file.write_text(PROBE_GIN)
  monkeypatch.setitem(
    gin_entry.COMMANDS, "probe", gin_entry.GinCommand("tests.test_gin_entry", "probe", "probe.gin", ("VALUE",))
  )
  imported = []
  monkeypatch.setattr(gin_entry, "import_task_modules", lambda: imported.append(True))
  return str(gin_file), imported


def test_run_gin_entry_calls_the_configured_function_with_the_given_arguments(probe_command, capsys):
  gin_file, imported = probe_command
  assert gin_entry.run_gin_entry([f"--gin_file={gin_file}", "--gin.VALUE=5"], "probe", extra="x") == (0, (5, "x"))
  assert imported == [True] and gin_entry.macro_value("VALUE") == 5
  # A mistake is one line naming the command; nothing runs and no task is registered.
  assert gin_entry.run_gin_entry([f"--gin_file={gin_file}", "--gin.VALU=5"], "probe") == (1, None)
  assert capsys.readouterr().err == (
    "t5lite probe: error: the macro VALU set on the command line ('VALU = 5') is not read by any gin binding "
    "(no %VALU in the gin files); did you mean VALUE (--gin.VALUE=...)?\n"
  )
  assert imported == [True]


def test_write_config_keeps_each_start(probe_command, tmp_path):
  gin_file, _ = probe_command
  assert gin_entry.run_gin_entry([f"--gin_file={gin_file}", "--gin.VALUE=5"], "probe") == (0, (5, None))
  run = tmp_path / "run"
  assert gin_entry.write_config(str(run), 0) == str(run / "config.gin")
  assert gin_entry.run_gin_entry([f"--gin_file={gin_file}", "--gin.VALUE=7"], "probe") == (0, (7, None))
  gin_entry.write_config(str(run), 4)
  history = run / gin_entry.CONFIG_HISTORY_DIR
  assert sorted(os.listdir(history)) == ["001_start_step_0.gin", "002_start_step_4.gin"]
  assert "VALUE = 5" in (history / "001_start_step_0.gin").read_text()
  assert (run / "config.gin").read_text() == (history / "002_start_step_4.gin").read_text()
  assert "VALUE = 7" in (run / "config.gin").read_text()


def test_commands_name_their_function_and_the_run_file_that_reads_the_required_macros():
  import importlib  # pylint: disable=g-import-not-at-top

  from t5lite import gin_paths  # pylint: disable=g-import-not-at-top

  assert sorted(gin_entry.COMMANDS) == ["eval", "infer", "train"]
  for name, command in gin_entry.COMMANDS.items():
    assert callable(getattr(importlib.import_module(command.module), command.function)), name
    text = open(os.path.join(gin_paths.gin_dir(), command.run_file), encoding="utf-8").read()
    assert f"import {name} as" in text or f"import {command.module.split('.')[-1]} as" in text, name
    for macro in command.required:
      assert f"%{macro}" in text, (name, macro)


def test_the_library_imports_neither_gin_nor_the_task_package():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  code = (
    "import sys\n"
    "import t5lite.train, t5lite.eval, t5lite.infer, t5lite.evaluation, t5lite.inference, t5lite.bench.data\n"
    "print(sorted({m.split('.')[0] for m in sys.modules} & {'gin', 't5lite_tasks'}))\n"
    "from t5lite.data import registration\n"
    "try:\n"
    "  registration.get_task_or_mixture('synthetic_reverse')\n"
    "  print('registered')\n"
    "except ValueError:\n"
    "  print('unknown')\n"
    "from t5lite import gin_entry\n"
    "gin_entry.import_task_modules()\n"
    "print(registration.get_task_or_mixture('synthetic_reverse').name)\n"
  )
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["[]", "unknown", "synthetic_reverse"]


def test_only_gin_entry_imports_the_task_package():
  import ast  # pylint: disable=g-import-not-at-top

  package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "t5lite")
  importers = []
  for root, _, names in os.walk(package):
    for name in (n for n in names if n.endswith(".py")):
      path = os.path.join(root, name)
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        modules += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(m.split(".")[0] == gin_entry.TASK_PACKAGE for m in modules):
          importers.append(os.path.relpath(path, package))
  assert importers == []  # gin_entry imports it by name (importlib), as TASK_PACKAGE

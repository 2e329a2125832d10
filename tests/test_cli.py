"""Tests for t5lite/cli.py: errors are one line with the subcommand, before any work."""

import pytest

from t5lite import cli


def _error(capsys, prefix):
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(prefix), err
  return lines[0][len(prefix) :]


def test_gin_commands_report_mistakes_as_their_entry_point(capsys):
  assert cli.main(["train", "--gin_fle=experiments/quickstart.gin"]) == 1
  assert _error(capsys, "t5lite train: error: ") == (
    "unknown flag '--gin_fle=experiments/quickstart.gin'; did you mean --gin_file?"
  )
  assert cli.main(["eval", "--gin_search_paths"]) == 1
  assert _error(capsys, "t5lite eval: error: ") == "--gin_search_paths needs a value: --gin_search_paths=VALUE"


@pytest.mark.parametrize(
  "argv, message",
  [
    (["vocab", "train", "--output", "x.model"], "give exactly one of --files GLOB or --source NAME"),
    (
      ["vocab", "train", "--files", "*.txt", "--output", "x.model", "--vocab_size", "0"],
      "--vocab_size=0 must be an integer >= 1",
    ),
    (
      ["vocab", "train", "--files", "*.txt", "--output", "x.model", "--character_coverage", "nan"],
      "--character_coverage=nan must be a finite number in (0.0, 1.0]",
    ),
    (
      ["vocab", "train", "--files", "*.txt", "--output", "x.model", "--character_coverage", "1.5"],
      "--character_coverage=1.5 must be a finite number in (0.0, 1.0]",
    ),
  ],
)
def test_vocab_train_settings_are_checked(argv, message, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.main(argv) == 2
  assert _error(capsys, "t5lite vocab train: error: ") == message
  assert list(tmp_path.iterdir()) == []


def test_data_preview_examples_are_checked(capsys):
  assert cli.main(["data", "preview", "--examples", "0"]) == 2
  assert _error(capsys, "t5lite data preview: error: ") == "--examples=0 must be an integer >= 1"


def test_argparse_errors_keep_its_exit_code(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["vocab", "train", "--output", "x.model", "--vocab_size", "many"])
  assert e.value.code == 2
  assert "invalid int value: 'many'" in capsys.readouterr().err

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


def test_data_preview_vocabulary_model(tmp_path, capsys):
  from t5lite.data import vocab
  from tests.data.conftest import TOPIC_TEXTS

  path = vocab.train_sentencepiece(TOPIC_TEXTS, str(tmp_path / "s.model"), vocab_size=300, byte_fallback=False)
  try:
    argv = ["data", "preview", "--tasks", "synthetic_reverse", "--examples", "1", "--vocabulary_model", path]
    assert cli.main(argv) == 0
    assert vocab.model_file_setting() == path
    assert "<extra_id_" not in capsys.readouterr().out  # the text round-trips through the given model
    missing = str(tmp_path / "nope.model")
    assert cli.main(["data", "preview", "--tasks", "synthetic_reverse", "--vocabulary_model", missing]) == 2
    assert f"--vocabulary_model={missing!r}" in capsys.readouterr().err
  finally:
    vocab.use_model_file(None)


def test_convert_from_hf_then_to_hf(tmp_path, capsys):
  """`t5lite convert` both ways on the command line; the exported tensors are the imported ones."""
  import numpy as np
  from safetensors.numpy import load_file

  from tests.hf import hf_models

  hf_dir = hf_models.save(hf_models.t5_model("original", seed=12), tmp_path / "hf")
  out = str(tmp_path / "converted")
  assert cli.main(["convert", "from-hf", "--hf_dir", hf_dir, "--output", out, "--dtype", "bfloat16"]) == 0
  printed = capsys.readouterr().out
  assert f"wrote {out} (t5" in printed and "model.gin" in printed
  assert "dtype = 'bfloat16'" in open(f"{out}/model.gin").read()
  back = str(tmp_path / "back")
  assert cli.main(["convert", "to-hf", "--checkpoint", f"{out}/checkpoints/0", "--output", back]) == 0
  original, exported = load_file(f"{hf_dir}/model.safetensors"), load_file(f"{back}/model.safetensors")
  assert sorted(original) == sorted(exported)
  assert all(np.array_equal(original[k], exported[k]) for k in original)
  assert cli.main(["convert", "to-hf", "--checkpoint", out, "--output", back]) == 2
  assert "exists and is not empty" in capsys.readouterr().err

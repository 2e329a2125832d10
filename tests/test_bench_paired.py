"""t5lite/bench/paired.py: argument checks (the PyTorch side needs torch, which CI does not install)."""

import pytest

from t5lite.bench import paired


def test_paired_rejects_a_missing_baseline_script(tmp_path):
  missing = str(tmp_path / "nope.py")
  with pytest.raises(SystemExit, match="nope.py"):
    paired.parse_args(["--hf_python", "python3", "--hf_script", missing, "--preset", "tiny"])


def test_paired_passes_train_step_flags_through(tmp_path):
  script = tmp_path / "hf_t5_train_step.py"
  script.write_text("# stand-in path; only its existence is checked here\n")
  args = paired.parse_args(
    [
      "--hf_python",
      "python3",
      "--hf_script",
      str(script),
      "--preset",
      "tiny",
      "--batch",
      "4",
      "--steps",
      "3",
      "--hf_warmup",
      "1",
    ]
  )
  assert (args.preset, args.batch, args.steps, args.hf_warmup, args.hf_threads) == ("tiny", 4, 3, 1, 2)
  assert args.hf_script == str(script) and args.hf_python == "python3"


def test_paired_refuses_decoder_only():
  args = paired.parse_args(["--hf_python", "python3", "--hf_script", __file__, "--model", "decoder_only"])
  with pytest.raises(SystemExit, match="encoder_decoder"):
    paired.run(args)

"""Tests for t5lite/data/tensorflow_setup.py: a quiet, host-only TensorFlow start."""

import os
import subprocess
import sys

from t5lite.data import tensorflow_setup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Lines a CUDA-enabled TensorFlow printed at start-up on the CPU-only dev box (2026-12-01).
SEEN = [
  "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
  "I0000 00:00:1796085919.303846    4146 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
  "GPU will not be used.",
  "E0000 00:00:1796085925.400698    4146 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
  "Failed call to cuInit: UNKNOWN ERROR (303)",
]


def test_known_start_up_lines_are_noise_and_others_are_not():
  assert all(tensorflow_setup.is_noise(line) for line in SEEN)
  for line in (
    "Traceback (most recent call last):",
    "E0000 cuda_platform.cc:52] out of memory",
    "t5lite train: error: BATCH_SIZE=0",
    "W0000 dataset.cc] Could not find the file",
  ):
    assert not tensorflow_setup.is_noise(line), line


def test_capture_fd2_returns_what_was_written_and_restores_stderr(capfd):
  def write():
    os.write(2, b"from C++\n")
    os.write(2, b"line two\n")
    return 7

  result, lines = tensorflow_setup._capture_fd2(write)  # pylint: disable=protected-access
  assert result == 7 and lines == ["from C++", "line two"]
  os.write(2, b"after\n")
  assert capfd.readouterr().err == "after\n"


def test_tensorflow_starts_quiet_and_without_gpus():
  code = (
    "import t5lite.data, tensorflow as tf;"
    "print(list(tf.data.Dataset.range(3).map(lambda x: x + 1).as_numpy_iterator()));"
    "print(tf.config.get_visible_devices('GPU'))"
  )
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split("\n")[:2] == ["[np.int64(1), np.int64(2), np.int64(3)]", "[]"]
  assert out.stderr == "", out.stderr

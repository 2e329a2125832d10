"""TensorFlow as t5lite's data pipeline wants it: host-only and quiet at start-up.

TensorFlow (under seqio and TFDS) only reads and preprocesses data here; JAX
owns the accelerators. Two things are done once per process, the first time
any `t5lite.data` module is imported:

* TensorFlow is shown no GPU (`tf.config.set_visible_devices([], "GPU")`, as
  T5X does), so the input pipeline never takes accelerator memory from JAX.
* The CUDA probing lines that a CUDA-enabled TensorFlow wheel prints from C++
  on a machine without a GPU (`Could not find cuda drivers ...`,
  `failed call to cuInit ...`, and absl's `All log messages before
  absl::InitializeLog() ...`) are dropped. They are written straight to file
  descriptor 2 before TensorFlow's own log level (`TF_CPP_MIN_LOG_LEVEL`)
  applies, so no setting hides them: while TensorFlow is imported and its
  runtime starts, file descriptor 2 goes to a temporary file, and afterwards
  every line of it except those known probing lines is written back to
  stderr. TensorFlow's Python warnings (AutoGraph's "could not transform")
  are set to errors only.

Nothing here is needed for correctness; with TensorFlow absent (the GPU
benchmark machine) it does nothing. `T5LITE_TF_QUIET=0` keeps every line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

# Lines TensorFlow's C++ start-up prints on hosts without a (visible) GPU.
NOISE_PATTERNS = (
  r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
  r"cudart_stub\.cc:\d+\] Could not find cuda drivers",
  r"failed call to cuInit",
  r"Unable to register cu(DNN|FFT|BLAS) factory",
  r"computation placer already registered",
  r"TF-TRT Warning: Could not find TensorRT",
  r"This TensorFlow binary is optimized to use available CPU instructions",
  r"To enable the following instructions: .* in other operations, rebuild TensorFlow",
  r"oneDNN custom operations are on",
)
_NOISE = re.compile("|".join(NOISE_PATTERNS))
_DONE = False


def is_noise(line: str) -> bool:
  """True for a TensorFlow start-up line that says nothing to a t5lite user."""
  return bool(_NOISE.search(line))


def _capture_fd2(fn):
  """Runs fn() with file descriptor 2 sent to a temporary file; returns (result, lines)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      result = fn()
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      lines = tmp.read().decode("utf-8", "replace").splitlines()
  return result, lines


def _start_tensorflow():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # the runtime had already started: leave it
    pass
  tf.config.list_logical_devices("CPU")  # starts the runtime (and its CUDA probe) now
  return tf


def setup() -> bool:
  """Imports TensorFlow quietly, host-only (see the module docstring), once.

  Returns False when TensorFlow is not installed or was imported before
  (then its start-up lines have been printed already and nothing is hidden).
  """
  global _DONE
  if _DONE:
    return True
  _DONE = True
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if "tensorflow" in sys.modules:
    _start_quiet_python_logging()
    return False
  try:
    import importlib.util  # pylint: disable=g-import-not-at-top

    if importlib.util.find_spec("tensorflow") is None:
      return False
  except (ImportError, ValueError):
    return False
  if os.environ.get("T5LITE_TF_QUIET", "1") == "0":
    _start_tensorflow()
  else:
    _, lines = _capture_fd2(_start_tensorflow)
    kept = [line for line in lines if line.strip() and not is_noise(line)]
    if kept:
      print("\n".join(kept), file=sys.stderr)
  _start_quiet_python_logging()
  return True


def _start_quiet_python_logging() -> None:
  logging.getLogger("tensorflow").setLevel(logging.ERROR)
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.autograph.set_verbosity(0)
  except (ImportError, AttributeError):
    pass

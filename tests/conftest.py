"""Test setup: CPU only, 8 simulated devices for mesh tests.

XLA_FLAGS must be set before jax is imported anywhere, so it is set here at
collection time.
"""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Runs inside tests do not fill the user's compilation cache (~/.cache/t5lite); the
# tests of the cache give their own directory.
os.environ["T5LITE_COMPILATION_CACHE_DIR"] = "none"


@pytest.fixture
def no_work(monkeypatch):
  """Fails the test if a run gets as far as building its data (the first work train() does)."""
  from t5lite import train as train_lib  # pylint: disable=g-import-not-at-top

  def built_data(*args, **kwargs):
    pytest.fail("the run built its data: the mistake was not caught before any work")

  monkeypatch.setattr(train_lib, "_data", built_data)

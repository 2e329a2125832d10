"""t5lite/runtime.py: the XLA_FLAGS merge (a flag the user set wins; the others are appended)."""

import os

from t5lite import runtime


def test_user_flags_win_and_new_ones_are_appended(monkeypatch):
  monkeypatch.setenv(
    "XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=eltwise --xla_force_host_platform_device_count=8"
  )
  got = runtime.set_xla_cpu_flags(runtime.DEFAULT_XLA_CPU_FLAGS + " --xla_cpu_multi_thread_eigen=false").split()
  assert got == [
    "--xla_cpu_experimental_ynn_fusion_type=eltwise",
    "--xla_force_host_platform_device_count=8",
    "--xla_cpu_multi_thread_eigen=false",
  ]


def test_compilation_cache_writes_programs_and_an_unwritable_directory_only_warns(tmp_path, capsys, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(runtime, "_cache_state", {})
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  try:
    # A directory that cannot be made: one warning, no cache, the run goes on.
    assert runtime.setup_compilation_cache(str(blocker / "cache")) is None
    assert runtime.setup_compilation_cache(str(blocker / "cache")) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert (
      len(err) == 1
      and err[0].startswith(f"warning: the compilation cache directory {blocker / 'cache'} cannot be written")
      and "T5LITE_COMPILATION_CACHE_DIR" in err[0]
    )
    # 'none' turns it off; the environment variable names the default.
    assert runtime.setup_compilation_cache("none") is None
    monkeypatch.setenv("T5LITE_COMPILATION_CACHE_DIR", str(tmp_path / "from_env"))
    assert runtime.default_compilation_cache_dir() == str(tmp_path / "from_env")
    monkeypatch.delenv("T5LITE_COMPILATION_CACHE_DIR")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.default_compilation_cache_dir() == str(tmp_path / "xdg" / "t5lite" / "jax_compilation_cache")
    # A writable one receives the compiled program.
    cache = tmp_path / "cache"
    assert runtime.setup_compilation_cache(str(cache), min_compile_time_s=0.0) == str(cache)
    jax.jit(lambda x: jnp.cos(x) * 3.25 + 0.125)(jnp.arange(7.0)).block_until_ready()
    assert any(name.startswith("jit__lambda") for name in os.listdir(cache)), os.listdir(cache)
  finally:
    runtime.setup_compilation_cache("none")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

"""t5lite/runtime.py: the XLA_FLAGS merge (a flag the user set wins; the others are appended)."""

from t5lite import runtime


def test_user_flags_win_and_new_ones_are_appended(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=eltwise --xla_force_host_platform_device_count=8")
  got = runtime.set_xla_cpu_flags(runtime.DEFAULT_XLA_CPU_FLAGS + " --xla_cpu_multi_thread_eigen=false").split()
  assert got == ["--xla_cpu_experimental_ynn_fusion_type=eltwise", "--xla_force_host_platform_device_count=8",
                 "--xla_cpu_multi_thread_eigen=false"]

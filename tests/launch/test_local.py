"""launch/local.py with real OS processes: a 2 x 4 device jax job, and what happens when one dies.

The jax tests start the launcher itself as a subprocess (its CLI, signal handling
and exit status are what users get) and jax.distributed for real: no mocks.
"""

import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from launch import local
from t5lite import distributed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(REPO, "launch", "local.py")

# A global array of 8 values, 4 from each process, on a mesh of all 8 devices;
# its jitted sum needs both processes: 0+1+...+7 = 28.
PRELUDE = textwrap.dedent("""\
    import os, sys, time
    from t5lite import distributed
    assert distributed.maybe_initialize() is True
    assert distributed.maybe_initialize() is True  # idempotent
    import jax
    from jax._src import xla_bridge
    assert not xla_bridge.backends_are_initialized()  # the caller may still configure jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()), ("d",))
    total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))
    local = np.arange(4, dtype=np.float32) + 4 * jax.process_index()
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), local, (8,))
    """)


def launch(tmp_path, body, *, args=(), env=None, timeout=150):
  script = tmp_path / "job.py"
  script.write_text(PRELUDE + textwrap.dedent(body))
  cmd = [
    sys.executable,
    LAUNCHER,
    "--num_processes",
    "2",
    "--devices_per_process",
    "4",
    *args,
    "--",
    sys.executable,
    str(script),
  ]
  child_env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
  start = time.monotonic()
  out = subprocess.run(cmd, cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=timeout, check=False)
  return out, time.monotonic() - start


@pytest.mark.slow
def test_two_processes_reduce_over_eight_devices(tmp_path):
  out, _ = launch(
    tmp_path,
    """\
      assert jax.process_count() == 2, jax.process_count()
      assert jax.device_count() == 8 and jax.local_device_count() == 4, (jax.device_count(), jax.local_device_count())
      print(f"process {jax.process_index()} of {jax.process_count()}: {jax.device_count()} devices, sum {float(total(x)):g}")
      """,
    args=["--timeout", "120"],
  )
  assert out.returncode == 0, out.stdout + out.stderr
  assert "[p0] process 0 of 2: 8 devices, sum 28" in out.stdout.splitlines()
  assert "[p1] process 1 of 2: 8 devices, sum 28" in out.stdout.splitlines()
  assert "all 2 processes finished" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
  "failing, how, code, why",
  [
    (1, "sys.exit(3)", 3, "sys.exit(3)"),
    (0, "raise RuntimeError('bad batch')", 1, "RuntimeError: bad batch"),  # process 0 hosts the coordinator
  ],
)
def test_a_failing_process_stops_the_others_quickly(tmp_path, failing, how, code, why):
  """One process fails while the other waits for it in a collective.

  The launcher would wait 100 s before killing anyone (--grace), so what stops
  the other process here is t5lite.distributed's fail-fast hook.
  """
  other = 1 - failing
  out, elapsed = launch(
    tmp_path,
    f"""\
      print("first sum", float(total(x)), flush=True)
      if jax.process_index() == {failing}:
        {how}
      print("waiting in a collective", flush=True)
      print("second sum", float(total(x)), flush=True)
      """,
    args=["--grace", "100", "--timeout", "100"],
  )
  assert out.returncode == code, out.stdout + out.stderr
  assert elapsed < 60
  assert f"FAILED: process {failing} failed first with exit code {code}" in out.stderr
  assert (
    f"[p{other}] t5lite.distributed: stopping process {other} because process {failing} failed with "
    f"exit code {code} ({why})"
  ) in out.stderr
  codes = {failing: code, other: distributed.PEER_FAILED_EXIT_CODE}
  assert f"exit codes: p0={codes[0]} p1={codes[1]}" in out.stderr
  assert "second sum" not in out.stdout


@pytest.mark.slow
def test_a_killed_process_is_caught_by_the_launcher(tmp_path):
  """SIGKILL skips every exit hook: the launcher sees the death and stops process 0 after --grace."""
  out, elapsed = launch(
    tmp_path,
    """\
      print("first sum", float(total(x)), flush=True)
      if jax.process_index() == 1:
        os.kill(os.getpid(), 9)
      print("second sum", float(total(x)), flush=True)
      """,
    args=["--grace", "1", "--timeout", "100"],
  )
  assert out.returncode == 128 + 9, out.stdout + out.stderr
  assert elapsed < 60
  assert "process 1 failed: killed by SIGKILL" in out.stderr
  assert "FAILED: process 1 failed first with killed by SIGKILL (exit status 137)" in out.stderr


@pytest.mark.slow
def test_a_killed_process_is_caught_by_jax_heartbeats_without_the_launcher(tmp_path):
  """With the launcher patient (--grace 100), jax's heartbeat (10 s here) ends process 0 on its own."""
  out, elapsed = launch(
    tmp_path,
    """\
      print("first sum", float(total(x)), flush=True)
      if jax.process_index() == 1:
        os.kill(os.getpid(), 9)
      print("second sum", float(total(x)), flush=True)
      """,
    args=["--grace", "100", "--timeout", "100"],
    env={distributed.ENV_HEARTBEAT: "10"},
  )
  assert out.returncode == 137, out.stdout + out.stderr
  assert elapsed < 60
  assert "[p0] " in out.stderr and "JAX distributed service detected fatal errors" in out.stderr
  assert "p0=134 p1=137" in out.stderr  # process 0 aborted itself; the launcher killed nobody


# --------------------------------------------------------------------------- #
# The launcher alone, with plain Python children (fast).
# --------------------------------------------------------------------------- #
def test_child_env_keeps_other_xla_flags():
  base = {
    "XLA_FLAGS": "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=8",
    "PATH": "/bin",
    distributed.ENV_LOCAL_DEVICE_COUNT: "8",
  }
  env = local.child_env(base, 1, 2, 4, "localhost:999")
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=4"
  assert env[distributed.ENV_COORDINATOR] == "localhost:999"
  assert (env[distributed.ENV_NUM_PROCESSES], env[distributed.ENV_PROCESS_ID]) == ("2", "1")
  assert env["JAX_PLATFORMS"] == "cpu" and env["PATH"] == "/bin"
  assert distributed.ENV_LOCAL_DEVICE_COUNT not in env
  assert base["XLA_FLAGS"].endswith("=8")  # the caller's mapping is untouched


def test_run_streams_prefixed_lines_and_sets_the_environment():
  out, err = io.StringIO(), io.StringIO()
  code = local.run(
    [
      sys.executable,
      "-c",
      "import os, sys; e = os.environ; "
      "print(e['T5LITE_PROCESS_ID'], e['T5LITE_NUM_PROCESSES'], e['T5LITE_COORDINATOR_ADDRESS'], e['XLA_FLAGS']); "
      "print('to stderr', file=sys.stderr)",
    ],
    3,
    2,
    port=12399,
    stdout=out,
    stderr=err,
  )
  assert code == 0
  lines = sorted(out.getvalue().splitlines())
  assert lines == [f"[p{i}] {i} 3 localhost:12399 --xla_force_host_platform_device_count=2" for i in range(3)]
  assert sorted(l for l in err.getvalue().splitlines() if l.startswith("[p")) == [f"[p{i}] to stderr" for i in range(3)]


def test_run_stops_the_others_and_returns_the_first_failure():
  err = io.StringIO()
  start = time.monotonic()
  code = local.run(
    [
      sys.executable,
      "-c",
      "import os, time; i = int(os.environ['T5LITE_PROCESS_ID']); "
      "time.sleep(0.5) if i == 1 else time.sleep(60); raise SystemExit(5)",
    ],
    2,
    1,
    grace=0.5,
    stdout=io.StringIO(),
    stderr=err,
  )
  assert code == 5
  assert time.monotonic() - start < 20
  assert "process 1 failed: exit code 5" in err.getvalue()
  assert "FAILED: process 1 failed first with exit code 5; exit codes: p0=143 p1=5" in err.getvalue()


def test_run_timeout():
  err = io.StringIO()
  code = local.run(
    [sys.executable, "-c", "import time; time.sleep(60)"], 2, 1, timeout=0.5, stdout=io.StringIO(), stderr=err
  )
  assert code == 124
  assert "timed out after 0.5 s" in err.getvalue()


def test_ctrl_c_stops_all_children(tmp_path):
  pids = tmp_path / "pids"
  pids.mkdir()
  child = (
    "import os, time; open(os.path.join(%r, str(os.getpid())), 'w').close(); "
    "print('ready', flush=True); time.sleep(60)" % str(pids)
  )
  proc = subprocess.Popen(
    [sys.executable, LAUNCHER, "--num_processes", "2", "--", sys.executable, "-c", child],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "PYTHONPATH": REPO},
  )
  ready = 0
  while ready < 2:
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    ready += line.rstrip().endswith("ready")
  proc.send_signal(signal.SIGINT)
  assert proc.wait(30) == 130
  assert "interrupted" in proc.stderr.read()
  for pid in (int(p.name) for p in pids.iterdir()):
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_cli_needs_a_command():
  with pytest.raises(SystemExit) as e:
    local.main(["--num_processes", "2"])
  assert e.value.code == 2


def test_a_missing_command_fails_cleanly():
  err = io.StringIO()
  assert local.run(["no-such-program-t5lite"], 2, 1, stdout=io.StringIO(), stderr=err) == 127
  assert "cannot run 'no-such-program-t5lite'" in err.getvalue()


def test_children_die_with_the_launcher(tmp_path):
  """Even a SIGKILLed launcher leaves no children behind (Linux)."""
  if not sys.platform.startswith("linux"):
    pytest.skip("PR_SET_PDEATHSIG is Linux-only")
  pids = tmp_path / "pids"
  pids.mkdir()
  child = (
    "import os, time; open(os.path.join(%r, str(os.getpid())), 'w').close(); "
    "print('ready', flush=True); time.sleep(60)" % str(pids)
  )
  proc = subprocess.Popen(
    [sys.executable, LAUNCHER, "--num_processes", "2", "--", sys.executable, "-c", child],
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
    env={**os.environ, "PYTHONPATH": REPO},
  )
  ready = 0
  while ready < 2:
    line = proc.stdout.readline()
    assert line
    ready += line.rstrip().endswith("ready")
  proc.kill()
  proc.wait(10)
  deadline = time.monotonic() + 10
  alive = [int(p.name) for p in pids.iterdir()]
  while alive and time.monotonic() < deadline:
    time.sleep(0.1)
    alive = [pid for pid in alive if _alive(pid)]
  assert not alive


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie still answers kill(0); it is dead for our purpose.
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except OSError:
    return False

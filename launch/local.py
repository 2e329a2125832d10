"""Runs one command as N cooperating jax processes on this machine (CPU devices).

  python launch/local.py --num_processes 2 --devices_per_process 4 -- \\
      python -m t5lite.train --gin_file=experiments/quickstart.gin --gin.MODEL_DIR=\\"runs/local2\\"

Each child is a real OS process with
  T5LITE_COORDINATOR_ADDRESS=localhost:PORT  (a free port unless --port)
  T5LITE_NUM_PROCESSES=N, T5LITE_PROCESS_ID=i
  JAX_PLATFORMS=cpu
  XLA_FLAGS=<the caller's flags> --xla_force_host_platform_device_count=<devices_per_process>
so that t5lite.distributed.maybe_initialize() joins them into one jax job of
N x devices_per_process devices. Output is streamed line by line as "[p<i>] ...".

When a child exits non-zero the others get --grace seconds to stop by themselves
(t5lite's fail-fast hook usually stops them within a second), then SIGTERM, then
SIGKILL. The exit status is that of the process that failed first (preferring a
real failure over "stopped because a peer failed", PEER_FAILED_EXIT_CODE), 0 when
all succeeded, 124 on --timeout, 130 on Ctrl-C. A signal death -S is reported as
128+S.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Mapping, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the checkout importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t5lite import distributed  # pylint: disable=g-import-not-at-top,wrong-import-position

PREFIX = "[launch] "
_DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count(=\S*)?")


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("", 0))
    return s.getsockname()[1]


def child_env(
  base: Mapping[str, str], process_id: int, num_processes: int, devices_per_process: int, coordinator: str
) -> dict[str, str]:
  """The environment of child `process_id` (pure; the caller's XLA_FLAGS are kept)."""
  env = dict(base)
  flags = _DEVICE_FLAG.sub("", env.get("XLA_FLAGS", "")).split()
  flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
  env.update(
    {
      distributed.ENV_COORDINATOR: coordinator,
      distributed.ENV_NUM_PROCESSES: str(num_processes),
      distributed.ENV_PROCESS_ID: str(process_id),
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": " ".join(flags),
      "PYTHONUNBUFFERED": "1",
    }
  )
  env.pop(distributed.ENV_LOCAL_DEVICE_COUNT, None)
  return env


def _status(code: Optional[int]) -> int:
  if code is None:
    return 0
  return 128 - code if code < 0 else code


def _describe(code: int) -> str:
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name} (exit status {128 - code})"
    except ValueError:
      return f"killed by signal {-code} (exit status {128 - code})"
  if code == distributed.PEER_FAILED_EXIT_CODE:
    return f"exit code {code} (stopped because another process failed)"
  return f"exit code {code}"


# Linux: children get SIGKILL if the launcher dies (even by SIGKILL), so nothing is orphaned.
# A tiny exec shim sets it (prctl PR_SET_PDEATHSIG survives exec), rather than a preexec_fn,
# which would make subprocess fork a possibly multithreaded (jax) process.
_DEATH_SHIM = """\
import ctypes, os, signal, sys
try:
  ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except Exception:
  pass
if os.getppid() != int(sys.argv[1]):
  os._exit(1)  # the launcher is already gone
try:
  os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
  print(f"launch/local.py: cannot run {sys.argv[2]!r}: {e}", file=sys.stderr)
  os._exit(127)
"""


def _with_death_signal(command: Sequence[str]) -> list[str]:
  if not sys.platform.startswith("linux"):
    return list(command)
  return [sys.executable, "-c", _DEATH_SHIM, str(os.getpid()), *command]


class _Output:
  """Copies child pipes to our streams, one whole line at a time, each with a prefix."""

  def __init__(self, stdout: IO[str], stderr: IO[str]):
    self.streams = {"stdout": stdout, "stderr": stderr}
    self.lock = threading.Lock()
    self.threads: list[threading.Thread] = []

  def follow(self, pipe, prefix: str, which: str) -> None:
    t = threading.Thread(target=self._copy, args=(pipe, prefix, self.streams[which]), daemon=True)
    t.start()
    self.threads.append(t)

  def _copy(self, pipe, prefix: str, out: IO[str]) -> None:
    with pipe:
      for raw in iter(pipe.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        self.write(out, prefix + line)

  def write(self, out: IO[str], line: str) -> None:
    with self.lock:
      try:
        out.write(line + "\n")
        out.flush()
      except (ValueError, OSError):
        pass

  def say(self, message: str) -> None:
    self.write(self.streams["stderr"], PREFIX + message)

  def join(self, timeout: float) -> None:
    end = time.monotonic() + timeout
    for t in self.threads:
      t.join(max(0.0, end - time.monotonic()))


def _signal_group(proc: subprocess.Popen, sig: int, *, group_only: bool = False) -> None:
  """Signals the child's process group (it leads one), so its own children get it too."""
  if proc.poll() is not None and not group_only:
    return
  try:
    os.killpg(proc.pid, sig)
  except (ProcessLookupError, PermissionError):
    if group_only:
      return
    try:
      proc.send_signal(sig)
    except ProcessLookupError:
      pass
  except OSError:
    pass


def run(
  command: Sequence[str],
  num_processes: int,
  devices_per_process: int = 1,
  *,
  port: Optional[int] = None,
  timeout: Optional[float] = None,
  grace: float = 10.0,
  env: Optional[Mapping[str, str]] = None,
  cwd: Optional[str] = None,
  stdout: Optional[IO[str]] = None,
  stderr: Optional[IO[str]] = None,
) -> int:
  """Runs `command` as `num_processes` processes; returns the exit status (see the module doc)."""
  if not command:
    raise ValueError("No command to run: give it after '--', e.g. -- python -m t5lite.train ...")
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError("num_processes and devices_per_process must be >= 1.")
  out = _Output(stdout or sys.stdout, stderr or sys.stderr)
  coordinator = f"localhost:{port or free_port()}"
  base = dict(os.environ if env is None else env)
  out.say(
    f"{num_processes} processes x {devices_per_process} CPU devices, coordinator {coordinator}: " + " ".join(command)
  )

  procs: list[subprocess.Popen] = []
  interrupted: list[int] = []
  old_handlers = {}

  def on_signal(signum, frame):  # pylint: disable=unused-argument
    interrupted.append(signum)
    for p in procs:
      _signal_group(p, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGINT, signal.SIGTERM):
      old_handlers[sig] = signal.signal(sig, on_signal)
  try:
    for i in range(num_processes):
      procs.append(
        subprocess.Popen(
          _with_death_signal(command),
          env=child_env(base, i, num_processes, devices_per_process, coordinator),
          cwd=cwd,
          stdin=subprocess.DEVNULL,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          start_new_session=True,
        )
      )
      out.follow(procs[-1].stdout, f"[p{i}] ", "stdout")
      out.follow(procs[-1].stderr, f"[p{i}] ", "stderr")
    return _supervise(procs, out, timeout=timeout, grace=grace, interrupted=interrupted)
  finally:
    for p in procs:  # whatever happened, leave nothing running (grandchildren included)
      _signal_group(p, signal.SIGKILL, group_only=True)
      try:
        p.wait(5)
      except subprocess.TimeoutExpired:
        pass
    out.join(5.0)
    for sig, handler in old_handlers.items():
      signal.signal(sig, handler)


def _supervise(procs, out: _Output, *, timeout, grace, interrupted) -> int:
  start = time.monotonic()
  codes: dict[int, int] = {}
  failures: list[int] = []  # process ids in the order their failure was seen
  stop_at: Optional[float] = None  # when to SIGTERM the survivors
  kill_at: Optional[float] = None  # when to SIGKILL them
  reason: Optional[int] = None  # 124 (timeout) or 130/143 (signal) once decided

  while len(codes) < len(procs):
    now = time.monotonic()
    for i, p in enumerate(procs):
      if i in codes:
        continue
      code = p.poll()
      if code is None:
        continue
      codes[i] = code
      if code != 0:
        failures.append(i)
        if len(failures) == 1 and reason is None:
          alive = [j for j in range(len(procs)) if procs[j].poll() is None]
          out.say(
            f"process {i} failed: {_describe(code)}."
            + (f" Stopping processes {alive} (SIGTERM in {grace:g} s unless they exit)." if alive else "")
          )
          stop_at = now + grace
    if interrupted and reason is None:
      reason = 130 if interrupted[0] == signal.SIGINT else 143
      out.say(f"interrupted: stopping all processes (SIGTERM in {grace:g} s, then SIGKILL).")
      stop_at = now + grace
    if timeout is not None and reason is None and now - start > timeout:
      reason = 124
      out.say(f"timed out after {timeout:g} s: stopping all processes.")
      for p in procs:
        _signal_group(p, signal.SIGTERM)
      kill_at = now + 5.0
    if stop_at is not None and now >= stop_at and kill_at is None:
      for p in procs:
        _signal_group(p, signal.SIGTERM)
      kill_at = now + 5.0
    if kill_at is not None and now >= kill_at:
      for p in procs:
        _signal_group(p, signal.SIGKILL)
      kill_at = float("inf")
    time.sleep(0.05)

  summary = " ".join(f"p{i}={_status(codes[i])}" for i in range(len(procs)))
  if reason is not None:
    out.say(f"exit codes: {summary}")
    return reason
  if not failures:
    out.say(f"all {len(procs)} processes finished (exit codes: {summary}).")
    return 0
  real = [i for i in failures if codes[i] != distributed.PEER_FAILED_EXIT_CODE]
  first = (real or failures)[0]
  out.say(f"FAILED: process {first} failed first with {_describe(codes[first])}; exit codes: {summary}")
  return _status(codes[first])


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" in argv:
    split = argv.index("--")
    argv, command = argv[:split], argv[split + 1 :]
  else:
    command = []
  parser = argparse.ArgumentParser(
    prog="launch/local.py",
    description=__doc__.split("\n\n")[0],
    usage="%(prog)s --num_processes N [--devices_per_process D] [--port P] [--timeout S] -- COMMAND ...",
  )
  parser.add_argument("--num_processes", type=int, required=True, help="OS processes to start.")
  parser.add_argument("--devices_per_process", type=int, default=1, help="CPU devices each process sees.")
  parser.add_argument("--port", type=int, default=None, help="Coordinator port on localhost (default: a free one).")
  parser.add_argument("--timeout", type=float, default=None, help="Stop everything after this many seconds (exit 124).")
  parser.add_argument(
    "--grace",
    type=float,
    default=10.0,
    help="Seconds the others get to exit after one fails, before SIGTERM (default 10).",
  )
  args = parser.parse_args(argv)
  if not command:
    parser.error("give the command after '--', e.g. -- python -m t5lite.train --gin_file=...")
  try:
    return run(
      command, args.num_processes, args.devices_per_process, port=args.port, timeout=args.timeout, grace=args.grace
    )
  except (ValueError, OSError) as e:
    print(f"launch/local.py: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())

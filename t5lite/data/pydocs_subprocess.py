"""Runs the pydocs collector (`pydocs_collector.py`) in a clean child process, again after a crash.

The child gets no site-packages (`-S`), a minimal environment with
PYTHONHASHSEED=0, an empty working folder and a closed stdin, so hundreds of
imports neither slow down nor change the caller's process, and what it
collects depends on the Python build alone.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

#: The program the child runs, by file path.
COLLECTOR_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pydocs_collector.py")

# Modules not imported at all (with everything below them): import side
# effects (`antigravity` opens a browser, `this` prints), GUI toolkits and
# demos, tests, packaging tools (`distutils` is deprecated, gone in 3.12 and
# shadowed by setuptools in most environments), the data module behind the
# topics (added separately), and the platform modules whose contents are
# documented under `os` / `os.path` instead.
_SKIP_MODULES = (
  "antigravity",
  "this",
  "__hello__",
  "__phello__",
  "idlelib",
  "tkinter",
  "turtle",
  "turtledemo",
  "lib2to3",
  "ensurepip",
  "distutils",
  "test",
  "pydoc_data",
  "posix",
  "nt",
  "posixpath",
  "ntpath",
  "genericpath",
)

# Name components that exclude a submodule (and everything below it).
_SKIP_COMPONENTS = ("test", "tests", "idle_test", "__main__")

# Packages whose submodules are not walked (the codecs under `encodings` are
# ~120 near-empty generated modules).
_NO_SUBMODULES = ("encodings",)

# Documented under a name that is not the module's own `__name__`.
_EXTRA_MODULES = ("os.path",)

# Environment variables passed on to the collecting process.
_KEEP_ENV = ("PATH", "TMPDIR", "SYSTEMROOT")

_COLLECT_TIMEOUT_S = 900

# A child that dies inside an import (a crash, os._exit) is run again without
# that module, at most this many times.
_MAX_CRASH_RETRIES = 5
_PROGRESS_MARKER = "pydocs-collect: importing "


def _child_command(skip_modules: Sequence[str]) -> list[str]:
  """The command line that runs the collector in a child: `python -S -B [-P] COLLECTOR_PATH CONFIG_JSON`."""
  config = {
    "skip_modules": list(skip_modules),
    "skip_components": list(_SKIP_COMPONENTS),
    "no_submodules": list(_NO_SUBMODULES),
    "extra_modules": list(_EXTRA_MODULES),
    "progress_marker": _PROGRESS_MARKER,
  }
  flags = ["-S", "-B"]
  if sys.version_info >= (3, 11):
    flags.append("-P")  # Do not put the script's folder on sys.path.
  return [sys.executable, *flags, COLLECTOR_PATH, json.dumps(config)]


def _child_env(workdir: str) -> dict[str, str]:
  env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
  env.update(
    PYTHONHASHSEED="0",
    PYTHONIOENCODING="utf-8",
    PYTHONDONTWRITEBYTECODE="1",
    LANG="C.UTF-8",
    LC_ALL="C.UTF-8",
    TERM="dumb",
    HOME=workdir,
  )
  return env


def collect_documents(timeout: float = _COLLECT_TIMEOUT_S) -> list[tuple[str, str]]:
  """Collects the corpus as sorted (name, text) pairs, in a child process.

  Deterministic for a given Python build. If the child dies while importing
  a module, that module is skipped and the child run again (a few times at
  most).

  Args:
    timeout: seconds each run of the child may take.

  Raises:
    RuntimeError: the child failed for another reason or too often (the
      message holds the end of its stderr), or printed no valid JSON, no
      documents or duplicate names.
    subprocess.TimeoutExpired: a run took longer than `timeout`.
  """
  skip_modules = list(_SKIP_MODULES)
  for attempt in range(_MAX_CRASH_RETRIES + 1):
    with tempfile.TemporaryDirectory(prefix="pydocs_collect_") as workdir:
      result = subprocess.run(
        _child_command(skip_modules),
        cwd=workdir,
        env=_child_env(workdir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
      )
    if result.returncode == 0:
      break
    stderr = result.stderr.decode("utf-8", "replace")
    culprit = _last_import(stderr)
    if culprit is None or culprit in skip_modules or attempt == _MAX_CRASH_RETRIES:
      raise RuntimeError(
        f"Collecting the pydocs corpus failed (exit code "
        f"{result.returncode}, last import {culprit!r}):\n"
        f"{stderr[-4000:]}"
      )
    logging.warning(
      "pydocs: the collector died importing %r (exit code %d); running it again without that module.",
      culprit,
      result.returncode,
    )
    skip_modules.append(culprit)
  try:
    payload = json.loads(result.stdout.decode("utf-8"))
  except ValueError as e:
    raise RuntimeError(f"The pydocs collector printed something that is not JSON: {result.stdout[:200]!r}") from e
  documents = [(str(name), str(text)) for name, text in payload["documents"]]
  names = [name for name, _ in documents]
  if len(set(names)) != len(names):
    raise RuntimeError("The pydocs collector returned duplicate names.")
  if not documents:
    raise RuntimeError("The pydocs collector found no documents.")
  return documents


def _last_import(stderr: str) -> Optional[str]:
  """The module the child was importing last, from its progress lines."""
  for line in reversed(stderr.splitlines()):
    if line.startswith(_PROGRESS_MARKER):
      return line[len(_PROGRESS_MARKER) :].strip() or None
  return None

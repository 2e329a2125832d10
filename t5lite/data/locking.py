"""A small cross-process file lock, for "build this once" sections.

Several processes (pytest workers, the hosts of a multi-process run, two
shells started at the same time) may all find that a cached artefact such as a
prepared TFDS dataset is missing and start to build it.  Wrapping the
check-then-build in `file_lock(path)` makes the first one build while the
others wait, and then find the finished artefact and reuse it.

The lock is an advisory `fcntl.flock` on a lock file.  `flock` locks belong to
the open file description, so the lock also excludes other threads of the same
process that open the file themselves, and the kernel releases it when the
holder dies, so a crashed builder never leaves a stale lock behind.  The lock
file is left in place on release: removing it would let a waiter lock an
unlinked inode while a newcomer locks a fresh file of the same name.

POSIX only (fcntl).  `flock` is not reliable on some network file systems;
keep lock files on a local disk when that matters.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from typing import Iterator, Optional


@contextlib.contextmanager
def file_lock(
  path: str | os.PathLike,
  timeout: Optional[float] = None,
  poll_interval: float = 0.1,
) -> Iterator[str]:
  """Holds an exclusive lock on the file `path` for the `with` block.

  Args:
    path: the lock file; it and its parent folders are created if missing.
    timeout: seconds to wait for the lock; None waits for as long as it
      takes, 0 tries once.
    poll_interval: seconds between tries while waiting with a timeout.

  Yields:
    The lock file's path, as a string.

  Raises:
    TimeoutError: the lock was still held by someone else after `timeout`.
  """
  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    if timeout is None:
      fcntl.flock(fd, fcntl.LOCK_EX)  # EINTR is retried by Python.
    else:
      deadline = time.monotonic() + max(0.0, timeout)
      while True:
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
          break
        except OSError as e:
          if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          raise TimeoutError(f"Could not lock {path!r} within {timeout} s; another process holds it.") from None
        time.sleep(min(poll_interval, remaining))
    try:
      yield path
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)

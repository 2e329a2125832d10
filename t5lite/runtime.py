"""Process settings for CPU hosts, and JAX's persistent compilation cache.

The entry points (train, infer, eval, the benchmarks) apply the settings
before JAX starts computing; neither changes what is computed:
* glibc malloc keeps freed memory (`tune_glibc_malloc`, as MALLOC_ARENA_MAX=1
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1), so XLA:CPU's large per-step
  buffers are not page-faulted in again every step; the process does not give
  freed memory back to the OS;
* on CPU-only hosts, XLA_FLAGS gets `DEFAULT_XLA_CPU_FLAGS` (standalone matmuls
  on XLA's Eigen path instead of YNNPACK); a flag the user already set wins.
`T5LITE_PROCESS_SETTINGS=0` turns both off. Imports no jax until the cache is
set up, so it can run first. docs/performance.md has the measurements.
"""

from __future__ import annotations

import importlib.util
import os
import sys

DEFAULT_XLA_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def tune_glibc_malloc() -> bool:
  """Keeps freed memory in the process (see the module docstring).

  Returns False where it does not apply (no glibc).
  """
  import ctypes  # pylint: disable=g-import-not-at-top

  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):
    return False
  ok = bool(mallopt(_M_ARENA_MAX, 1))
  ok &= bool(mallopt(_M_MMAP_MAX, 0))
  ok &= bool(mallopt(_M_TRIM_THRESHOLD, -1))  # -1: never trim (mallopt(3))
  return ok


def set_xla_cpu_flags(flags: str) -> str:
  """Appends `flags` to XLA_FLAGS, leaving any flag the user already set alone.

  Must run before JAX initialises its backend. Returns the resulting XLA_FLAGS.
  """
  current = os.environ.get("XLA_FLAGS", "")
  have = {f.split("=", 1)[0] for f in current.split()}
  extra = [f for f in flags.split() if f.split("=", 1)[0] not in have]
  os.environ["XLA_FLAGS"] = " ".join(current.split() + extra)
  return os.environ["XLA_FLAGS"]


def cpu_only_host() -> bool:
  """True unless JAX_PLATFORMS or an installed GPU/TPU plugin points elsewhere."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")
  return not any(importlib.util.find_spec(m) for m in plugins)


def _backend_started() -> bool:
  jax = sys.modules.get("jax")
  if jax is None:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

    return xla_bridge.backends_are_initialized()
  except Exception:  # pylint: disable=broad-except  # private API moved: assume started
    return True


def apply_process_settings(malloc: bool = True, xla_cpu_flags: str = DEFAULT_XLA_CPU_FLAGS) -> dict:
  """Applies both settings (unless T5LITE_PROCESS_SETTINGS=0); returns what was done."""
  done = {"malloc_tuned": False, "xla_flags": os.environ.get("XLA_FLAGS", "")}
  if os.environ.get("T5LITE_PROCESS_SETTINGS", "1") == "0":
    return done
  if malloc:
    done["malloc_tuned"] = tune_glibc_malloc()
  if xla_cpu_flags and cpu_only_host() and not _backend_started():
    done["xla_flags"] = set_xla_cpu_flags(xla_cpu_flags)
  return done


def add_flags(parser) -> None:
  """--malloc and --xla_cpu_flags for a benchmark's argparse parser."""
  parser.add_argument(
    "--malloc",
    choices=("tuned", "default"),
    default="tuned",
    help="tuned: keep freed memory in the process (see t5lite.runtime); default: leave glibc malloc as it is",
  )
  parser.add_argument(
    "--xla_cpu_flags",
    default=DEFAULT_XLA_CPU_FLAGS,
    help="flags appended to XLA_FLAGS before JAX starts, on CPU-only hosts ('' for none). Default: %(default)s",
  )


def apply_flags(args) -> dict:
  """apply_process_settings as `add_flags`' flags say; warns if JAX came first."""
  if "jax" in sys.modules and (args.malloc == "tuned" or args.xla_cpu_flags):
    print("warning: jax was imported before the process settings (malloc/XLA_FLAGS) were applied", file=sys.stderr)
  return apply_process_settings(malloc=args.malloc == "tuned", xla_cpu_flags=args.xla_cpu_flags)


# ---------------------------------------------------------------------------
# Persistent compilation cache
# ---------------------------------------------------------------------------

COMPILATION_CACHE_ENV = "T5LITE_COMPILATION_CACHE_DIR"
_OFF = ("", "none", "off", "0")
_cache_state: dict = {}


def default_compilation_cache_dir() -> str:
  """$T5LITE_COMPILATION_CACHE_DIR if set, else JAX's own $JAX_COMPILATION_CACHE_DIR if set,
  else ~/.cache/t5lite/jax_compilation_cache ($XDG_CACHE_HOME, when set, takes the place of ~/.cache)."""
  for name in (COMPILATION_CACHE_ENV, "JAX_COMPILATION_CACHE_DIR"):
    if name in os.environ:
      return os.environ[name]
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "t5lite", "jax_compilation_cache")


def setup_compilation_cache(directory: "str | None" = None, min_compile_time_s: float = 1.0) -> "str | None":
  """Turns on JAX's persistent compilation cache in `directory`; returns the
  directory in use, or None when the cache is off.

  `directory` None means `default_compilation_cache_dir()`; '', 'none', 'off'
  or '0' turn the cache off. Programs whose compilation took at least
  `min_compile_time_s` seconds are written there (JAX's
  `jax_persistent_cache_min_compile_time_secs`), and a later process that
  compiles the same program on the same backend, jax version and flags loads
  it instead: a restarted or resumed run skips the train step's compile.

  A directory that cannot be created or written gets one warning on stderr
  and the run carries on without it (keeping a cache set up before, if any;
  nothing raised). Calling again with the same directory only updates the
  threshold; with another one, switches to it.
  """
  import jax  # pylint: disable=g-import-not-at-top

  path = default_compilation_cache_dir() if directory is None else str(directory)
  if path.strip().lower() in _OFF:
    if _cache_state.get("dir"):
      jax.config.update("jax_enable_compilation_cache", False)
      _reset_jax_cache()
    _cache_state["dir"] = None
    return None
  path = os.path.abspath(os.path.expanduser(path))
  if _cache_state.get("dir") == path:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    return path
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    if not _cache_state.get("warned"):
      print(
        f"warning: the compilation cache directory {path} cannot be written ({e.strerror or e}); "
        f"carrying on without a compilation cache (set COMPILATION_CACHE_DIR or {COMPILATION_CACHE_ENV} "
        "to a writable directory, or to 'none' to silence this)",
        file=sys.stderr,
      )
      _cache_state["warned"] = True
    return _cache_state.get("dir")
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
  _reset_jax_cache()  # JAX decides once per process whether its cache is on: ask again
  _cache_state["dir"] = path
  return path


def _reset_jax_cache() -> None:
  """Makes JAX decide again whether its persistent cache is on (it decides once per
  process, at the first compile), through jax.experimental.compilation_cache."""
  from jax.experimental import compilation_cache as cc  # pylint: disable=g-import-not-at-top

  cc.compilation_cache.reset_cache()

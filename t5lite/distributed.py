"""Starting jax.distributed for multi-process runs, and failing fast when a process dies.

`maybe_initialize()`, run by the command line once its flags are parsed, decides from its
arguments and the environment whether this process is one of several
(`plan_from_env`), and if so calls `jax.distributed.initialize` and installs a
fail-fast hook: a process that fails tells the others to stop, through jax's
coordination service, instead of leaving them to wait for it in a collective.
Imports jax only when called, so the launchers can use its names.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import sys
import threading
import time
from typing import Any, Mapping, Optional, Union

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "T5LITE_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "T5LITE_NUM_PROCESSES"
ENV_PROCESS_ID = "T5LITE_PROCESS_ID"
ENV_LOCAL_DEVICE_COUNT = "T5LITE_LOCAL_DEVICE_COUNT"
ENV_MODE = "T5LITE_DISTRIBUTED"
ENV_HEARTBEAT = "T5LITE_HEARTBEAT_TIMEOUT"
ENV_SHUTDOWN = "T5LITE_SHUTDOWN_TIMEOUT"
ENV_INIT = "T5LITE_INIT_TIMEOUT"

DEFAULT_HEARTBEAT_TIMEOUT = 60
DEFAULT_SHUTDOWN_TIMEOUT = 90
DEFAULT_INIT_TIMEOUT = 300

# Exit code of a process stopped because another one failed (EX_TEMPFAIL: nothing
# was wrong with this process; rerun once the failed one is fixed).
PEER_FAILED_EXIT_CODE = 75
STOP_KEY = "t5lite/stop/{}"  # one key per process: what its watchdog waits on
_CLEAN_EXIT = "<clean exit>"
_COORDINATOR_LINGER_S = 2.0
_WATCH_TIMEOUT_MS = 10_000

_ON = ("1", "true", "yes", "on", "auto")
_OFF = ("0", "false", "no", "off", "none")


# --------------------------------------------------------------------------- #
# What to initialize with (pure: an env mapping in, jax.distributed kwargs out).
# --------------------------------------------------------------------------- #
def _int(env: Mapping[str, str], name: str) -> Optional[int]:
  value = env.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer.") from None


def _first_int(text: str) -> Optional[int]:
  """The leading integer of SLURM's '1(x4)' / '2,1' style counts."""
  digits = ""
  for ch in text.strip():
    if not ch.isdigit():
      break
    digits += ch
  return int(digits) if digits else None


def _host_list_len(value: Optional[str]) -> int:
  return len([h for h in (value or "").split(",") if h.strip()])


def _timeouts(env: Mapping[str, str]) -> dict[str, int]:
  out = {}
  for key, name, default in (
    ("initialization_timeout", ENV_INIT, DEFAULT_INIT_TIMEOUT),
    ("heartbeat_timeout_seconds", ENV_HEARTBEAT, DEFAULT_HEARTBEAT_TIMEOUT),
    ("shutdown_timeout_seconds", ENV_SHUTDOWN, DEFAULT_SHUTDOWN_TIMEOUT),
  ):
    value = _int(env, name)
    if value is not None and value <= 0:
      raise ValueError(f"{name}={value} must be a positive number of seconds.")
    out[key] = default if value is None else value
  return out


def _slurm_tasks(env: Mapping[str, str]) -> Optional[int]:
  """Tasks of the current srun step, or None outside one (the batch script itself)."""
  # jax's SLURM detection needs these; the batch script (no srun) lacks the step list.
  if not all(k in env for k in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NODELIST")):
    return None
  return _int(env, "SLURM_STEP_NUM_TASKS") or _int(env, "SLURM_NTASKS")


def _slurm_local_devices(env: Mapping[str, str], local_device_count: Optional[int]) -> Optional[list[int]]:
  """All local GPUs when SLURM runs one task per node (jax would pick GPU SLURM_LOCALID only)."""
  per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
  if per_node is None or _first_int(per_node) != 1:
    return None  # several tasks per node: one GPU each, as jax does
  count = local_device_count or _int(env, ENV_LOCAL_DEVICE_COUNT) or _int(env, "SLURM_GPUS_ON_NODE")
  if count is None and env.get("CUDA_VISIBLE_DEVICES", "").strip():
    count = _host_list_len(env["CUDA_VISIBLE_DEVICES"])
  if count is None:
    logger.warning(
      "SLURM runs one task per node but the number of local GPUs is unknown; jax will use one. "
      "Set %s (launch/slurm.py does).",
      ENV_LOCAL_DEVICE_COUNT,
    )
    return None
  return list(range(count))


def plan_from_env(
  env: Optional[Mapping[str, str]] = None,
  *,
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  local_device_count: Optional[int] = None,
) -> Optional[tuple[str, dict[str, Any]]]:
  """(source, jax.distributed.initialize kwargs), or None for a single process.

  The first of these that applies decides:
    1. explicit arguments (coordinator_address, num_processes, process_id);
    2. T5LITE_COORDINATOR_ADDRESS / T5LITE_NUM_PROCESSES / T5LITE_PROCESS_ID, set
       by launch/local.py and by the per-node commands of `launch/slurm.py --plain`;
    3. an srun step of several tasks (SLURM), a Cloud TPU pod (TPU_WORKER_HOSTNAMES
       or TPU_PROCESS_ADDRESSES naming several hosts, MEGASCALE_* for multislice)
       or Open MPI: the kwargs leave finding the peers to jax's cluster detection;
    4. T5LITE_DISTRIBUTED=auto forces (3) where the environment does not show it
       (on a TPU VM reached by `gcloud ... ssh` the worker list is in the metadata
       server); T5LITE_DISTRIBUTED=off turns everything off.
  Anything else is a single process. The kwargs always carry the timeouts
  (T5LITE_INIT_TIMEOUT, T5LITE_HEARTBEAT_TIMEOUT, T5LITE_SHUTDOWN_TIMEOUT, in
  seconds; defaults DEFAULT_*_TIMEOUT).

  Raises:
    ValueError: an inconsistent setting (a process id but no count, an id out of
      range, an address without a port, a timeout <= 0, an unknown mode).
  """
  env = os.environ if env is None else env
  mode = env.get(ENV_MODE, "").strip().lower()
  if mode in _OFF:
    return None
  if mode and mode not in _ON:
    raise ValueError(f"{ENV_MODE}={env[ENV_MODE]!r}: use 'auto' (force jax's cluster detection) or 'off'.")

  explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
  ours = any(env.get(k, "").strip() for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID))
  if explicit or ours:
    source = "arguments" if explicit else "T5LITE_* environment"
    address = coordinator_address or env.get(ENV_COORDINATOR, "").strip() or None
    count = num_processes if num_processes is not None else _int(env, ENV_NUM_PROCESSES)
    index = process_id if process_id is not None else _int(env, ENV_PROCESS_ID)
    if count is None:
      raise ValueError(f"The number of processes is missing: pass num_processes or set {ENV_NUM_PROCESSES}.")
    if count < 1:
      raise ValueError(f"num_processes={count} must be >= 1.")
    if count == 1:
      return None
    if index is None:
      raise ValueError(f"This process's id is missing: pass process_id or set {ENV_PROCESS_ID} (0..{count - 1}).")
    if not 0 <= index < count:
      raise ValueError(f"process_id={index} must be in 0..{count - 1} for {count} processes.")
    if not address:
      raise ValueError(
        f"The coordinator address is missing: pass coordinator_address or set {ENV_COORDINATOR}=HOST:PORT."
      )
    if ":" not in address:
      raise ValueError(f"Coordinator address {address!r} needs a port: HOST:PORT (process 0's host).")
    kwargs: dict[str, Any] = dict(
      coordinator_address=address,
      num_processes=count,
      process_id=index,
      cluster_detection_method="deactivate",  # we know everything; don't let SLURM vars override it
    )
    devices = local_device_count or _int(env, ENV_LOCAL_DEVICE_COUNT)
    if devices:
      kwargs["local_device_ids"] = list(range(devices))
    return source, {**kwargs, **_timeouts(env)}

  tasks = _slurm_tasks(env)
  if tasks is not None and tasks > 1:
    kwargs = {}
    devices = _slurm_local_devices(env, local_device_count)
    if devices is not None:
      kwargs["local_device_ids"] = devices
    return "SLURM", {**kwargs, **_timeouts(env)}

  tpu_hosts = max(_host_list_len(env.get("TPU_WORKER_HOSTNAMES")), _host_list_len(env.get("TPU_PROCESS_ADDRESSES")))
  slices = _int(env, "MEGASCALE_NUM_SLICES") or 1
  if tpu_hosts > 1 or slices > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "Cloud TPU", _timeouts(env)

  if (_int(env, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return "Open MPI", _timeouts(env)

  if mode in _ON:
    return f"{ENV_MODE}={env[ENV_MODE]}", _timeouts(env)
  return None


def init_kwargs_from_env(
  env: Optional[Mapping[str, str]] = None, **explicit: Union[str, int, None]
) -> Optional[dict[str, Any]]:
  """The kwargs maybe_initialize would give jax.distributed.initialize, or None (single process).

  `explicit` takes `plan_from_env`'s keyword arguments (coordinator_address,
  num_processes, process_id, local_device_count). An empty dict (plus timeouts)
  means "let jax detect the cluster" (SLURM, TPU, MPI).
  Raises ValueError for an inconsistent environment (e.g. a process id but no count).
  """
  plan = plan_from_env(env, **explicit)
  return None if plan is None else plan[1]


# --------------------------------------------------------------------------- #
# Initializing.
# --------------------------------------------------------------------------- #
class _State:
  initialized = False
  source: Optional[str] = None
  failure: Optional[tuple[int, str]] = None
  stopping = False
  client: Any = None
  process_id = 0
  num_processes = 1
  watchdog: Optional[threading.Thread] = None


_state = _State()
_lock = threading.Lock()


def maybe_initialize(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  local_device_count: Optional[int] = None,
) -> bool:
  """Initializes jax.distributed when this is one of several processes; returns whether it is.

  Call it before any jax computation (jax.devices() included). A second call does
  nothing and returns the same answer. `plan_from_env` says where the settings come from.
  """
  with _lock:
    if _state.initialized:
      return True
    import jax  # pylint: disable=g-import-not-at-top

    if jax.distributed.is_initialized():  # someone else did it: just add our hooks
      _state.initialized, _state.source = True, "already initialized"
      _install_fail_fast()
      return True
    plan = plan_from_env(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      local_device_count=local_device_count,
    )
    if plan is None:
      return False
    source, kwargs = plan
    _use_gloo_on_cpu(jax)
    accepted = inspect.signature(jax.distributed.initialize).parameters
    dropped = sorted(k for k in kwargs if k not in accepted)
    if dropped:
      logger.info("This jax's distributed.initialize has no %s; leaving them to jax.", dropped)
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    logger.info("Initializing jax.distributed from %s: %s", source, kwargs)
    jax.distributed.initialize(**kwargs)
    _state.initialized, _state.source = True, source
    _install_fail_fast()  # starts no backend: the caller may still configure jax
    return True


def _use_gloo_on_cpu(jax) -> None:
  """Cross-process collectives on CPU need gloo (the default in recent jax; set it if unset)."""
  platforms = (os.environ.get("JAX_PLATFORMS") or getattr(jax.config, "jax_platforms", None) or "").lower()
  if platforms and "cpu" not in platforms:
    return
  try:
    if getattr(jax.config, "jax_cpu_collectives_implementation", None) in (None, ""):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError) as e:  # an option this jax does not have
    logger.info("Could not select gloo CPU collectives: %s", e)


def __getattr__(name: str):
  # process_index / process_count are jax's own functions, imported when first asked for
  # (so the launchers can import this module without jax).
  if name in ("process_index", "process_count"):
    import jax  # pylint: disable=g-import-not-at-top

    return getattr(jax, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_primary() -> bool:
  """Whether this is process 0 (the one that writes config.gin, prints, ...)."""
  import jax  # pylint: disable=g-import-not-at-top

  return jax.process_index() == 0


# --------------------------------------------------------------------------- #
# Fail fast (ours): a failing process tells the others to stop (docs/launching.md, "Failures").
# --------------------------------------------------------------------------- #
def _exit_code(status: Any) -> int:
  if status is None:
    return 0
  if isinstance(status, bool):
    return int(status)
  if isinstance(status, int):
    return status & 0xFF
  return 1  # sys.exit("message") prints the message and exits 1


def record_failure(code: int, why: str) -> None:
  """Marks this process as failing (exit code, reason); acted on at exit. Public for wrappers."""
  if code and _state.failure is None:
    _state.failure = (code, why)


def _install_fail_fast() -> None:
  """Wraps sys.excepthook and sys.exit, registers `_at_exit` and starts the watchdog thread.

  A failing process writes "process i failed with exit code c (why)" under every
  other process's STOP_KEY and leaves with its own code; each watchdog waits on its
  own key and ends its process with PEER_FAILED_EXIT_CODE. Without a key-value
  store in the jax.distributed client, only jax's heartbeats remain (a warning).
  """
  try:
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top

    state = jax_distributed.global_state
    client, process_id, num_processes = state.client, state.process_id, state.num_processes
  except (ImportError, AttributeError):
    client, process_id, num_processes = None, 0, 1
  if client is None or not all(hasattr(client, m) for m in ("key_value_set", "blocking_key_value_get")):
    logger.warning("No jax.distributed client with a key-value store; relying on jax's heartbeats alone.")
    return
  _state.client, _state.process_id, _state.num_processes = client, int(process_id), int(num_processes)

  previous_hook = sys.excepthook

  def excepthook(kind, value, tb):
    previous_hook(kind, value, tb)
    record_failure(130 if issubclass(kind, KeyboardInterrupt) else 1, f"{kind.__name__}: {value}")

  sys.excepthook = excepthook

  previous_exit = sys.exit

  def exit(status=None):  # pylint: disable=redefined-builtin
    code = _exit_code(status)
    if code:
      record_failure(code, f"sys.exit({status!r})")
    previous_exit(status)

  exit.__doc__ = previous_exit.__doc__
  sys.exit = exit
  # atexit runs last-registered first: this runs before jax's own clean-up, which
  # would wait in the shutdown barrier.
  atexit.register(_at_exit)
  _state.watchdog = threading.Thread(target=_watch, name="t5lite-peer-watchdog", daemon=True)
  _state.watchdog.start()


def _flush() -> None:
  """What os._exit would lose: buffered prints and log records."""
  handlers = list(logging.getLogger().handlers)
  for target in [sys.stdout, sys.stderr, *handlers]:
    try:
      target.flush()
    except Exception:  # pylint: disable=broad-except
      pass


def _set(key: str, value: str) -> bool:
  try:
    _state.client.key_value_set(key, value)
    return True
  except Exception:  # pylint: disable=broad-except
    return False  # already set (another process failed first), or the service is gone


def _at_exit() -> None:
  _state.stopping = True
  if _state.failure is None:
    # A clean exit: wake our watchdog and wait for it, so that no thread is inside a
    # jax call when the interpreter shuts down; then jax's shutdown barrier follows.
    _set(STOP_KEY.format(_state.process_id), _CLEAN_EXIT)
    if _state.watchdog is not None:
      _state.watchdog.join(_WATCH_TIMEOUT_MS / 1000 + 1)
    return
  code, why = _state.failure
  message = f"process {_state.process_id} failed with exit code {code} ({why})"
  for other in range(_state.num_processes):
    if other != _state.process_id:
      _set(STOP_KEY.format(other), message)
  print(f"t5lite.distributed: {message}; telling the other processes to stop.", file=sys.stderr)
  _leave(code)


def _leave(code: int) -> None:
  _flush()
  if _state.process_id == 0:
    # The coordination service lives in process 0: when it goes, jax aborts every
    # other process at once. Give them a moment to read the key and leave first.
    time.sleep(_COORDINATOR_LINGER_S)
  os._exit(code)  # pylint: disable=protected-access


def _watch() -> None:
  client, key = _state.client, STOP_KEY.format(_state.process_id)
  while not _state.stopping:
    try:
      message = client.blocking_key_value_get(key, _WATCH_TIMEOUT_MS)
    except Exception as e:  # pylint: disable=broad-except
      if not _state.stopping and "DEADLINE_EXCEEDED" not in str(e):
        time.sleep(1.0)  # service unreachable: jax's heartbeat decides what happens
      continue
    if _state.stopping or message == _CLEAN_EXIT:
      return
    print(f"t5lite.distributed: stopping process {_state.process_id} because {message}.", file=sys.stderr)
    _leave(PEER_FAILED_EXIT_CODE)

"""t5lite/distributed.py: what maybe_initialize decides from the environment, and mesh checks.

The real multi-process initialization (and the fail-fast hook) is exercised by
test_local.py, through real OS processes.
"""

import os
import subprocess
import sys

import pytest

from t5lite import distributed, mesh_shape

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUTS = dict(
  initialization_timeout=distributed.DEFAULT_INIT_TIMEOUT,
  heartbeat_timeout_seconds=distributed.DEFAULT_HEARTBEAT_TIMEOUT,
  shutdown_timeout_seconds=distributed.DEFAULT_SHUTDOWN_TIMEOUT,
)
SLURM_STEP = {
  "SLURM_JOB_ID": "4242",
  "SLURM_PROCID": "1",
  "SLURM_LOCALID": "0",
  "SLURM_STEP_NODELIST": "gpu[01-02]",
  "SLURM_NTASKS": "2",
  "SLURM_STEP_NUM_TASKS": "2",
  "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
  "SLURM_JOB_NUM_NODES": "2",
}


def test_single_process_environments_do_nothing():
  assert distributed.init_kwargs_from_env({}) is None
  assert distributed.init_kwargs_from_env({"PATH": "/usr/bin", "HOME": "/root"}) is None
  assert distributed.init_kwargs_from_env({distributed.ENV_NUM_PROCESSES: "1", distributed.ENV_PROCESS_ID: "0"}) is None
  assert distributed.init_kwargs_from_env({}, num_processes=1) is None
  # SLURM with one task (or the batch script itself, outside srun) is one process.
  assert distributed.init_kwargs_from_env({**SLURM_STEP, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}) is None
  batch_script = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}
  assert distributed.init_kwargs_from_env(batch_script) is None
  # A single-host TPU VM lists one worker.
  assert distributed.init_kwargs_from_env({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
  assert distributed.init_kwargs_from_env({**SLURM_STEP, distributed.ENV_MODE: "off"}) is None


def test_t5lite_environment():
  env = {
    distributed.ENV_COORDINATOR: "node0:1234",
    distributed.ENV_NUM_PROCESSES: "4",
    distributed.ENV_PROCESS_ID: "3",
    **SLURM_STEP,  # ours wins over SLURM's
  }
  assert distributed.init_kwargs_from_env(env) == dict(
    coordinator_address="node0:1234",
    num_processes=4,
    process_id=3,
    cluster_detection_method="deactivate",
    **TIMEOUTS,
  )
  source, _ = distributed.plan_from_env(env)
  assert source == "T5LITE_* environment"


def test_arguments_win_over_the_environment():
  env = {distributed.ENV_COORDINATOR: "node0:1234", distributed.ENV_NUM_PROCESSES: "4", distributed.ENV_PROCESS_ID: "3"}
  kwargs = distributed.init_kwargs_from_env(env, process_id=1, coordinator_address="other:99", local_device_count=2)
  assert kwargs["process_id"] == 1 and kwargs["num_processes"] == 4
  assert kwargs["coordinator_address"] == "other:99"
  assert kwargs["local_device_ids"] == [0, 1]
  assert distributed.plan_from_env({}, coordinator_address="h:1", num_processes=2, process_id=0)[0] == "arguments"


def test_timeouts_from_the_environment():
  env = {
    distributed.ENV_COORDINATOR: "h:1",
    distributed.ENV_NUM_PROCESSES: "2",
    distributed.ENV_PROCESS_ID: "0",
    distributed.ENV_HEARTBEAT: "15",
    distributed.ENV_SHUTDOWN: "20",
    distributed.ENV_INIT: "30",
  }
  kwargs = distributed.init_kwargs_from_env(env)
  assert (
    kwargs["heartbeat_timeout_seconds"],
    kwargs["shutdown_timeout_seconds"],
    kwargs["initialization_timeout"],
  ) == (15, 20, 30)


@pytest.mark.parametrize(
  "env, message",
  [
    ({distributed.ENV_NUM_PROCESSES: "2", distributed.ENV_COORDINATOR: "h:1"}, "T5LITE_PROCESS_ID"),
    ({distributed.ENV_PROCESS_ID: "0", distributed.ENV_COORDINATOR: "h:1"}, "T5LITE_NUM_PROCESSES"),
    ({distributed.ENV_NUM_PROCESSES: "2", distributed.ENV_PROCESS_ID: "0"}, "T5LITE_COORDINATOR_ADDRESS"),
    ({distributed.ENV_NUM_PROCESSES: "2", distributed.ENV_PROCESS_ID: "2", distributed.ENV_COORDINATOR: "h:1"}, "0..1"),
    (
      {distributed.ENV_NUM_PROCESSES: "two", distributed.ENV_PROCESS_ID: "0", distributed.ENV_COORDINATOR: "h:1"},
      "not an integer",
    ),
    (
      {distributed.ENV_NUM_PROCESSES: "2", distributed.ENV_PROCESS_ID: "0", distributed.ENV_COORDINATOR: "h"},
      "HOST:PORT",
    ),
    ({distributed.ENV_MODE: "maybe"}, "auto"),
  ],
)
def test_inconsistent_environments_are_refused(env, message):
  with pytest.raises(ValueError, match=message):
    distributed.init_kwargs_from_env(env)


def test_slurm_one_task_per_node_gets_all_local_gpus():
  kwargs = distributed.init_kwargs_from_env({**SLURM_STEP, distributed.ENV_LOCAL_DEVICE_COUNT: "8"})
  assert kwargs == dict(local_device_ids=list(range(8)), **TIMEOUTS)  # jax's detection does the rest
  assert distributed.plan_from_env(SLURM_STEP)[0] == "SLURM"
  # Without our variable: SLURM's GPU count, then CUDA_VISIBLE_DEVICES.
  assert distributed.init_kwargs_from_env({**SLURM_STEP, "SLURM_GPUS_ON_NODE": "4"})["local_device_ids"] == [0, 1, 2, 3]
  assert distributed.init_kwargs_from_env({**SLURM_STEP, "CUDA_VISIBLE_DEVICES": "0,1"})["local_device_ids"] == [0, 1]


def test_slurm_several_tasks_per_node_leaves_devices_to_jax():
  env = {
    **SLURM_STEP,
    "SLURM_NTASKS": "16",
    "SLURM_STEP_NUM_TASKS": "16",
    "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
    "SLURM_GPUS_ON_NODE": "8",
  }
  assert distributed.init_kwargs_from_env(env) == TIMEOUTS


def test_tpu_pods_and_forced_auto_detection():
  assert distributed.plan_from_env({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3", "TPU_WORKER_ID": "2"}) == (
    "Cloud TPU",
    TIMEOUTS,
  )
  assert distributed.plan_from_env({"MEGASCALE_NUM_SLICES": "2"}) == ("Cloud TPU", TIMEOUTS)
  assert distributed.plan_from_env({"OMPI_COMM_WORLD_SIZE": "4"}) == ("Open MPI", TIMEOUTS)
  assert distributed.init_kwargs_from_env({distributed.ENV_MODE: "auto"}) == TIMEOUTS


def test_maybe_initialize_in_a_single_process_does_nothing(monkeypatch):
  for name in list(os.environ):
    if name.startswith(("T5LITE_", "SLURM_", "TPU_", "MEGASCALE_", "OMPI_")):
      monkeypatch.delenv(name)
  import jax  # pylint: disable=g-import-not-at-top

  assert distributed.maybe_initialize() is False
  assert distributed.maybe_initialize() is False
  assert not jax.distributed.is_initialized()
  assert jax.process_count() == 1 and distributed.is_primary()
  assert distributed.process_index is jax.process_index and distributed.process_count is jax.process_count


def test_maybe_initialize_in_a_fresh_interpreter_touches_nothing(tmp_path):
  """No backend is started, no hook installed: the caller may still configure jax afterwards."""
  script = tmp_path / "single.py"
  script.write_text(
    "import sys, jax\n"
    "from jax._src import xla_bridge\n"
    "from t5lite import distributed\n"
    "hook = sys.excepthook\n"
    "assert distributed.maybe_initialize(num_processes=1) is False\n"
    "assert not xla_bridge.backends_are_initialized()\n"
    "assert sys.excepthook is hook and not jax.distributed.is_initialized()\n"
    "print('ok', jax.device_count())\n"
  )
  env = {k: v for k, v in os.environ.items() if not k.startswith(("T5LITE_", "SLURM_"))}
  out = subprocess.run(
    [sys.executable, str(script)],
    env={**env, "PYTHONPATH": REPO},
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("ok ")


def test_plan_mesh():
  assert mesh_shape.plan_mesh(16, -1, 4, 1) == {"data": 4, "fsdp": 4, "model": 1, "expert": 1}
  assert mesh_shape.plan_mesh(16, 2, 4, 2) == {"data": 2, "fsdp": 4, "model": 2, "expert": 1}
  assert mesh_shape.plan_mesh(8, 1, -1, 2) == {"data": 1, "fsdp": 4, "model": 2, "expert": 1}
  assert mesh_shape.plan_mesh(16, -1, 1, 1, 8) == {"data": 2, "fsdp": 1, "model": 1, "expert": 8}
  assert mesh_shape.plan_mesh(16, 2, 1, 1, -1) == {"data": 2, "fsdp": 1, "model": 1, "expert": 8}
  with pytest.raises(ValueError, match=r"does not fit 2 hosts \(16 devices\).*multiply to 3.*\[1, 2, 4, 8, 16\]"):
    mesh_shape.plan_mesh(16, -1, 3, 1, where="2 hosts")
  with pytest.raises(ValueError, match="uses 8 devices but the job has 16 devices"):
    mesh_shape.plan_mesh(16, 2, 2, 2)
  with pytest.raises(ValueError, match="Only one"):
    mesh_shape.plan_mesh(16, -1, -1, 1)
  with pytest.raises(ValueError, match="MODEL_PARALLELISM=0"):
    mesh_shape.plan_mesh(16, -1, 1, 0)

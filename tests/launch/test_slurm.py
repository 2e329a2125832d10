"""launch/slurm.py: the sbatch script, the plain per-node commands, and refused meshes."""

import os
import shlex

import pytest

from launch import slurm
from t5lite import distributed

TRAIN = ["--gin_file=models/t5_1_1/xl.gin", "--gin_file=runs/pretrain.gin", "--model_dir=/shared/runs/t5-xl"]


@pytest.fixture(autouse=True)
def nothing_runs_for_real(monkeypatch):
  """A safety net: these tests must never reach sbatch."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"a dry run tried to run {args[0]!r}")

  monkeypatch.setattr(slurm.subprocess, "call", refuse)


def script_of(capsys, argv):
  code = slurm.main(argv)
  out, err = capsys.readouterr()
  assert code == 0, err
  return out


def test_sbatch_script(capsys, tmp_path):
  out = script_of(
    capsys,
    [
      "--nodes",
      "4",
      "--gpus_per_node",
      "8",
      "--cpus_per_task",
      "32",
      "--time",
      "48:00:00",
      "--partition",
      "gpu",
      "--job_name",
      "t5xl",
      "--setup",
      "source /shared/t5lite/.venv/bin/activate",
      "--python",
      "python",
      "--workdir",
      str(tmp_path),
      *TRAIN,
      "--fsdp=8",
      "--dry_run",
      "--",
      "--gin.TRAIN_STEPS=1000",
    ],
  )
  lines = out.splitlines()
  assert lines[0] == "#!/bin/bash"
  for directive in (
    "--job-name=t5xl",
    "--nodes=4",
    "--ntasks-per-node=1",
    "--gpus-per-node=8",
    "--cpus-per-task=32",
    "--time=48:00:00",
    "--partition=gpu",
  ):
    assert f"#SBATCH {directive}" in lines
  assert f"cd {tmp_path}" in lines
  assert "source /shared/t5lite/.venv/bin/activate" in lines
  assert f"export {distributed.ENV_LOCAL_DEVICE_COUNT}=8" in lines
  [srun] = [shlex.split(l) for l in lines if l.startswith("srun ")]
  assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]
  assert srun[2:] == [
    "python",
    "-m",
    "t5lite.train",
    "--gin_file=models/t5_1_1/xl.gin",
    "--gin_file=runs/pretrain.gin",
    '--gin.MODEL_DIR="/shared/runs/t5-xl"',
    "--gin.DATA_PARALLELISM=4",
    "--gin.FSDP_PARALLELISM=8",
    "--gin.MODEL_PARALLELISM=1",
    "--gin.TRAIN_STEPS=1000",
  ]
  assert lines[-1] == "sbatch t5xl.sbatch"
  assert not os.path.exists("t5xl.sbatch")  # a dry run writes nothing


def test_plain_commands_one_per_node(capsys):
  out = script_of(
    capsys,
    [
      "--plain",
      "--nodes",
      "3",
      "--gpus_per_node",
      "4",
      "--coordinator",
      "10.0.0.5",
      "--port",
      "23456",
      "--python",
      "python3",
      *TRAIN,
      "--model=4",
    ],
  )
  lines = out.splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    words = shlex.split(line)
    assert words[:3] == [
      f"{distributed.ENV_COORDINATOR}=10.0.0.5:23456",
      f"{distributed.ENV_NUM_PROCESSES}=3",
      f"{distributed.ENV_PROCESS_ID}={i}",
    ]
    assert words[3:6] == ["python3", "-m", "t5lite.train"]
    assert "--gin.DATA_PARALLELISM=3" in words and "--gin.MODEL_PARALLELISM=4" in words
    # What maybe_initialize makes of node i's environment:
    env = dict(w.split("=", 1) for w in words[:3])
    assert distributed.init_kwargs_from_env(env)["process_id"] == i


def test_expert_parallelism_reaches_the_run_and_is_checked(capsys):
  out = script_of(
    capsys,
    ["--plain", "--nodes", "2", "--gpus_per_node", "4", "--coordinator", "10.0.0.5", *TRAIN, "--expert=4"],
  )
  words = shlex.split(out.splitlines()[0])
  assert "--gin.DATA_PARALLELISM=2" in words and "--gin.EXPERT_PARALLELISM=4" in words
  assert slurm.main(["--plain", "--nodes", "2", "--coordinator", "10.0.0.5", *TRAIN, "--expert=3"]) == 2
  assert "expert=3" in capsys.readouterr().err


def test_plain_needs_the_coordinator(capsys):
  assert slurm.main(["--plain", "--nodes", "2", *TRAIN]) == 2
  assert "--coordinator" in capsys.readouterr().err


def test_submitting_writes_the_script_and_calls_sbatch(capsys, tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(slurm.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
  path = tmp_path / "job.sbatch"
  assert slurm.main(["--nodes", "2", "--script", str(path), *TRAIN]) == 0
  assert calls == [["sbatch", str(path)]]
  assert "#SBATCH --nodes=2" in path.read_text()


@pytest.mark.parametrize(
  "argv, message",
  [
    (
      ["--nodes", "2", "--gpus_per_node", "8", "--data=3"],
      "data=3 x fsdp=1 x model=1 uses 3 devices but 2 nodes x 8 GPUs has 16 devices. Valid choices",
    ),
    (
      ["--nodes", "3", "--gpus_per_node", "8", "--fsdp=16"],
      "does not fit 3 nodes x 8 GPUs (24 devices): the fixed sizes multiply to 16",
    ),
    (
      ["--plain", "--coordinator", "h", "--nodes", "2", "--gpus_per_node", "4", "--model=3"],
      "does not fit 2 nodes x 4 GPUs",
    ),
  ],
)
def test_meshes_that_do_not_fit_are_refused(capsys, argv, message):
  code = slurm.main(argv + TRAIN + ["--dry_run"])
  out, err = capsys.readouterr()
  assert code != 0 and out == ""
  assert message in err

"""launch/tpu.py: slice shapes, dry-run commands, and refused meshes."""

import re
import shlex

import pytest

from launch import tpu

COMMON = ["--name", "t5-pod", "--zone", "us-central2-b"]
TRAIN = ["--gin_file=models/t5_1_1/base.gin", "--gin_file=runs/pretrain.gin", "--model_dir=gs://my-bucket/t5-base"]


@pytest.fixture(autouse=True)
def nothing_runs_for_real(monkeypatch):
  """A safety net: these tests must never reach gcloud or xpk."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"a dry run tried to run {args[0]!r}")

  monkeypatch.setattr(tpu.subprocess, "call", refuse)
  monkeypatch.setattr(tpu.subprocess, "run", refuse)


def with_dry_run(argv):
  """--dry_run goes before '--' (after it, flags belong to t5lite.train)."""
  return argv[: argv.index("--")] + ["--dry_run"] + argv[argv.index("--") :] if "--" in argv else argv + ["--dry_run"]


def dry_run(capsys, argv):
  code = tpu.main(with_dry_run(argv))
  out, err = capsys.readouterr()
  assert code == 0, err
  return [shlex.split(line) for line in out.splitlines()]


@pytest.mark.parametrize(
  "name, chips, hosts, per_host, devices",
  [
    ("v4-8", 4, 1, 4, 4),
    ("v4-32", 16, 4, 4, 16),
    ("v4-4096", 2048, 512, 4, 2048),
    ("v5p-8", 4, 1, 4, 4),
    ("v5p-256", 128, 32, 4, 128),
    ("v5litepod-8", 8, 1, 8, 8),
    ("v5litepod-16", 16, 4, 4, 16),
    ("v5litepod-256", 256, 64, 4, 256),
    ("v6e-4", 4, 1, 4, 4),
    ("v6e-64", 64, 16, 4, 64),
    ("v3-32", 16, 4, 4, 32),  # v3 names count TensorCores and each core is a jax device
  ],
)
def test_slice_shapes(name, chips, hosts, per_host, devices):
  s = tpu.slice_info(name)
  assert (s.chips, s.hosts, s.chips_per_host, s.devices) == (chips, hosts, per_host, devices)


@pytest.mark.parametrize(
  "name, message",
  [
    ("v4-12", "valid sizes are multiples of 8"),
    ("v5litepod-2", "valid sizes are 1, 4, 8, 16"),
    ("v5e-16", "v5litepod-N"),
    ("a100-8", "Unknown TPU accelerator type"),
  ],
)
def test_unknown_slices(name, message):
  with pytest.raises(ValueError, match=message):
    tpu.slice_info(name)


def test_create_describes_first_then_creates(capsys):
  describe, create = dry_run(capsys, ["create", *COMMON, "--accelerator_type", "v4-32", "--spot"])
  assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "t5-pod"]
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "t5-pod"]
  assert "--zone=us-central2-b" in create and "--accelerator-type=v4-32" in create
  assert "--version=tpu-ubuntu2204-base" in create and "--spot" in create
  create = dry_run(capsys, ["create", *COMMON, "--accelerator_type", "v5litepod-16", "--preemptible"])[1]
  assert "--version=v2-alpha-tpuv5-lite" in create and "--preemptible" in create and "--spot" not in create


def test_setup_builds_copies_and_installs_on_every_worker(capsys):
  cmds = dry_run(capsys, ["setup", *COMMON])
  wheel = next(c for c in cmds if "wheel" in c)
  assert wheel[1:4] == ["-m", "pip", "wheel"]
  scp = next(c for c in cmds if "scp" in c)
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp and "--recurse" in scp
  assert scp[-2].endswith("t5lite-dist") and scp[-1] == "t5-pod:~"  # SRC then TPU:DEST
  assert "t5-pod" not in scp[:-1]
  ssh = cmds[-1]
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t5-pod"] and "--worker=all" in ssh
  install = ssh[ssh.index("--command") + 1]
  assert f"jax[tpu]=={tpu.locked_jax_version()}" in install and "requirements.lock" in install
  assert tpu.LIBTPU_FIND_LINKS in install


def test_run_starts_training_on_every_worker(capsys):
  [ssh] = dry_run(
    capsys,
    [
      "run",
      *COMMON,
      "--accelerator_type",
      "v4-32",
      *TRAIN,
      "--data=-1",
      "--fsdp=4",
      "--gin",
      "BATCH_SIZE=256",
      "--",
      "--gin.TRAIN_STEPS=1000",
    ],
  )
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t5-pod"]
  assert "--zone=us-central2-b" in ssh and "--worker=all" in ssh
  remote = shlex.split(ssh[ssh.index("--command") + 1])
  assert remote[0] == "T5LITE_DISTRIBUTED=auto" and remote[2:4] == ["-m", "t5lite.train"]
  assert remote[4:] == [
    "--gin_file=models/t5_1_1/base.gin",
    "--gin_file=runs/pretrain.gin",
    '--gin.MODEL_DIR="gs://my-bucket/t5-base"',
    "--gin.DATA_PARALLELISM=4",
    "--gin.FSDP_PARALLELISM=4",
    "--gin.MODEL_PARALLELISM=1",
    "--gin.BATCH_SIZE=256",
    "--gin.TRAIN_STEPS=1000",
  ]


def test_gin_strings_survive_both_shells(capsys):
  [ssh] = dry_run(
    capsys,
    [
      "run",
      *COMMON,
      *TRAIN,
      "--gin",
      "MIXTURE_OR_TASK_NAME='c4_span_corruption'",
      "--gin",
      "TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 114}",
    ],
  )
  remote = shlex.split(ssh[ssh.index("--command") + 1])
  assert "--gin.MIXTURE_OR_TASK_NAME='c4_span_corruption'" in remote
  assert "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 114}" in remote


def test_delete(capsys):
  [cmd] = dry_run(capsys, ["delete", *COMMON])
  assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t5-pod", "--zone=us-central2-b", "--quiet"]


def test_xpk_multislice_workload(capsys):
  [cmd] = dry_run(
    capsys,
    [
      "xpk",
      "--cluster",
      "c1",
      "--workload",
      "t5-run",
      "--tpu_type",
      "v5litepod-16",
      "--num_slices",
      "2",
      "--docker_image",
      "gcr.io/p/t5lite:1",
      *TRAIN,
      "--fsdp",
      "16",
    ],
  )
  assert cmd[:3] == ["xpk", "workload", "create"]
  for part in (
    "--cluster=c1",
    "--workload=t5-run",
    "--tpu-type=v5litepod-16",
    "--num-slices=2",
    "--docker-image=gcr.io/p/t5lite:1",
  ):
    assert part in cmd
  remote = cmd[cmd.index("--command") + 1]
  assert "--gin.DATA_PARALLELISM=2 --gin.FSDP_PARALLELISM=16 --gin.MODEL_PARALLELISM=1" in remote
  assert 'MODEL_DIR=\\"gs://my-bucket/t5-base\\"' in remote


@pytest.mark.parametrize(
  "argv, message",
  [
    (
      ["run", *COMMON, "--accelerator_type", "v4-32", *TRAIN, "--data=3"],
      r"data=3 x fsdp=1 x model=1 uses 3 devices but TPU slice v4-32 \(4 hosts x 4 chips\) has 16 devices\. Valid choices",
    ),
    (
      ["run", *COMMON, "--accelerator_type", "v5litepod-16", *TRAIN, "--model=3"],
      r"does not fit TPU slice v5litepod-16 \(4 hosts x 4 chips\) \(16 devices\).*\[1, 2, 4, 8, 16\]",
    ),
    (["run", *COMMON, "--accelerator_type", "v4-8", *TRAIN, "--data=-1", "--fsdp=-1"], "Only one"),
    (
      [
        "xpk",
        "--cluster",
        "c",
        "--workload",
        "w",
        "--tpu_type",
        "v4-16",
        "--num_slices",
        "2",
        "--docker_image",
        "i",
        *TRAIN,
        "--data=1",
        "--fsdp=16",
      ],
      r"fsdp x model x expert = 16 must divide the 8 devices of one slice.*Valid fsdp x model x expert: \[1, 2, 4, 8\]",
    ),
  ],
)
def test_meshes_that_do_not_fit_are_refused_before_printing(capsys, argv, message):
  code = tpu.main(with_dry_run(argv))
  out, err = capsys.readouterr()
  assert code != 0
  assert out == ""
  assert re.search(message, err), err


def test_local_model_dir_on_a_pod_warns(capsys):
  assert tpu.main(["run", *COMMON, "--gin_file=a.gin", "--model_dir=/tmp/run", "--dry_run"]) == 0
  assert "not on GCS" in capsys.readouterr().err


def test_dry_run_after_the_separator_is_refused(capsys):
  with pytest.raises(SystemExit) as e:
    tpu.main(["delete", *COMMON, "--", "--dry_run"])
  assert e.value.code == 2
  assert "--dry_run comes before" in capsys.readouterr().err

"""Two real processes through launch/local.py train like one process with 8 devices."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from t5lite import partitioning, trainer as trainer_lib
from t5lite.models import model as model_lib, t5
from t5lite.optim import adafactor, schedules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN = """
from __gin__ import dynamic_registration
include 'models/t5_1_1/tiny.gin'
include 'runs/pretrain.gin'
import tests.multihost_task
from t5lite.models import t5
from t5lite import train as train_lib

t5.T5Config.vocab_size = 384
MIXTURE_OR_TASK_NAME = 'multihost_reverse'
TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 16}
TRAIN_STEPS = 4
BATCH_SIZE = 8
SUMMARY_EVERY = 1
CHECKPOINT_EVERY = 4
LEARNING_RATE = 0.01
WARMUP_STEPS = 1
train_lib.train.shuffle = True
train_lib.train.pack = True
train_lib.train.progress = False
"""


def _losses(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f if json.loads(line)["split"] == "train"]


def _env():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


@pytest.mark.slow
def test_two_processes_match_one_process_and_checkpoint_restores_elsewhere(tmp_path):
  gin_file = tmp_path / "mh.gin"
  gin_file.write_text(GIN)
  train = [sys.executable, "-m", "t5lite.train", f"--gin_file={gin_file}"]
  one = subprocess.run(
    train + [f"--gin.MODEL_DIR='{tmp_path / 'one'}'"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"),
  )
  assert one.returncode == 0, one.stderr[-3000:]
  two = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "local.py"),
      "--num_processes",
      "2",
      "--devices_per_process",
      "4",
      "--timeout",
      "500",
      "--",
    ]
    + train
    + [f"--gin.MODEL_DIR='{tmp_path / 'two'}'"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env=_env(),
  )
  assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
  assert "[p0]" in two.stdout and "[p1]" in two.stdout
  one_losses, two_losses = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert len(one_losses) == 4
  np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
  # One checkpoint (step 4), written by both processes together; one process wrote the summaries.
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["4"]
  assert (
    "mesh: {'data': 8, 'fsdp': 1, 'model': 1, 'expert': 1} over 8 devices in 2 process(es)"
    in (tmp_path / "two" / "model-info.txt").read_text()
  )
  # It restores in this single process onto another mesh, equal to the one-process run's state.
  model = model_lib.EncoderDecoderModel(config=t5.T5Config(**dict(t5.T5_PRESETS["tiny"], vocab_size=384)))
  lengths = {"inputs": 24, "targets": 16}
  states = []
  for run, mesh in (("two", (1, 2, 4)), ("one", (8, 1, 1))):
    cfg = trainer_lib.TrainerConfig(train_steps=4, batch_size=8, task_feature_lengths=lengths, progress=False)
    tr = trainer_lib.Trainer(
      model,
      adafactor.adafactor,
      schedules.constant(0.01),
      cfg,
      str(tmp_path / run),
      partitioner=partitioning.Partitioner(*mesh),
    )
    state, rows = tr.restore_or_init()
    assert rows == 4 * 8 and int(state.step) == 4
    states.append(state)
    tr.close()
  for a, b in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

  # Inference over the validation split in two processes: each writes its own
  # shard of the examples, and together they hold what one process decodes.
  infer = [
    sys.executable,
    "-m",
    "t5lite.infer",
    f"--gin_file={gin_file}",
    "--gin_file=runs/infer.gin",
    f"--gin.MODEL_DIR='{tmp_path / 'two'}'",
    "--gin.INFER_MAX_EXAMPLES=11",
    "--gin.MAX_DECODE_LEN=6",
  ]
  two_infer = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "local.py"),
      "--num_processes",
      "2",
      "--devices_per_process",
      "4",
      "--timeout",
      "500",
      "--",
    ]
    + infer
    + [f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'infer2'}'", "--gin.INFER_BATCH_SIZE=4"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env=_env(),
  )
  assert two_infer.returncode == 0, two_infer.stdout[-3000:] + two_infer.stderr[-3000:]
  one_infer = subprocess.run(
    infer + [f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'infer1'}'", "--gin.INFER_BATCH_SIZE=8"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"),
  )
  assert one_infer.returncode == 0, one_infer.stderr[-3000:]
  shards = sorted(n for n in os.listdir(tmp_path / "infer2") if not n.endswith(".done"))
  assert shards == [
    "multihost_reverse-validation-predict-4.jsonl-00000-of-00002",
    "multihost_reverse-validation-predict-4.jsonl-00001-of-00002",
  ]
  rows = lambda path: [json.loads(line) for line in open(path)]  # noqa: E731
  parts = [rows(tmp_path / "infer2" / n) for n in shards]
  assert [len(p) for p in parts] == [6, 5]  # examples 0, 2, 4, ... and 1, 3, 5, ...
  (single,) = [n for n in os.listdir(tmp_path / "infer1") if not n.endswith(".done")]
  whole = rows(tmp_path / "infer1" / single)
  merged = [parts[i % 2][i // 2] for i in range(11)]
  assert [(r["inputs"], r["prediction"]) for r in merged] == [(r["inputs"], r["prediction"]) for r in whole]
  np.testing.assert_allclose([r["score"] for r in merged], [r["score"] for r in whole], rtol=1e-4, atol=1e-5)

"""The task vocabulary's size in checkpoints, and the refusal of a checkpoint of another size
(t5lite/train.py check_vocabulary_size, trainer.py's meta, checkpointing.read_checkpoint_meta);
VOCABULARY_MODEL carried by a run's config.gin to `t5lite infer`, `t5lite eval` and
inference.load (inference.read_run_config, gin_entry.OPTIONAL_MACROS).

One real run (2 steps of a tiny model, through the gin command line) on a task built on
the default vocabulary with VOCABULARY_MODEL = a 300-piece model (400 ids); the refusals
happen before any step, so they cost no training.
"""

import json
import os
import shutil

import gin
import pytest
import seqio

from t5lite import (
  checkpointing,
  gin_entry,
  inference,
  infer as infer_lib,
  partitioning,
  train as train_lib,
  trainer as trainer_lib,
)
from t5lite.data import registration, vocab as vocab_lib
from t5lite.models import model as model_lib, t5
from t5lite.optim import schedules
from tests.data.conftest import TOPIC_TEXTS, make_source

LENGTHS = {"inputs": 64, "targets": 16}
ARCH = dict(vocab_size=512, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1)
TASK = "tvocab_span_corruption"


@pytest.fixture(scope="module", autouse=True)
def tasks():
  registration.register_pretraining_tasks("tvocab", make_source(TOPIC_TEXTS), vocab_lib.default_vocabulary())
  registration.register_pretraining_tasks("tvbytes", make_source(TOPIC_TEXTS), seqio.ByteVocabulary(extra_ids=100))
  yield
  vocab_lib.use_model_file(None)


@pytest.fixture(scope="module")
def spms(tmp_path_factory):
  """(300 pieces: 400 ids, 320 pieces: 420 ids), both fitting the model's 512 rows."""
  out = tmp_path_factory.mktemp("spms")
  return tuple(
    vocab_lib.train_sentencepiece(TOPIC_TEXTS, str(out / f"p{n}.model"), vocab_size=n, byte_fallback=False)
    for n in (300, 320)
  )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, spms):
  path = tmp_path_factory.mktemp("vocab_run") / "run"
  flags = [
    "--gin_file=models/t5_1_1/tiny.gin",
    "--gin_file=runs/pretrain.gin",
    f"--gin.MODEL_DIR='{path}'",
    f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
    f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
    "--gin.TRAIN_STEPS=2",
    "--gin.BATCH_SIZE=8",
    "--gin.CHECKPOINT_EVERY=2",
    "--gin.SUMMARY_EVERY=1",
    "--gin.NUM_DEVICES=1",
    f"--gin.VOCABULARY_MODEL='{spms[0]}'",
    "--gin.train_lib.train.progress=False",
  ] + [f"--gin.t5.T5Config.{k}={v}" for k, v in ARCH.items()]
  assert train_lib.main(flags) == 0
  gin.clear_config()
  return str(path)


@pytest.fixture(autouse=True)
def clear_setting():
  vocab_lib.use_model_file(None)
  yield
  vocab_lib.use_model_file(None)


def tiny_model():
  return model_lib.EncoderDecoderModel(config=t5.T5Config(**ARCH, dropout_rate=0.0))


def train(model_dir, steps=1, **kwargs):
  args = dict(
    model=tiny_model(),
    model_dir=str(model_dir),
    mixture_or_task_name=TASK,
    task_feature_lengths=LENGTHS,
    train_steps=steps,
    batch_size=8,
    summary_every=1,
    checkpoint_every=1,
    learning_rate=schedules.constant(0.01),
    progress=False,
    partitioner=partitioning.Partitioner(num_devices=1),
  )
  args.update(kwargs)
  return train_lib.train(**args)


@pytest.fixture
def no_trainer(monkeypatch):
  """Fails the test if the run gets as far as building its trainer (before any checkpoint or step)."""

  def built(*args, **kwargs):
    pytest.fail("the run built its trainer: the vocabulary mismatch was not caught first")

  monkeypatch.setattr(trainer_lib, "Trainer", built)


# --------------------------------------------------------------------------- #
# The meta and its reader.
# --------------------------------------------------------------------------- #
def test_meta_records_the_vocabulary_size_wherever_the_path_points(run_dir, tmp_path):
  step_dir = os.path.join(run_dir, "checkpoints", "2")
  for path in (run_dir, os.path.join(run_dir, "checkpoints"), step_dir, os.path.join(step_dir, "params")):
    meta = checkpointing.read_checkpoint_meta(path)
    assert meta["vocabulary_size"] == 400 and meta["step"] == 2, path
  assert checkpointing.read_checkpoint_meta(run_dir, step=2)["vocabulary_size"] == 400
  with pytest.raises(FileNotFoundError, match=r"MY_PATH=.* has no checkpoint of step 7; it has steps \[2\]"):
    checkpointing.read_checkpoint_meta(run_dir, "MY_PATH", step=7)
  # A Hugging Face model directory (no checkpoints/) and a missing path have no meta: {}.
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 32128}))
  (hf / "model.safetensors").write_bytes(b"\0" * 16)
  assert checkpointing.read_checkpoint_meta(str(hf)) == {}
  assert checkpointing.read_checkpoint_meta(str(tmp_path / "nothing")) == {}
  # A step without a meta item: {}; a meta that cannot be read: DamagedCheckpointError naming the step.
  copy = tmp_path / "copy" / "checkpoints" / "2"
  shutil.copytree(step_dir, copy)
  meta_files = [os.path.join(r, n) for r, _, names in os.walk(copy / "meta") for n in names]
  assert meta_files
  for name in meta_files:
    with open(name, "w") as f:
      f.write("{not json")
  with pytest.raises(
    checkpointing.DamagedCheckpointError, match=r"INITIAL_CHECKPOINT_PATH: the meta of .*copy/checkpoints/2"
  ):
    checkpointing.read_checkpoint_meta(str(tmp_path / "copy"))
  shutil.rmtree(copy / "meta")
  assert checkpointing.read_checkpoint_meta(str(tmp_path / "copy")) == {}


# --------------------------------------------------------------------------- #
# Refusals, before any step.
# --------------------------------------------------------------------------- #
def test_finetune_from_another_vocabulary_size_is_refused(run_dir, spms, tmp_path, no_trainer, capsys):
  with pytest.raises(ValueError) as e:
    train(tmp_path / "ft", initial_checkpoint_path=run_dir, vocabulary_model=spms[1])
  message = str(e.value)
  assert f"INITIAL_CHECKPOINT_PATH='{run_dir}' (step 2) was trained with a vocabulary of 400 ids" in message
  assert f"this run's task '{TASK}' has a vocabulary of 420 ids (VOCABULARY_MODEL='{spms[1]}')" in message
  assert "Set VOCABULARY_MODEL to the SentencePiece model the checkpoint was trained with" in message
  assert "choose a task whose vocabulary has 400 ids" in message
  # A task with a vocabulary of its own: the message says which.
  with pytest.raises(
    ValueError, match=r"400 ids.*'tvbytes_span_corruption' has a vocabulary of 359 ids \(the task's own ByteVocabulary"
  ):
    train(
      tmp_path / "ft",
      initial_checkpoint_path=run_dir,
      mixture_or_task_name="tvbytes_span_corruption",
      vocabulary_model=spms[0],
    )
  # VOCABULARY_MODEL given for a task it does not apply to: a warning says so.
  assert "warning: VOCABULARY_MODEL=" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "ft")


def test_resume_with_another_vocabulary_is_refused(run_dir, spms, no_trainer):
  with pytest.raises(ValueError) as e:
    train(run_dir, steps=4, vocabulary_model=spms[1])
  message = str(e.value)
  assert "MODEL_DIR=" in message and "was trained with a vocabulary of 400 ids" in message
  assert "has a vocabulary of 420 ids" in message and "Nothing was overwritten" in message
  assert [s for s, _ in checkpointing.list_checkpoints(run_dir)] == [2]


def test_check_passes_for_the_same_size_and_for_a_checkpoint_without_one(run_dir, tmp_path):
  train_lib.check_vocabulary_size(400, "x", TASK, str(tmp_path / "new"), run_dir)
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  train_lib.check_vocabulary_size(420, "x", TASK, str(tmp_path / "new"), str(hf))
  with pytest.raises(ValueError, match="400 ids"):
    train_lib.check_vocabulary_size(420, "x", TASK, str(tmp_path / "new"), run_dir)


def test_bad_vocabulary_model_fails_before_any_work(tmp_path, no_work):
  with pytest.raises(FileNotFoundError, match=r"VOCABULARY_MODEL='.*spiece.model'.*does not exist"):
    train(tmp_path / "bad", vocabulary_model=str(tmp_path / "spiece.model"))
  assert not os.path.exists(tmp_path / "bad")


def test_finetune_with_the_checkpoints_vocabulary_runs(run_dir, spms, tmp_path):
  train(tmp_path / "ft", initial_checkpoint_path=run_dir, vocabulary_model=spms[0])
  meta = checkpointing.read_checkpoint_meta(str(tmp_path / "ft"))
  assert meta["vocabulary_size"] == 400 and meta["step"] == 1
  assert vocab_lib.model_file_setting() == spms[0]


# --------------------------------------------------------------------------- #
# config.gin carries VOCABULARY_MODEL to inference.load, infer and eval.
# --------------------------------------------------------------------------- #
def test_config_gin_records_it_and_load_uses_it(run_dir, spms, tmp_path):
  config = open(os.path.join(run_dir, "config.gin")).read()
  assert f"VOCABULARY_MODEL = '{spms[0]}'" in config
  predictor = inference.load(run_dir, batch_size=2, partitioner=partitioning.Partitioner(num_devices=1))
  assert predictor.vocabulary.vocab_size == 400
  assert predictor.vocabulary.sentencepiece_model_file == spms[0]
  assert vocab_lib.model_file_setting() is None  # load pins its own vocabulary; the process setting is unchanged
  vocab_lib.use_model_file(spms[1])  # a later change of the setting does not reach the loaded predictor
  assert predictor.vocabulary.vocab_size == 400
  assert inference.read_run_config(run_dir)["vocabulary_model"] == spms[0]
  # A config.gin written before VOCABULARY_MODEL existed reads as None.
  old = tmp_path / "old"
  old.mkdir()
  lines = [line for line in config.splitlines() if "VOCABULARY_MODEL" not in line]
  (old / "config.gin").write_text("\n".join(lines) + "\n")
  assert inference.read_run_config(str(old))["vocabulary_model"] is None
  gin.clear_config()


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_eval_and_infer_gin_read_it_from_the_run_or_default_to_none(run_dir, spms, command):
  entry = gin_entry.COMMANDS[command]
  out = {"eval": "EVAL_OUTPUT_DIR", "infer": "INFER_OUTPUT_DIR"}[command]
  config = os.path.join(run_dir, "config.gin")
  gin_entry.configure_gin(
    [config, entry.run_file], [f"{out} = '/tmp/x'"], required=entry.required, run_file=entry.run_file
  )
  assert gin_entry.macro_value("VOCABULARY_MODEL") == spms[0]
  # A model file instead of a run's config.gin: None, or what the command line says.
  model_only = [
    "MIXTURE_OR_TASK_NAME = 'tvocab_span_corruption'",
    f"TASK_FEATURE_LENGTHS = {LENGTHS}",
    "CHECKPOINT_PATH = '/tmp/ckpt'",
    f"{out} = '/tmp/x'",
  ]
  files = ["models/t5_1_1/tiny.gin", entry.run_file]
  gin_entry.configure_gin(files, model_only, required=entry.required, run_file=entry.run_file)
  assert gin_entry.macro_value("VOCABULARY_MODEL") is None
  bindings = model_only + [f"VOCABULARY_MODEL = '{spms[1]}'"]
  gin_entry.configure_gin(files, bindings, required=entry.required, run_file=entry.run_file)
  assert gin_entry.macro_value("VOCABULARY_MODEL") == spms[1]
  gin.clear_config()


def test_infer_on_the_run_scores_with_its_vocabulary(run_dir, spms, tmp_path, monkeypatch):
  # Were the run's VOCABULARY_MODEL ignored, the default vocabulary would be this other model.
  monkeypatch.setenv(vocab_lib.VOCAB_ENV, spms[1])
  pairs = [("while True: pass", "the loop"), ("import os", "a module")]
  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps({"inputs": a, "targets": b}) + "\n" for a, b in pairs))
  flags = [
    f"--gin_file={os.path.join(run_dir, 'config.gin')}",
    "--gin_file=runs/infer.gin",
    f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'out'}'",
    f"--gin.INFER_INPUT_FILE='{data}'",
    "--gin.INFER_MODE='score'",
    "--gin.INFER_BATCH_SIZE=2",
  ]
  assert infer_lib.main(flags) == 0
  assert vocab_lib.model_file_setting() == spms[0]
  gin.clear_config()
  (shard,) = [p for p in os.listdir(tmp_path / "out") if not p.endswith(".done")]
  scores = [json.loads(line)["score"] for line in open(tmp_path / "out" / shard)]
  vocab_lib.use_model_file(None)
  predictor = inference.load(run_dir, batch_size=2, partitioner=partitioning.Partitioner(num_devices=1))
  assert predictor.score(*zip(*pairs)) == pytest.approx(scores, rel=1e-5)
  # The other vocabulary encodes these texts differently, so it would have given other scores.
  other = vocab_lib.sentencepiece_vocabulary(spms[1])
  assert [other.encode(a) for a, _ in pairs] != [predictor.vocabulary.encode(a) for a, _ in pairs]

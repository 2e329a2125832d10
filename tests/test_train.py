"""End-to-end training tests (t5lite/train.py, trainer.py, checkpointing.py, summaries.py).

Real parts throughout: a seqio task, orbax checkpoints, gin files, TensorBoard
event files. The model is tiny and the data are pydoc's topic texts with a
byte vocabulary, so each run takes seconds.
"""

import functools
import json
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from t5lite import checkpointing, gin_entry, runtime, train as train_lib, trainer as trainer_lib
from t5lite.data import registration
from t5lite.models import decoder_only, model as model_lib, t5
from t5lite.optim import adafactor, schedules
from tests.data.conftest import TOPIC_TEXTS, make_source

LENGTHS = {"inputs": 64, "targets": 16}
TINY = dict(vocab_size=384, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1)


@pytest.fixture(scope="module", autouse=True)
def byte_task():
  registration.register_pretraining_tasks("ttrain", make_source(TOPIC_TEXTS), seqio.ByteVocabulary(extra_ids=100))


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """The module's runs share one persistent compilation cache, in a fresh directory (not the user's:
  tests/conftest.py turns it off), as runs of `t5lite train` share ~/.cache/t5lite: the many runs of
  the same tiny model on the same shapes compile their train step once. Off again after the module."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(runtime.COMPILATION_CACHE_ENV, str(tmp_path_factory.mktemp("compilation_cache")))
    yield
  runtime.setup_compilation_cache("none")


def tiny_model(**overrides):
  return model_lib.EncoderDecoderModel(config=t5.T5Config(**{**TINY, **overrides}))


def run(model_dir, steps, *, model=None, lr=None, **kwargs):
  args = dict(
    model=model or tiny_model(),
    model_dir=str(model_dir),
    mixture_or_task_name="ttrain_span_corruption",
    task_feature_lengths=LENGTHS,
    train_steps=steps,
    batch_size=8,
    summary_every=1,
    checkpoint_every=5,
    learning_rate=lr or schedules.constant(0.01),
    progress=False,
  )
  args.update(kwargs)
  return train_lib.train(**args)


def read_metrics(model_dir, split="train"):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r["split"] == split]


def test_loss_falls_and_everything_is_written(tmp_path):
  run(tmp_path, 40, eval_every=20, eval_steps=2)
  rows = read_metrics(tmp_path)
  assert [r["step"] for r in rows] == list(range(1, 41))
  first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-5:]])
  # A fresh model predicts near-uniformly over the vocabulary (plus the z-loss term).
  assert abs(first - math.log(384)) < 1.0
  assert last < first - 1.5, (first, last)
  for key in ("loss", "z_loss", "accuracy", "learning_rate", "grad_norm", "step_time_s", "tokens_per_s", "flops_per_s"):
    assert key in rows[-1], key
  assert rows[-1]["learning_rate"] == pytest.approx(0.01)
  evals = read_metrics(tmp_path, "eval")
  assert [r["step"] for r in evals] == [20, 40] and evals[1]["loss"] < evals[0]["loss"] + 0.5
  # TensorBoard event files in train/ and eval/ that TensorBoard can read.
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(str(tmp_path / "train"))
  acc.Reload()
  losses = acc.Scalars("loss")
  assert [e.step for e in losses] == list(range(1, 41))
  assert losses[0].value == pytest.approx(first, rel=1e-5)
  assert os.listdir(tmp_path / "eval")
  # Checkpoints every 5 steps, the last 3 kept.
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.all_steps() == [30, 35, 40]


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
  run(tmp_path / "full", 20)
  run(tmp_path / "split", 10)
  run(tmp_path / "split", 20)  # the same command again, with more steps: resumes at 10
  full = [r["loss"] for r in read_metrics(tmp_path / "full")]
  split = read_metrics(tmp_path / "split")
  assert [r["step"] for r in split] == list(range(1, 21))
  assert [r["loss"] for r in split] == full  # exactly: float32 on CPU, same data position


def test_gradient_accumulation_matches_one_batch():
  model = tiny_model()
  shapes = model.input_shapes(8, LENGTHS)
  from t5lite.data import pipeline

  batch = next(pipeline.get_dataset("ttrain_span_corruption", LENGTHS, batch_size=8, shuffle=False).as_numpy_iterator())
  params = model.init_params(jax.random.key(0), shapes)
  opt = adafactor.adafactor(0.01, logical_axes=model.param_logical_axes(shapes))
  state = trainer_lib.TrainState(step=jnp.int32(0), params=params, opt_state=opt.init(params))
  outs = []
  for n in (1, 4):
    step = jax.jit(
      functools.partial(
        trainer_lib.train_step, model=model, optimizer=opt, learning_rate=schedules.constant(0.01), num_microbatches=n
      )
    )
    outs.append(step(state, batch, jax.random.key(1)))
  (s1, m1), (s4, m4) = outs
  assert m1["loss"] == pytest.approx(float(m4["loss"]), rel=1e-5)
  assert m1["target_tokens"] == m4["target_tokens"] == batch["decoder_loss_weights"].sum()
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  def exploding(step):
    return jnp.where(step < 7, 0.01, jnp.nan)

  with pytest.raises(FloatingPointError, match=r"Loss is nan at step (8|9|10).*last good checkpoint is step 5"):
    run(tmp_path, 20, lr=exploding, summary_every=1)
  assert checkpointing.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [5]


def test_other_model_shape_in_model_dir_is_refused(tmp_path):
  run(tmp_path, 5)
  before = sorted(os.listdir(tmp_path / "checkpoints" / "5"))
  with pytest.raises(ValueError, match=r"different model shape.*d_ff|different model shape.*mlp"):
    run(tmp_path, 10, model=tiny_model(d_ff=96))
  assert checkpointing.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [5]
  assert sorted(os.listdir(tmp_path / "checkpoints" / "5")) == before


def test_other_optimizer_state_in_model_dir_is_refused(tmp_path):
  run(tmp_path, 5)
  before = sorted(os.listdir(tmp_path / "checkpoints" / "5"))
  # Same model, but an Adafactor that factors its (32 x 64) matrices: the saved state keeps
  # full second moments (all dims of this model are below the default 128).
  factored = functools.partial(adafactor.adafactor, min_dim_size_to_factor=16)
  with pytest.raises(ValueError, match=r"optimizer state .*does not match.*INITIAL_CHECKPOINT_PATH"):
    run(tmp_path, 10, optimizer=factored)
  assert checkpointing.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [5]
  assert sorted(os.listdir(tmp_path / "checkpoints" / "5")) == before


def test_bad_settings_fail_before_work(tmp_path):
  with pytest.raises(ValueError, match=r"BATCH_SIZE=4 is not divisible by the 8 data-parallel shards"):
    run(tmp_path, 5, batch_size=4)
  with pytest.raises(ValueError, match="vocab_size=256 is smaller than the vocabulary"):
    run(tmp_path, 5, model=tiny_model(vocab_size=256))
  with pytest.raises(ValueError, match="An encoder-decoder model needs TASK_FEATURE_LENGTHS"):
    run(tmp_path, 5, task_feature_lengths={"targets": 64}, mixture_or_task_name="ttrain_lm")
  assert not os.path.exists(tmp_path / "checkpoints")


def test_finetune_starts_from_another_runs_params(tmp_path):
  run(tmp_path / "pre", 5)
  model = tiny_model()
  shapes = model.input_shapes(8, LENGTHS)
  abstract = jax.eval_shape(lambda: model.init_params(jax.random.key(0), shapes))
  params = checkpointing.load_params(str(tmp_path / "pre"), abstract)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "pre" / "checkpoints"))
  opt = adafactor.adafactor(schedules.constant(0.01), logical_axes=model.param_logical_axes(shapes))
  saved, _, _ = ckpt.restore(5, abstract, jax.eval_shape(opt.init, abstract))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(a, b)
  run(tmp_path / "ft", 3, initial_checkpoint_path=str(tmp_path / "pre"), mixture_or_task_name="ttrain_prefix_lm")
  assert [r["step"] for r in read_metrics(tmp_path / "ft")] == [1, 2, 3]
  # Starting from trained weights: lower first loss than a fresh model's ln(V).
  assert read_metrics(tmp_path / "ft")[0]["loss"] < read_metrics(tmp_path / "pre")[0]["loss"] - 0.3
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    run(tmp_path / "ft2", 3, initial_checkpoint_path=str(tmp_path / "nothing"))


def test_switch_model_trains_evaluates_and_fine_tunes(tmp_path):
  """A mixture of experts (4 experts in every layer) on a seqio task: the loss falls, the MoE
  metrics reach metrics.jsonl and TensorBoard, fine-tuning starts from its parameters with
  expert dropout, and a dense model refuses its checkpoint before any work."""
  moe = dict(num_experts=4, moe_layer_interval=1)
  run(tmp_path / "pre", 40, model=tiny_model(**moe), eval_every=40, eval_steps=2)
  rows = read_metrics(tmp_path / "pre")
  first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-5:]])
  assert abs(first - math.log(384)) < 1.0 and last < first - 1.5, (first, last)
  for row in rows:
    assert 0.0 <= row["moe/dropped_fraction"] < 0.5
    assert row["moe/expert_load_min"] <= 0.25 <= row["moe/expert_load_max"]
    assert 0.0 < row["moe/router_entropy"] <= math.log(4) + 1e-6
    assert row["moe/aux_loss"] > 0.5 and row["moe/router_z_loss"] > 0.0
  evals = read_metrics(tmp_path / "pre", "eval")
  assert evals[0]["loss"] < first and 0.0 <= evals[0]["moe/dropped_fraction"] < 0.5
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(str(tmp_path / "pre" / "train"))
  acc.Reload()
  assert "moe/aux_loss" in acc.Tags()["tensors"] + acc.Tags()["scalars"]
  # Decoding and scoring the checkpoint: 2 experts per device on one device, one on each of two.
  from t5lite import inference, partitioning
  from t5lite.models.model import DecodeOptions

  inputs = np.array([[5, 9, 11, 3, 7, 0], [4, 8, 2, 6, 13, 21]], np.int32)
  results = []
  for part in (partitioning.Partitioner(num_devices=1), partitioning.Partitioner(1, 1, 1, expert=2, num_devices=2)):
    predictor = inference.Predictor.restore(
      tiny_model(**moe), str(tmp_path / "pre"), partitioner=part, batch_size=2, options=DecodeOptions(max_decode_len=5)
    )
    tokens, scores = predictor.predict_tokens(inputs)
    scored = predictor.score_examples(predictor.score_features([[5, 9, 11], [4, 8]], [[7, 8, 1], [2, 1]]))
    results.append((tokens, scores, scored))
  np.testing.assert_array_equal(results[0][0], results[1][0])
  np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
  np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-5)
  assert np.all(results[0][2] < 0)
  ft = tiny_model(**moe, expert_dropout_rate=0.4)
  run(tmp_path / "ft", 3, model=ft, initial_checkpoint_path=str(tmp_path / "pre"))
  assert read_metrics(tmp_path / "ft")[0]["loss"] < first - 1.0
  with pytest.raises(ValueError, match=r"mixture of experts with num_experts=4 and this model is dense"):
    run(tmp_path / "dense", 3, initial_checkpoint_path=str(tmp_path / "pre"))


def test_decoder_only_trains_on_lm_task(tmp_path):
  model = model_lib.DecoderOnlyModel(
    config=decoder_only.DecoderOnlyConfig(vocab_size=384, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_layers=2)
  )
  run(tmp_path, 20, model=model, mixture_or_task_name="ttrain_lm", task_feature_lengths={"targets": 64})
  rows = read_metrics(tmp_path)
  assert rows[-1]["loss"] < rows[0]["loss"] - 1.0


@pytest.mark.slow
def test_gin_command_line_writes_a_reusable_config(tmp_path, capsys):
  model_dir = tmp_path / "run"
  flags = [
    "--gin_file=models/t5_1_1/tiny.gin",
    "--gin_file=runs/pretrain.gin",
    f"--gin.MODEL_DIR='{model_dir}'",
    "--gin.MIXTURE_OR_TASK_NAME='ttrain_span_corruption'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    "--gin.TRAIN_STEPS=4",
    "--gin.BATCH_SIZE=8",
    "--gin.CHECKPOINT_EVERY=2",
    "--gin.SUMMARY_EVERY=1",
    "--gin.t5.T5Config.vocab_size=384",
    "--gin.t5.T5Config.num_encoder_layers=1",
    "--gin.t5.T5Config.num_decoder_layers=1",
    "--gin.train_lib.train.progress=False",
  ]
  assert train_lib.main(flags) == 0
  config = (model_dir / "config.gin").read_text()
  assert "MIXTURE_OR_TASK_NAME = 'ttrain_span_corruption'" in config and "vocab_size = 384" in config
  # The written config alone (plus a longer TRAIN_STEPS) resumes the same run.
  assert train_lib.main([f"--gin_file={model_dir / 'config.gin'}", "--gin.TRAIN_STEPS=6"]) == 0
  assert [r["step"] for r in read_metrics(model_dir)] == list(range(1, 7))
  assert "resuming from step 4" in capsys.readouterr().out


# --------------------------------------------------------------------------- #
# Resuming with a changed setup, and from a damaged checkpoint.
# --------------------------------------------------------------------------- #
def _meta(model_dir, step):
  return checkpointing.Checkpointer(str(model_dir / "checkpoints")).read_meta(step)


def test_resume_with_another_batch_size_continues_at_the_same_row(tmp_path, capsys):
  run(tmp_path, 2, batch_size=8, checkpoint_every=2)
  meta = _meta(tmp_path, 2)
  assert (meta["rows_consumed"], meta["batch_size"]) == (16, 8)
  assert meta["data"] == {
    "feature_converter": "enc_dec",
    "mixture_or_task_name": "ttrain_span_corruption",
    "pack": True,
    "seed": 0,
    "shuffle": True,
    "task_feature_lengths": {"inputs": 64, "targets": 16},
  }
  capsys.readouterr()
  run(tmp_path, 3, batch_size=16, checkpoint_every=1)
  out = capsys.readouterr().out
  assert "BATCH_SIZE changed from 8 to 16 since step 2: continuing at row 16" in out
  # Step 3 read rows 16..31 of the stream: 16 + 16 rows consumed, not 3 * 16.
  assert _meta(tmp_path, 3)["rows_consumed"] == 32 and _meta(tmp_path, 3)["batch_size"] == 16


@pytest.mark.parametrize(
  "change,expect",
  [
    (dict(seed=1), "seed: checkpoint 0, this run 1"),
    (
      dict(task_feature_lengths={"inputs": 64, "targets": 24}),
      "task_feature_lengths: checkpoint {'inputs': 64, 'targets': 16}, this run {'inputs': 64, 'targets': 24}",
    ),
    (dict(pack=False), "pack: checkpoint True, this run False"),
  ],
)
def test_resume_on_another_data_stream_is_refused_and_writes_nothing(tmp_path, change, expect):
  run(tmp_path, 2, checkpoint_every=2)
  before = sorted(os.listdir(tmp_path)), (tmp_path / "metrics.jsonl").read_text()
  with pytest.raises(ValueError, match="was trained on another data stream") as e:
    run(tmp_path, 4, **change)
  assert expect in str(e.value) and "INITIAL_CHECKPOINT_PATH=" in str(e.value)
  assert (sorted(os.listdir(tmp_path)), (tmp_path / "metrics.jsonl").read_text()) == before
  assert checkpointing.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2]


@pytest.mark.slow
def test_config_gin_describes_each_start(tmp_path, capsys):
  model_dir = tmp_path / "run"
  flags = [
    "--gin_file=models/t5_1_1/tiny.gin",
    "--gin_file=runs/pretrain.gin",
    f"--gin.MODEL_DIR='{model_dir}'",
    "--gin.MIXTURE_OR_TASK_NAME='ttrain_span_corruption'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    "--gin.CHECKPOINT_EVERY=2",
    "--gin.t5.T5Config.vocab_size=384",
    "--gin.t5.T5Config.num_encoder_layers=1",
    "--gin.t5.T5Config.num_decoder_layers=1",
    "--gin.train_lib.train.progress=False",
    "--gin.SUMMARY_EVERY=1",
  ]
  assert train_lib.main(flags + ["--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8"]) == 0
  assert train_lib.main(flags + ["--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=16"]) == 0
  assert "BATCH_SIZE changed from 8 to 16" in capsys.readouterr().out
  assert "BATCH_SIZE = 16" in (model_dir / "config.gin").read_text()
  history = model_dir / gin_entry.CONFIG_HISTORY_DIR
  assert sorted(os.listdir(history)) == ["001_start_step_0.gin", "002_start_step_2.gin"]
  assert "BATCH_SIZE = 8" in (history / "001_start_step_0.gin").read_text()
  assert (history / "002_start_step_2.gin").read_text() == (model_dir / "config.gin").read_text()
  # A refused resume (another seed) writes no config and says so on one line.
  assert train_lib.main(flags + ["--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=16", "--gin.SEED=5"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("t5lite train: error:") and "seed: checkpoint 0, this run 5" in err[0]
  assert sorted(os.listdir(history)) == ["001_start_step_0.gin", "002_start_step_2.gin"]
  # A second start from the same step keeps the first one's record.
  assert train_lib.main(flags + ["--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=16"]) == 0
  assert sorted(os.listdir(history))[-1] == "003_start_step_3.gin"


def _damage_params(model_dir, step):
  """Truncates the data files of a step's parameters, as a partial copy leaves them."""
  root = model_dir / "checkpoints" / str(step) / "params"
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if os.path.basename(d) == "d"]
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


DAMAGE_GIN = """
from __gin__ import dynamic_registration
include 'models/t5_1_1/tiny.gin'
include 'runs/pretrain.gin'
import tests.multihost_task
from t5lite.models import t5
from t5lite import train as train_lib

t5.T5Config.vocab_size = 384
t5.T5Config.num_encoder_layers = 1
t5.T5Config.num_decoder_layers = 1
MIXTURE_OR_TASK_NAME = 'multihost_reverse'
TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 16}
BATCH_SIZE = 8
SUMMARY_EVERY = 1
CHECKPOINT_EVERY = 7
LEARNING_RATE = 0.01
WARMUP_STEPS = 1
train_lib.train.progress = False
"""


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
  # Each run is a new process, as a rerun of the command is (in one process,
  # TensorStore's cache can still hold the bytes of files damaged after it read them).
  import subprocess  # pylint: disable=g-import-not-at-top

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  gin_file = tmp_path / "damage.gin"
  gin_file.write_text(DAMAGE_GIN)
  model_dir = tmp_path / "run"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cache = tmp_path / "compilation_cache"
  env.update(
    PYTHONPATH=repo + os.pathsep + env.get("PYTHONPATH", ""),
    JAX_PLATFORMS="cpu",
    T5LITE_COMPILATION_CACHE_DIR=str(cache),
  )

  def train(steps):
    return subprocess.run(
      [
        sys.executable,
        "-m",
        "t5lite.train",
        f"--gin_file={gin_file}",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
      ],
      cwd=repo,
      capture_output=True,
      text=True,
      timeout=600,
      env=env,
    )

  first = train(14)
  assert first.returncode == 0, first.stderr[-3000:]
  # Start-up says where its time went, in order, and the compiled train step went to the cache.
  startup = [line for line in first.stderr.splitlines() if line.startswith("startup: ")]
  assert [re.sub(r"[\d.]+ s", "N s", line) for line in startup] == [
    "startup: no checkpoint in MODEL_DIR: creating the train state ...",
    "startup: train state ready in N s (step 0)",
    "startup: first batch in N s; compiling the train step ...",
    "startup: train step compiled in N s",
    "startup: first step in N s",
  ], first.stderr[-3000:]
  assert any(name.startswith("jit_train_step") for name in os.listdir(cache)), os.listdir(cache)
  assert checkpointing.list_checkpoints(str(model_dir))[-1][0] == 14
  _damage_params(model_dir, 14)
  second = train(16)
  assert second.returncode == 0, second.stderr[-3000:]
  warning = [line for line in second.stderr.splitlines() if line.startswith("warning: checkpoint step 14")]
  # (truncated data files fail when the array's zarr metadata or its values are read)
  assert len(warning) == 1 and re.search(r"is damaged: its (arrays|metadata) cannot be read", warning[0])
  assert "resuming from step 7 instead" in warning[0] and "resuming from step 7 in" in second.stdout
  assert "startup: train state ready in" in second.stderr and "(restored step 7)" in second.stderr
  assert "Traceback" not in second.stderr and "Exception ignored" not in second.stderr
  # Never deleted: moved aside with a note; training went on from 7 and saved 14 anew.
  moved = model_dir / checkpointing.DAMAGED_DIR / "14"
  assert "DAMAGED.txt" in os.listdir(moved) and "params" in os.listdir(moved)
  assert [s for s, _ in checkpointing.list_checkpoints(str(model_dir))] == [7, 14, 16]
  assert [r["step"] for r in read_metrics(model_dir)] == list(range(1, 15)) + list(range(8, 17))
  # `python -m t5lite.train` records each start's config (config.gin is the latest).
  history = sorted(os.listdir(model_dir / gin_entry.CONFIG_HISTORY_DIR))
  assert history == ["001_start_step_0.gin", "002_start_step_7.gin"]
  assert "TRAIN_STEPS = 16" in (model_dir / "config.gin").read_text()
  # Nothing readable (16's meta cut short, 14's and 7's arrays truncated): one error line, nothing moved.
  meta_file = model_dir / "checkpoints" / "16" / "meta" / "metadata"
  meta_file.write_text(meta_file.read_text()[:20])
  _damage_params(model_dir, 14)
  _damage_params(model_dir, 7)
  third = train(18)
  assert third.returncode == 1
  err = third.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("t5lite train: error: no checkpoint in"), third.stderr[-3000:]
  assert "step 16: its metadata cannot be read" in err[0] and "Nothing was moved or deleted" in err[0]
  assert re.search(r"step 14: its (arrays|metadata) cannot be read.*step 7: its (arrays|metadata) cannot", err[0])
  assert [s for s, _ in checkpointing.list_checkpoints(str(model_dir))] == [7, 14, 16]
  assert os.listdir(model_dir / checkpointing.DAMAGED_DIR) == ["14"]
  assert len(os.listdir(model_dir / gin_entry.CONFIG_HISTORY_DIR)) == 2  # the refused start wrote none


# --------------------------------------------------------------------------- #
# Settings checked before any work (the command line's mistakes: tests/test_gin_entry.py).
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
  "field, value, message",
  [
    ("train_steps", 0, "TRAIN_STEPS=0 must be an integer >= 1"),
    ("batch_size", True, "BATCH_SIZE=True must be an integer >= 1, not a bool"),
    ("batch_size", 8.0, "BATCH_SIZE=8.0 must be an integer >= 1, not a float"),
    ("eval_every", -1, "EVAL_EVERY=-1 must be an integer >= 0 (0: never)"),
    ("eval_steps", 0, "EVAL_STEPS=0 must be an integer >= 1"),
    ("checkpoint_every", "100", "CHECKPOINT_EVERY='100' must be an integer >= 1, not a string"),
    ("keep_checkpoints", 0, "KEEP_CHECKPOINTS=0 must be None or an integer >= 1 (None: keep all)"),
    ("summary_every", math.inf, "SUMMARY_EVERY=inf must be an integer >= 1, not a float"),
    ("num_microbatches", 0, "NUM_MICROBATCHES=0 must be an integer >= 1"),
    ("num_microbatches", 3, "BATCH_SIZE=8 is not divisible by NUM_MICROBATCHES=3; use a multiple of 3."),
    ("seed", -1, "SEED=-1 must be an integer in [0, 4294967295]"),
    ("seed", 1.5, "SEED=1.5 must be an integer in [0, 4294967295], not a float"),
    (
      "task_feature_lengths",
      {"inputs": 64, "targets": math.nan},
      "TASK_FEATURE_LENGTHS['targets']=nan must be an integer >= 1, not a float",
    ),
  ],
)
def test_trainer_config_checks_each_setting(field, value, message):
  args = dict(train_steps=10, batch_size=8, task_feature_lengths=LENGTHS)
  with pytest.raises(ValueError) as e:
    trainer_lib.TrainerConfig(**{**args, field: value})
  assert str(e.value).startswith(message), str(e.value)
  config = trainer_lib.TrainerConfig(**args, keep_checkpoints=None, eval_every=0, seed=np.int64(3))
  assert (config.keep_checkpoints, config.eval_every, config.seed, type(config.seed)) == (None, 0, 3, int)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(infer_eval_every=-5), "INFER_EVAL_EVERY=-5 must be an integer >= 0 (0: never)"),
    (dict(infer_eval_every=2.0), "INFER_EVAL_EVERY=2.0 must be an integer >= 0, not a float (0: never)"),
    (dict(infer_eval_examples=0), "INFER_EVAL_EXAMPLES=0 must be None or an integer >= 1 (None: all)"),
    (dict(task_feature_lengths=64), "TASK_FEATURE_LENGTHS=64 must be a non-empty dict of feature lengths"),
    (
      dict(optimizer=functools.partial(adafactor.adafactor, clipping_threshold=0.0)),
      "adafactor.adafactor.clipping_threshold=0.0 must be None or a finite number > 0.0 (None: no clipping)",
    ),
  ],
)
def test_train_checks_its_own_settings_before_any_work(tmp_path, kwargs, message, no_work):
  with pytest.raises(ValueError) as e:
    run(tmp_path, 5, **kwargs)
  assert str(e.value).startswith(message), str(e.value)
  assert os.listdir(tmp_path) == []


def test_train_step_takes_arguments_the_compiled_step_was_not_compiled_for(tmp_path):
  from t5lite.bench import train_step as bench  # pylint: disable=g-import-not-at-top

  cfg = trainer_lib.TrainerConfig(
    train_steps=3, batch_size=8, task_feature_lengths=LENGTHS, progress=False, async_checkpointing=False
  )
  tr = trainer_lib.Trainer(tiny_model(), adafactor.adafactor, schedules.constant(0.01), cfg, str(tmp_path))
  try:
    state = tr.fresh_state()
    rng = jax.random.key(1)
    full, short = (
      tr.partitioner.global_batch(bench.make_batches("encoder_decoder", 8, n, 16, 384, 1)[0], 8) for n in (64, 32)
    )
    tr.compile_train_step(state, full, rng)
    state, m1 = tr.train_step(state, full, rng)
    # Shorter inputs: the compiled step refuses them before running (nothing donated), jit compiles them.
    state, m2 = tr.train_step(state, short, rng)
    state, m3 = tr.train_step(state, full, rng)
    assert int(state.step) == 3
    assert all(math.isfinite(float(m["loss"])) for m in (m1, m2, m3))
  finally:
    tr.close()

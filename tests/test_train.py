"""End-to-end training tests (t5lite/train.py, trainer.py, checkpointing.py, summaries.py).

Real parts throughout: a seqio task, orbax checkpoints, gin files, TensorBoard
event files. The model is tiny and the data are pydoc's topic texts with a
byte vocabulary, so each run takes seconds.
"""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from t5lite import checkpointing, train as train_lib, trainer as trainer_lib
from t5lite.data import registration
from t5lite.models import decoder_only, model as model_lib, t5
from t5lite.optim import adafactor, schedules
from tests.data.conftest import TOPIC_TEXTS, make_source

LENGTHS = {"inputs": 64, "targets": 16}
TINY = dict(vocab_size=384, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1)


@pytest.fixture(scope="module", autouse=True)
def byte_task():
  registration.register_pretraining_tasks("ttrain", make_source(TOPIC_TEXTS), seqio.ByteVocabulary(extra_ids=100))


def tiny_model(**overrides):
  return model_lib.EncoderDecoderModel(config=t5.T5Config(**{**TINY, **overrides}))


def run(model_dir, steps, *, model=None, lr=None, **kwargs):
  args = dict(
      model=model or tiny_model(), model_dir=str(model_dir), mixture_or_task_name="ttrain_span_corruption",
      task_feature_lengths=LENGTHS, train_steps=steps, batch_size=8, summary_every=1, checkpoint_every=5,
      learning_rate=lr or schedules.constant(0.01), progress=False,
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
  params = jax.jit(lambda r: model.init_params(r, shapes))(jax.random.key(0))
  opt = adafactor.adafactor(0.01, logical_axes=model.param_logical_axes(shapes))
  state = trainer_lib.TrainState(step=jnp.int32(0), params=params, opt_state=opt.init(params))
  outs = []
  for n in (1, 4):
    step = jax.jit(functools.partial(trainer_lib.train_step, model=model, optimizer=opt,
                                     learning_rate=schedules.constant(0.01), num_microbatches=n))
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
  run(tmp_path / "ft", 3, initial_checkpoint_path=str(tmp_path / "pre"),
      mixture_or_task_name="ttrain_prefix_lm")
  assert [r["step"] for r in read_metrics(tmp_path / "ft")] == [1, 2, 3]
  # Starting from trained weights: lower first loss than a fresh model's ln(V).
  assert read_metrics(tmp_path / "ft")[0]["loss"] < read_metrics(tmp_path / "pre")[0]["loss"] - 0.3
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    run(tmp_path / "ft2", 3, initial_checkpoint_path=str(tmp_path / "nothing"))


def test_decoder_only_trains_on_lm_task(tmp_path):
  model = model_lib.DecoderOnlyModel(config=decoder_only.DecoderOnlyConfig(
      vocab_size=384, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_layers=2))
  run(tmp_path, 20, model=model, mixture_or_task_name="ttrain_lm", task_feature_lengths={"targets": 64})
  rows = read_metrics(tmp_path)
  assert rows[-1]["loss"] < rows[0]["loss"] - 1.0


@pytest.mark.slow
def test_gin_command_line_writes_a_reusable_config(tmp_path, capsys):
  model_dir = tmp_path / "run"
  flags = [
      "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/pretrain.gin",
      f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='ttrain_span_corruption'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}", "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=8",
      "--gin.CHECKPOINT_EVERY=2", "--gin.SUMMARY_EVERY=1", "--gin.t5.T5Config.vocab_size=384", "--gin.t5.T5Config.num_encoder_layers=1",
      "--gin.t5.T5Config.num_decoder_layers=1", "--gin.train_lib.train.progress=False",
  ]
  assert train_lib.main(flags) == 0
  config = (model_dir / "config.gin").read_text()
  assert "MIXTURE_OR_TASK_NAME = 'ttrain_span_corruption'" in config and "vocab_size = 384" in config
  # The written config alone (plus a longer TRAIN_STEPS) resumes the same run.
  assert train_lib.main([f"--gin_file={model_dir / 'config.gin'}", "--gin.TRAIN_STEPS=6"]) == 0
  assert [r["step"] for r in read_metrics(model_dir)] == list(range(1, 7))
  assert "resuming from step 4" in capsys.readouterr().out


def test_gin_errors_name_the_problem(tmp_path, capsys):
  assert train_lib.main(["--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/pretrain.gin"]) == 1
  assert "required gin macro MODEL_DIR is not set" in capsys.readouterr().err
  bad = tmp_path / "bad.gin"
  bad.write_text("from __gin__ import dynamic_registration\nfrom t5lite.models import t5\n\nt5.T5Config.no_such_field = 3\n")
  assert train_lib.main([f"--gin_file={bad}"]) == 1
  err = capsys.readouterr().err
  assert "bad.gin" in err and "line 4" in err
  assert train_lib.main(["--gin_file=experiments/nope.gin"]) == 1
  assert "nope.gin" in capsys.readouterr().err


def test_gin_includes_work_beside_a_runs_folder(tmp_path, monkeypatch):
  """A runs/ folder in the working directory (make train writes one) is a namespace
  package to Python; gin's package-path lookup of 'runs/pretrain.gin' must not crash."""
  (tmp_path / "runs" / "quickstart").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` puts the cwd first
  train_lib.configure_gin(["experiments/quickstart_finetune.gin"], ['MODEL_DIR = "/tmp/x"'])
  import gin  # pylint: disable=g-import-not-at-top

  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "synthetic_reverse"
  gin.clear_config()

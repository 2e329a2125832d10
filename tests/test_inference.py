"""Inference, evaluation and the notebook API (t5lite/inference.py, infer.py, eval.py).

The slow tests share one real run: experiments/quickstart_finetune.gin trained
from scratch for 400 steps on synthetic_reverse (seqio task, SentencePiece
vocabulary, orbax checkpoints at steps 200 and 400), with decoding + exact
match during training.
"""

import json
import os

import jax
import numpy as np
import pytest

from t5lite import checkpointing, eval as eval_lib, infer as infer_lib, inference, partitioning
from t5lite import train as train_lib
from t5lite.models import decoder_only, model as model_lib, t5

STEPS = 400


def _sharded_params(model, part):
  abstract, shardings = inference.Predictor.shardings(model, part)
  shapes = model.input_shapes(1, {"inputs": 8, "targets": 8} if isinstance(model, model_lib.EncoderDecoderModel)
                              else {"targets": 8})
  with part.context():
    return jax.jit(lambda r: model.init_params(r, shapes), out_shardings=shardings)(jax.random.key(0))


@pytest.mark.parametrize("kind", ["t5", "decoder_only"])
def test_decoding_on_a_mesh_equals_one_device(kind):
  if kind == "t5":
    model = model_lib.EncoderDecoderModel(config=t5.t5_config("tiny", vocab_size=128))
  else:
    model = model_lib.DecoderOnlyModel(config=decoder_only.decoder_only_config("tiny", vocab_size=128))
  inputs = np.random.default_rng(0).integers(2, 128, (10, 9)).astype(np.int32)
  inputs[3, 4:] = 0
  results = {}
  for name, mesh in {"one": (1, 1, 1, 1), "mesh": (2, 2, 2, 8)}.items():
    part = partitioning.Partitioner(*mesh[:3], num_devices=mesh[3])
    pred = inference.Predictor(model, _sharded_params(model, part), batch_size=4, partitioner=part)
    greedy = pred.predict_tokens(inputs, model_lib.DecodeOptions("greedy", max_decode_len=5, eos_id=-1))
    beam = pred.predict_tokens(inputs, model_lib.DecodeOptions("beam", max_decode_len=5, beam_size=3))
    results[name] = (greedy, beam)
  for (a_tok, a_sc), (b_tok, b_sc) in zip(results["one"], results["mesh"]):
    assert a_tok.shape[0] == 10  # the padded last batch is cut off
    np.testing.assert_array_equal(a_tok, b_tok)
    np.testing.assert_allclose(a_sc, b_sc, rtol=1e-4, atol=1e-4)


def test_predictor_rejects_bad_settings():
  model = model_lib.EncoderDecoderModel(config=t5.t5_config("tiny", vocab_size=128))
  part = partitioning.Partitioner(num_devices=1)
  params = _sharded_params(model, part)
  with pytest.raises(ValueError, match="on_long_input='cut'"):
    inference.Predictor(model, params, partitioner=part, on_long_input="cut")
  with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
    inference.Predictor(model, params, partitioner=part, batch_size=0)
  pred = inference.Predictor(model, params, partitioner=part)
  with pytest.raises(ValueError, match="has no vocabulary"):
    pred.predict(["hello"])


def test_checkpoint_directory_without_a_checkpoint_is_refused(tmp_path):
  model = model_lib.EncoderDecoderModel(config=t5.t5_config("tiny", vocab_size=128))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    inference.Predictor.restore(model, str(tmp_path), partitioner=partitioning.Partitioner(num_devices=1))


# ----------------------------------------------------------------------------
# One real fine-tuning run, shared by the slow tests.
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("finetune"))
  rc = train_lib.main([
      "--gin_file=experiments/quickstart_finetune.gin", f'--gin.MODEL_DIR="{path}"',
      "--gin.INITIAL_CHECKPOINT_PATH=None", f"--gin.TRAIN_STEPS={STEPS}", "--gin.CHECKPOINT_EVERY=200",
      "--gin.EVAL_EVERY=0", f"--gin.INFER_EVAL_EVERY={STEPS}", "--gin.INFER_EVAL_EXAMPLES=100",
      "--gin.KEEP_CHECKPOINTS=None", "--gin.NUM_DEVICES=1",  # one CPU device: 8 simulated ones are slower
  ])
  assert rc == 0
  return path


@pytest.fixture(scope="module")
def predictor(run_dir):
  return inference.load(run_dir, batch_size=8, partitioner=partitioning.Partitioner(num_devices=1))


@pytest.mark.slow
def test_finetune_learns_the_synthetic_task(run_dir):
  rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  evals = [r for r in rows if r["split"] == "infer_eval"]
  assert [r["step"] for r in evals] == [STEPS]
  # Exact reversal of 4-9 random letters by chance is ~0; 400 steps reached 38% when written.
  assert evals[0]["synthetic_reverse/exact_match"] >= 15.0
  assert os.path.isdir(os.path.join(run_dir, "infer_eval", "synthetic_reverse"))  # seqio's TensorBoard logger


@pytest.mark.slow
def test_api_predict_and_score(predictor):
  assert predictor.step == STEPS
  out = predictor.predict(["reverse: a b c d", "reverse: q w e r t"])
  assert len(out) == 2 and all(isinstance(o, str) for o in out)
  beam = predictor.predict(["reverse: a b c d"], method="beam", beam_size=4)
  assert len(beam) == 1
  right, wrong = predictor.score(["reverse: a b c d"] * 2, ["d c b a", "a b c d"])
  assert right > wrong and right < 0
  with pytest.raises(ValueError, match="input 1 is empty"):
    predictor.predict(["reverse: a", "  "])
  long_input = "reverse: " + " ".join("abcdefghijklmnopqrstuvwxyz" * 2)
  predictor.on_long_input = "error"
  with pytest.raises(ValueError, match=r"inputs 0 has \d+ tokens, more than the model's inputs length 32"):
    predictor.predict([long_input])
  predictor.on_long_input = "truncate"
  before = predictor.truncated
  assert len(predictor.predict([long_input])) == 1
  assert predictor.truncated == before + 1
  with pytest.raises(ValueError, match="top_p must be in"):
    predictor.predict(["reverse: a b"], method="sample", top_p=2.0)


def _infer(run_dir, out, **kwargs):
  cfg = inference.read_run_config(run_dir)
  args = dict(model=cfg["model"], checkpoint_path=run_dir, output_dir=str(out),
              mixture_or_task_name="synthetic_reverse", task_feature_lengths=cfg["task_feature_lengths"],
              batch_size=8, max_examples=21, partitioner=partitioning.Partitioner(num_devices=1))
  args.update(kwargs)
  return infer_lib.infer(**args)


@pytest.mark.slow
def test_infer_resumes_without_duplicating_or_losing_lines(run_dir, tmp_path):
  whole = _infer(run_dir, tmp_path / "a")
  assert whole["lines"] == 21 and whole["checkpoint_step"] == STEPS
  lines = open(whole["output"]).read().splitlines()
  first = json.loads(lines[0])
  assert set(first) == {"inputs", "prediction", "score", "targets"} and first["inputs"].startswith("reverse: ")
  # An interrupted run: 10 complete lines and a torn eleventh. The first
  # batch of 8 is kept; the rest is decoded again, in the same batches.
  os.makedirs(tmp_path / "b")
  torn = os.path.join(tmp_path / "b", os.path.basename(whole["output"]))
  with open(torn, "w") as f:
    f.write("\n".join(lines[:10]) + "\n" + lines[10][:15])
  resumed = _infer(run_dir, tmp_path / "b")
  assert resumed["resumed_after"] == 8 and resumed["written"] == 13
  assert open(torn).read().splitlines() == lines
  assert json.load(open(torn + ".done"))["lines"] == 21
  again = _infer(run_dir, tmp_path / "b")  # finished: nothing more is written
  assert again["written"] == 0 and open(torn).read().splitlines() == lines


@pytest.mark.slow
def test_infer_score_mode_and_files(run_dir, predictor, tmp_path):
  data = tmp_path / "pairs.jsonl"
  pairs = [("reverse: a b c d", "d c b a"), ("reverse: x y z w", "w z y x"), ("reverse: m n o p", "m n o p")]
  data.write_text("".join(json.dumps({"inputs": a, "targets": b}) + "\n" for a, b in pairs))
  out = _infer(run_dir, tmp_path / "score", input_file=str(data), mode="score")
  rows = [json.loads(x) for x in open(out["output"])]
  assert [(r["inputs"], r["targets"]) for r in rows] == pairs
  np.testing.assert_allclose([r["score"] for r in rows], predictor.score(*zip(*pairs)), rtol=1e-4)
  text = tmp_path / "inputs.txt"
  text.write_text("reverse: a b c d\nreverse: e f g h\n")
  out = _infer(run_dir, tmp_path / "pred", input_file=str(text), method="beam", beam_size=2)
  rows = [json.loads(x) for x in open(out["output"])]
  assert [r["inputs"] for r in rows] == ["reverse: a b c d", "reverse: e f g h"]
  assert rows[0]["prediction"] == predictor.predict(["reverse: a b c d"], method="beam", beam_size=2)[0]
  with pytest.raises(ValueError, match="score mode needs targets"):
    _infer(run_dir, tmp_path / "bad", input_file=str(text), mode="score")
  with pytest.raises(ValueError, match="INFER_MODE='decode'"):
    _infer(run_dir, tmp_path / "bad", mode="decode")


@pytest.mark.slow
def test_eval_over_all_checkpoints_and_cli(run_dir, tmp_path):
  assert [s for s, _ in checkpointing.list_checkpoints(run_dir)] == [200, 400]
  out = tmp_path / "eval"
  rc = eval_lib.main([
      f"--gin_file={run_dir}/config.gin", "--gin_file=runs/eval.gin", f'--gin.EVAL_OUTPUT_DIR="{out}"',
      "--gin.CHECKPOINT_STEPS='all'", "--gin.EVAL_NUM_EXAMPLES=40",
  ])
  assert rc == 0
  results = json.load(open(out / "results.json"))
  assert sorted(results) == ["200", "400"]
  for step in ("200", "400"):
    assert 0.0 <= results[step]["synthetic_reverse"]["exact_match"] <= 100.0
  assert results["400"]["synthetic_reverse"]["exact_match"] >= 10.0
  assert any(n.startswith("synthetic_reverse-metrics") for n in os.listdir(out))  # seqio's JSON logger
  mtime = os.path.getmtime(out / "results.json")
  assert eval_lib.main([f"--gin_file={run_dir}/config.gin", "--gin_file=runs/eval.gin",
                        f'--gin.EVAL_OUTPUT_DIR="{out}"', "--gin.CHECKPOINT_STEPS='all'"]) == 0
  assert os.path.getmtime(out / "results.json") == mtime  # both steps done: skipped
  assert eval_lib.main([f"--gin_file={run_dir}/config.gin", "--gin_file=runs/eval.gin",
                        f'--gin.EVAL_OUTPUT_DIR="{out}"', "--gin.CHECKPOINT_STEPS=[300]"]) == 1

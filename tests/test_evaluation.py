"""Tests for t5lite/evaluation.py: decoding settings, metric evaluation and the trainer's callback.

A copy task over a byte vocabulary (targets equal inputs) is scored with
exact match, so a predictor that returns the inputs is right exactly where
it is expected to be.
"""

import json
import math
import os

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5lite import evaluation, metrics, partitioning
from t5lite.data import registration
from t5lite.models import model as model_lib, t5
from t5lite.models.model import DecodeOptions

TASK = "teval_copy"
LENGTHS = {"inputs": 16, "targets": 16}
WORDS = ["apple", "banana", "cherry", "bread"]


@pytest.fixture(scope="module", autouse=True)
def copy_task():
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": WORDS, "targets": WORDS})

  registration.register_text_to_text_task(
    TASK,
    seqio.FunctionDataSource(dataset_fn, splits=["validation"]),
    seqio.ByteVocabulary(),
    metric_fns=[metrics.exact_match],
  )


def tiny_model():
  return model_lib.EncoderDecoderModel(
    config=t5.T5Config(
      vocab_size=384, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1
    )
  )


# --------------------------------------------------------------------------- #
# decode_options
# --------------------------------------------------------------------------- #
def test_decode_options_default_to_greedy_up_to_the_targets_length():
  assert evaluation.decode_options({"inputs": 32, "targets": 12}) == DecodeOptions(max_decode_len=12)
  assert evaluation.decode_options({"targets": 20}, max_decode_len=5) == DecodeOptions(max_decode_len=5)
  assert evaluation.decode_options({"inputs": 32}) == DecodeOptions(max_decode_len=64)
  options = evaluation.decode_options(
    {"targets": 8}, method="sample", temperature=0.5, top_k=np.int64(3), top_p=0.9, beam_size=2, alpha=0.0
  )
  assert options == DecodeOptions(
    method="sample", max_decode_len=8, temperature=0.5, top_k=3, top_p=0.9, beam_size=2, alpha=0.0
  )
  assert type(options.top_k) is int


@pytest.mark.parametrize(
  "settings, message",
  [
    (dict(max_decode_len=0), "MAX_DECODE_LEN=0 must be an integer >= 1"),
    (dict(max_decode_len=math.inf), "MAX_DECODE_LEN=inf must be an integer >= 1, not a float"),
    (dict(beam_size=0), "BEAM_SIZE=0 must be an integer >= 1"),  # refused with the greedy method too
    (dict(alpha=-1.0), "LENGTH_PENALTY_ALPHA=-1.0 must be a finite number >= 0.0"),
    (dict(temperature=math.nan), "TEMPERATURE=nan must be a finite number >= 0.0"),
    (dict(top_k=True), "TOP_K=True must be an integer >= 0, not a bool"),
    (dict(top_p=2.0), "TOP_P=2.0 must be a finite number in (0.0, 1.0]"),
    (dict(method="nucleus"), "unknown decoding method 'nucleus'"),
    (dict(length_penalty=1.0), "unknown decoding option 'length_penalty'"),
  ],
)
def test_decode_options_name_the_gin_macro_of_a_bad_setting(settings, message):
  with pytest.raises(ValueError) as e:
    evaluation.decode_options(LENGTHS, **settings)
  assert str(e.value).startswith(message), str(e.value)


# --------------------------------------------------------------------------- #
# MetricEvaluator
# --------------------------------------------------------------------------- #
class EchoPredictor:
  """Predicts each input as its own output, except inputs starting with 'b' (predicted empty)."""

  def __init__(self):
    self.calls = 0

  def predict_tokens(self, inputs):
    self.calls += 1
    tokens = np.array(inputs, np.int32)
    tokens[tokens[:, 0] == ord("b") + 3] = 0  # ByteVocabulary: id = byte + 3
    return tokens, np.zeros(len(tokens), np.float32)

  def score_examples(self, features):
    return np.zeros(len(next(iter(features.values()))), np.float32)


def test_metric_evaluator_scores_what_the_predictor_decodes(tmp_path):
  evaluator = evaluation.MetricEvaluator(tiny_model(), TASK, LENGTHS, output_dir=str(tmp_path))
  predictor = EchoPredictor()
  assert evaluator(predictor, 7) == {TASK: {"exact_match": 50.0}}  # apple and cherry right, banana and bread not
  assert predictor.calls == 1
  with open(tmp_path / f"{TASK}-metrics.jsonl", encoding="utf-8") as f:
    logged = [json.loads(line) for line in f]
  assert [(r["step"], r["exact_match"]) for r in logged] == [(7, 50.0)]  # seqio's JSON logger
  limited = evaluation.MetricEvaluator(tiny_model(), TASK, LENGTHS, num_examples=1)
  assert limited(EchoPredictor(), 1) == {TASK: {"exact_match": 100.0}}  # apple only


def test_metric_evaluator_refuses_an_unknown_split_or_task():
  with pytest.raises(ValueError, match=r"Split 'test' is not in 'teval_copy'; valid: \['validation'\]"):
    evaluation.MetricEvaluator(tiny_model(), TASK, LENGTHS, split="test")
  with pytest.raises(ValueError, match="teval_cpy"):
    evaluation.MetricEvaluator(tiny_model(), "teval_cpy", LENGTHS)


# --------------------------------------------------------------------------- #
# The trainer's callback
# --------------------------------------------------------------------------- #
def test_metric_eval_fn_decodes_and_scores_the_task(tmp_path):
  model = tiny_model()
  params = model.init_params(jax.random.key(0), model.input_shapes(1, LENGTHS))
  fn = evaluation.metric_eval_fn(
    model,
    TASK,
    LENGTHS,
    partitioner=partitioning.Partitioner(num_devices=1),
    batch_size=2,
    num_examples=3,
    output_dir=str(tmp_path / "infer_eval"),
  )
  first = fn(params, 1)
  assert set(first) == {TASK} and set(first[TASK]) == {"exact_match"}
  assert first[TASK]["exact_match"] in (0.0, 100.0 / 3, 200.0 / 3, 100.0)  # 3 examples
  assert fn(params, 2) == first  # greedy decoding with the same parameters
  assert os.path.exists(tmp_path / "infer_eval" / f"{TASK}-metrics.jsonl")

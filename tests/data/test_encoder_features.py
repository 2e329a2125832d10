"""Tests for t5lite/data/encoder_features.py: the MLM and classification feature converters."""

import numpy as np
import pytest
import tensorflow as tf

from t5lite.data import encoder_features, pipeline

MlmConverter = encoder_features.MlmFeatureConverter
ClassConverter = encoder_features.ClassificationFeatureConverter


def mlm_examples(with_types=True):
  """Two MLM examples of 5 and 3 tokens ([CLS]=2, [SEP]=3, [MASK]=4)."""
  exs = [
    {"inputs": [2, 4, 11, 12, 3], "targets": [0, 10, 0, 0, 0], "token_type_ids": [0, 0, 0, 1, 1]},
    {"inputs": [2, 21, 3], "targets": [0, 20, 0], "token_type_ids": [0, 0, 0]},
  ]
  if not with_types:
    for e in exs:
      del e["token_type_ids"]
  specs = {k: tf.TensorSpec([None], tf.int32) for k in exs[0]}
  return tf.data.Dataset.from_generator(lambda: iter(exs), output_signature=specs)


def test_mlm_unpacked():
  out = list(MlmConverter(pack=False)(mlm_examples(), {"inputs": 6, "targets": 6}).as_numpy_iterator())
  assert set(out[0]) == {
    "encoder_input_tokens",
    "encoder_token_type_ids",
    "encoder_target_tokens",
    "encoder_loss_weights",
  }
  assert all(v.dtype == np.int32 and v.shape == (6,) for v in out[0].values())
  assert out[0]["encoder_input_tokens"].tolist() == [2, 4, 11, 12, 3, 0]
  assert out[0]["encoder_token_type_ids"].tolist() == [0, 0, 0, 1, 1, 0]
  assert out[0]["encoder_target_tokens"].tolist() == [0, 10, 0, 0, 0, 0]
  assert out[0]["encoder_loss_weights"].tolist() == [0, 1, 0, 0, 0, 0]
  assert out[1]["encoder_input_tokens"].tolist() == [2, 21, 3, 0, 0, 0]


def test_mlm_packed():
  out = list(MlmConverter(pack=True)(mlm_examples(), {"inputs": 10, "targets": 10}).as_numpy_iterator())
  assert len(out) == 1
  row = out[0]
  assert len(row) == 6 and all(v.dtype == np.int32 and v.shape == (10,) for v in row.values())
  assert row["encoder_input_tokens"].tolist() == [2, 4, 11, 12, 3, 2, 21, 3, 0, 0]
  assert row["encoder_segment_ids"].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 0, 0]
  assert row["encoder_positions"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 0]
  assert row["encoder_token_type_ids"].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
  assert row["encoder_target_tokens"].tolist() == [0, 10, 0, 0, 0, 0, 20, 0, 0, 0]
  assert row["encoder_loss_weights"].tolist() == [0, 1, 0, 0, 0, 0, 1, 0, 0, 0]
  assert MlmConverter(pack=True).get_model_feature_lengths({"inputs": 10, "targets": 10}) == {k: 10 for k in row}


def test_mlm_without_token_types_gets_zeros():
  out = next(MlmConverter(pack=True)(mlm_examples(False), {"inputs": 8, "targets": 8}).as_numpy_iterator())
  assert out["encoder_token_type_ids"].tolist() == [0] * 8
  assert out["encoder_segment_ids"].tolist() == [1, 1, 1, 1, 1, 2, 2, 2]


def test_mlm_lengths_must_match():
  with pytest.raises(ValueError, match="'targets' length equal to the 'inputs' length.*inputs=8, targets=4"):
    MlmConverter(pack=True)(mlm_examples(), {"inputs": 8, "targets": 4})


def class_examples(label_dtype=tf.int32, labels=(2, 0)):
  exs = [
    {"inputs": [2, 11, 12, 3], "targets": [labels[0]]},
    {"inputs": [2, 21, 3, 22, 3], "targets": [labels[1]], "token_type_ids": [0, 0, 0, 1, 1]},
  ]
  # One dataset of both shapes: the first gets zero token types (as a single-segment task has).
  exs[0]["token_type_ids"] = [0, 0, 0, 0]
  specs = {
    "inputs": tf.TensorSpec([None], tf.int32),
    "targets": tf.TensorSpec([1], label_dtype),
    "token_type_ids": tf.TensorSpec([None], tf.int32),
  }
  return tf.data.Dataset.from_generator(lambda: iter(exs), output_signature=specs)


def test_classification_converter():
  out = list(ClassConverter(pack=False)(class_examples(), {"inputs": 6, "targets": 1}).as_numpy_iterator())
  assert set(out[0]) == {"encoder_input_tokens", "encoder_token_type_ids", "classifier_labels", "classifier_weights"}
  assert out[0]["encoder_input_tokens"].tolist() == [2, 11, 12, 3, 0, 0]
  assert out[1]["encoder_token_type_ids"].tolist() == [0, 0, 0, 1, 1, 0]
  assert [int(o["classifier_labels"]) for o in out] == [2, 0]
  assert [int(o["classifier_weights"]) for o in out] == [1, 1]
  assert out[0]["classifier_labels"].dtype == np.int32 and out[0]["classifier_labels"].shape == ()
  batch = next(ClassConverter()(class_examples(), {"inputs": 6, "targets": 1}).batch(2).as_numpy_iterator())
  assert batch["encoder_input_tokens"].shape == (2, 6) and batch["classifier_labels"].shape == (2,)
  assert ClassConverter().get_model_feature_lengths({"inputs": 6, "targets": 1})["encoder_input_tokens"] == 6


def test_regression_converter_gives_floats():
  ds = class_examples(tf.float32, labels=(0.25, 4.5))
  out = list(encoder_features.RegressionFeatureConverter()(ds, {"inputs": 6, "targets": 1}).as_numpy_iterator())
  assert [float(o["classifier_labels"]) for o in out] == [0.25, 4.5]
  assert out[0]["classifier_labels"].dtype == np.float32


def test_classification_refuses_packing():
  with pytest.raises(ValueError, match="does not pack.*pack=False"):
    ClassConverter(pack=True)
  with pytest.raises(ValueError, match="does not pack"):
    pipeline.feature_converter("classification", pack=True)


def test_short_names():
  assert isinstance(pipeline.feature_converter("mlm"), MlmConverter)
  assert isinstance(pipeline.feature_converter("classification", pack=False), ClassConverter)
  assert pipeline.converter_name(MlmConverter) == "mlm"
  assert pipeline.converter_name(encoder_features.RegressionFeatureConverter) == "regression"

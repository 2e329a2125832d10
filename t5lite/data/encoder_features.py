"""seqio feature converters for encoder-only (BERT-style) models: MLM and sequence classification.

`MlmFeatureConverter` turns MLM task examples ("inputs", "targets", optional
"token_type_ids", all [L]) into encoder_input_tokens / encoder_token_type_ids /
encoder_target_tokens / encoder_loss_weights, packed with seqio's packing
(`trim_and_pack_dataset`, as `EncDecFeatureConverter` does) into rows with
encoder_segment_ids and encoder_positions. `ClassificationFeatureConverter` (and
`RegressionFeatureConverter`) give one row per example with classifier_labels and
classifier_weights, never packed (a row is one example, its [CLS] pooled). seqio ships
converters for encoder-decoder and decoder-only models only, hence these.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

Spec = seqio.FeatureConverter.FeatureSpec


def _with_token_types(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Adds zero "token_type_ids" to examples that have none (single-segment tasks)."""
  if "token_type_ids" in ds.element_spec:
    return ds.map(lambda x: {**x, "token_type_ids": tf.cast(x["token_type_ids"], tf.int32)})
  return ds.map(lambda x: {**x, "token_type_ids": tf.zeros_like(x["inputs"])})


class MlmFeatureConverter(seqio.FeatureConverter):
  """Masked-LM examples -> encoder-only model features.

  Task features: "inputs" int32 [L] (corrupted), "targets" int32 [L] (the
  original id where a token is to be predicted, 0 elsewhere), optional
  "token_type_ids" int32 [L] (zeros when absent). The "targets" length must
  equal the "inputs" length.

  Model features, all int32 [L]: encoder_input_tokens, encoder_token_type_ids,
  encoder_target_tokens, encoder_loss_weights (1 where encoder_target_tokens
  > 0); packed, also encoder_segment_ids (1, 2, ... per example, 0 on padding)
  and encoder_positions (restarting at 0 in each example). For example, with
  L = 8 two examples of 4 and 3 tokens pack into one row:

    encoder_input_tokens   [2, 9, 4, 3, 2, 4, 3, 0]
    encoder_segment_ids    [1, 1, 1, 1, 2, 2, 2, 0]
    encoder_positions      [0, 1, 2, 3, 0, 1, 2, 0]
  """

  TASK_FEATURES = {"inputs": Spec(dtype=tf.int32), "targets": Spec(dtype=tf.int32)}
  MODEL_FEATURES = {
    "encoder_input_tokens": Spec(dtype=tf.int32),
    "encoder_token_type_ids": Spec(dtype=tf.int32),
    "encoder_target_tokens": Spec(dtype=tf.int32),
    "encoder_loss_weights": Spec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {"encoder_segment_ids": tf.int32, "encoder_positions": tf.int32}

  def _convert_example(self, x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    out = {
      "encoder_input_tokens": x["inputs"],
      "encoder_token_type_ids": x["token_type_ids"],
      "encoder_target_tokens": x["targets"],
      "encoder_loss_weights": tf.cast(x["targets"] > 0, tf.int32),
    }
    if self.pack:
      out["encoder_segment_ids"] = x["inputs_segment_ids"]
      out["encoder_positions"] = x["inputs_positions"]
    return out

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = self._length(task_feature_lengths)
    ds = _with_token_types(ds)
    lengths = {"inputs": length, "targets": length, "token_type_ids": length}
    if not self.pack:
      return self._pack_or_pad(ds, lengths).map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)
    # seqio's packing takes a feature's length to be its number of non-zero ids (zeros are padding),
    # but "targets" and "token_type_ids" are mostly 0: pack them shifted by one, then shift back.
    # The three features have one length per example, so they pack into the same places.
    shifted = ("targets", "token_type_ids")
    ds = ds.map(lambda x: {**x, **{k: x[k] + 1 for k in shifted}}, num_parallel_calls=tf.data.AUTOTUNE)
    ds = self._pack_or_pad(ds, lengths)
    ds = ds.map(lambda x: {**x, **{k: tf.maximum(x[k] - 1, 0) for k in shifted}}, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  @staticmethod
  def _length(task_feature_lengths: Mapping[str, int]) -> int:
    inputs, targets = task_feature_lengths["inputs"], task_feature_lengths["targets"]
    if inputs != targets:
      raise ValueError(
        f"MlmFeatureConverter needs the 'targets' length equal to the 'inputs' length (one target slot per "
        f"token), got inputs={inputs}, targets={targets}."
      )
    return inputs

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    length = self._length(task_feature_lengths)
    names = list(self.MODEL_FEATURES) + (list(self.PACKING_FEATURE_DTYPES) if self.pack else [])
    return {k: length for k in names}


class ClassificationFeatureConverter(seqio.FeatureConverter):
  """Sequence-classification examples -> encoder-only model features (no packing).

  Task features: "inputs" int32 [L] (`[CLS] text [SEP]`), "targets" int32 [1]
  (the class index), optional "token_type_ids" int32 [L]. Model features:
  encoder_input_tokens int32 [L], encoder_token_type_ids int32 [L] (padded with
  0), classifier_labels int32 [] (a batch: [b]), classifier_weights int32 []
  (1 for every example; padding rows a trainer adds have 0).

  Raises:
    ValueError: pack=True (a classifier pools one [CLS] per row, so examples
      cannot share a row).
  """

  TASK_FEATURES = {"inputs": Spec(dtype=tf.int32), "targets": Spec(dtype=tf.int32)}
  MODEL_FEATURES = {
    "encoder_input_tokens": Spec(dtype=tf.int32),
    "encoder_token_type_ids": Spec(dtype=tf.int32),
    "classifier_labels": Spec(dtype=tf.int32, rank=0),
    "classifier_weights": Spec(dtype=tf.int32, rank=0),
  }
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      raise ValueError(
        f"{type(self).__name__} does not pack: a classifier pools one [CLS] per row, so examples cannot share "
        "a row. Use pack=False (gin: `train_lib.train.pack = False`, as experiments/quickstart_bert_classify.gin "
        "sets it; pipeline.get_dataset(..., pack=False))."
      )
    super().__init__(pack=False, **kwargs)

  def _convert_example(self, x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    label_dtype = self.MODEL_FEATURES["classifier_labels"].dtype
    return {
      "encoder_input_tokens": x["inputs"],
      "encoder_token_type_ids": x["token_type_ids"],
      "classifier_labels": tf.cast(x["targets"][0], label_dtype),
      "classifier_weights": tf.constant(1, tf.int32),
    }

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = task_feature_lengths["inputs"]
    ds = _with_token_types(ds)
    ds = self._pack_or_pad(ds, {"inputs": length, "token_type_ids": length, "targets": 1})
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    length = task_feature_lengths["inputs"]
    return {
      "encoder_input_tokens": length,
      "encoder_token_type_ids": length,
      "classifier_labels": 1,
      "classifier_weights": 1,
    }


class RegressionFeatureConverter(ClassificationFeatureConverter):
  """As ClassificationFeatureConverter for a regression task: "targets" and classifier_labels are float32."""

  TASK_FEATURES = {"inputs": Spec(dtype=tf.int32), "targets": Spec(dtype=tf.float32)}
  MODEL_FEATURES = {
    **ClassificationFeatureConverter.MODEL_FEATURES,
    "classifier_labels": Spec(dtype=tf.float32, rank=0),
  }

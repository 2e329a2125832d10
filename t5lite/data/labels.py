"""Label vocabularies and the classification preprocessor: (text, label) examples for an encoder's head.

`ClassLabelVocabulary(names)` is a seqio Vocabulary whose ids are class indices, so a
classification task's "targets" is `[index]` and seqio's Evaluator decodes targets and the
model's predicted `[index]` rows back to class names for the metrics. `ScalarVocabulary` does
the same for regression ("targets" one float32). `classification` turns raw
("inputs" text, "label") examples into `[CLS] text [SEP]` ids and "targets". seqio has no
vocabulary of labels (T5 spells labels as text), hence these.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from t5lite.data import mlm


class ClassLabelVocabulary(seqio.Vocabulary):
  """Class names <-> class indices: encode("name") -> [index], decode([index]) -> "name".

  Index i is names[i]. No EOS, no UNK: a name outside the declared classes is
  an error (ValueError from encode; InvalidArgumentError, naming the label
  and the classes, from encode_tf when the tf.data pipeline reads it), never
  a silent class.
  """

  def __init__(self, names: Sequence[str]):
    names = [str(n) for n in names]
    if len(names) < 2:
      raise ValueError(f"ClassLabelVocabulary needs at least 2 class names, got {names}.")
    if len(set(names)) != len(names):
      raise ValueError(f"ClassLabelVocabulary class names must be distinct, got {names}.")
    super().__init__(extra_ids=0)
    self.names = tuple(names)
    self._index = {n: i for i, n in enumerate(names)}

  @property
  def eos_id(self) -> Optional[int]:
    return None

  @property
  def unk_id(self) -> Optional[int]:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return len(self.names)

  @property
  def num_classes(self) -> int:
    return len(self.names)

  def _encode(self, s: str) -> list[int]:
    if isinstance(s, bytes):
      s = s.decode("utf-8")
    if s not in self._index:
      raise ValueError(f"Unknown label {s!r}: the declared classes are {list(self.names)}.")
    return [self._index[s]]

  def _decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    if len(ids) != 1 or not 0 <= ids[0] < len(self.names):
      raise ValueError(f"Cannot decode {ids} as one class index in [0, {len(self.names)}) of {list(self.names)}.")
    return self.names[ids[0]]

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    # A comparison with every name (classes are few) rather than a lookup table, so no resource
    # outlives the tf.data function that calls this.
    s = tf.reshape(s, [])
    found = tf.equal(tf.constant(self.names), s)
    check = tf.debugging.Assert(
      tf.reduce_any(found), ["Unknown label", s, f"; the declared classes are: {', '.join(self.names)}"]
    )
    with tf.control_dependencies([check]):
      return tf.reshape(tf.argmax(tf.cast(found, tf.int32), output_type=tf.int32), [1])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return tf.gather(tf.constant(self.names), ids[..., 0])

  def __eq__(self, other) -> bool:
    return isinstance(other, ClassLabelVocabulary) and self.names == other.names

  def __hash__(self) -> int:
    return hash(self.names)

  def __str__(self) -> str:
    return f"ClassLabelVocabulary({list(self.names)})"


class ScalarVocabulary(seqio.Vocabulary):
  """One float per example, for regression: encode("3.5") -> [3.5], decode([3.5]) -> 3.5.

  Used as the "targets" vocabulary of a regression task with
  `seqio.Feature(ScalarVocabulary(), dtype=tf.float32, add_eos=False)`, so
  seqio's Evaluator hands the metrics floats (targets and predicted rows).
  """

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def eos_id(self) -> Optional[int]:
    return None

  @property
  def unk_id(self) -> Optional[int]:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return 1

  def _encode(self, s) -> list[float]:
    return [float(s)]

  def _decode(self, ids) -> float:
    ids = list(ids)
    if len(ids) != 1:
      raise ValueError(f"A regression target is one value, got {ids}.")
    return float(ids[0])

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    if s.dtype == tf.string:
      s = tf.strings.to_number(s, tf.float32)
    return tf.reshape(tf.cast(s, tf.float32), [-1])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return tf.cast(ids[..., 0], tf.float32)

  def __eq__(self, other) -> bool:
    return isinstance(other, ScalarVocabulary)

  def __hash__(self) -> int:
    return hash("ScalarVocabulary")

  def __str__(self) -> str:
    return "ScalarVocabulary()"


def _label_ids(label: tf.Tensor, vocabulary) -> tf.Tensor:
  if isinstance(vocabulary, ScalarVocabulary):
    return vocabulary.encode_tf(label)
  if label.dtype == tf.string:
    return tf.cast(vocabulary.encode_tf(label), tf.int32)
  if not label.dtype.is_integer:
    raise ValueError(f"classification: a class label must be a string or an integer index, got {label.dtype.name}.")
  index = tf.cast(tf.reshape(label, [-1]), tf.int32)
  n = vocabulary.vocab_size
  check = tf.debugging.Assert(
    tf.reduce_all((index >= 0) & (index < n)),
    ["Label index", index, f"is outside the declared classes [0, {n})", str(vocabulary)],
  )
  with tf.control_dependencies([check]):
    return tf.identity(index)


def classification(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int],
  output_features: Mapping[str, seqio.Feature],
  *,
  text_key: str = "inputs",
  label_key: str = "label",
  second_key: Optional[str] = None,
) -> tf.data.Dataset:
  """(text, label) examples -> "inputs" `[CLS] text [SEP]` ids, "token_type_ids" and "targets".

  `text_key` (and `second_key`, a sentence B) are tf.string features encoded
  with the "inputs" vocabulary and laid out by `mlm.bert_inputs` (truncated to
  the "inputs" length). `label_key` is a class name (tf.string) or a class
  index (integer) for a ClassLabelVocabulary "targets" feature, giving
  "targets" int32 [1]; for a ScalarVocabulary, a number or a numeric string,
  giving "targets" float32 [1]. Returns {"inputs", "token_type_ids",
  "targets"}; other features are dropped.

  Raises:
    ValueError (when applied): a missing feature, no "targets" feature with a
      ClassLabelVocabulary or ScalarVocabulary, or an "inputs" vocabulary
      without [CLS]/[SEP].
    tf.errors.InvalidArgumentError (when read): a label outside the declared
      classes; the message names the label and the classes.
  """
  name = "classification"
  spec = dataset.element_spec
  for key in [text_key, label_key] + ([second_key] if second_key else []):
    if not isinstance(spec, Mapping) or key not in spec:
      found = sorted(spec) if isinstance(spec, Mapping) else spec
      raise ValueError(f"{name} reads the feature {key!r}, but the dataset has {found}.")
  if "targets" not in (output_features or {}):
    raise ValueError(f"{name} needs a 'targets' output feature (a ClassLabelVocabulary or ScalarVocabulary).")
  labels = output_features["targets"].vocabulary
  if not isinstance(labels, (ClassLabelVocabulary, ScalarVocabulary)):
    raise ValueError(
      f"{name}: the 'targets' vocabulary must be a ClassLabelVocabulary (classes) or ScalarVocabulary "
      f"(regression), got {labels}."
    )
  mlm.bert_vocabulary(output_features, name)

  def fn(x):
    out = {"inputs": x[text_key], "targets": _label_ids(x[label_key], labels)}
    if second_key:
      out[second_key] = x[second_key]
    return out

  ds = dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
  return mlm.bert_inputs(ds, sequence_length, output_features, second_key=second_key)

"""Tests for t5lite/data/labels.py: class-label and scalar vocabularies, the classification preprocessor."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5lite.data import labels, wordpiece

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  path = tmp_path_factory.mktemp("wp") / "vocab.txt"
  path.write_text("".join(t + "\n" for t in SPECIALS + ["a", "b", "c", "##x"]))
  return wordpiece.WordPieceVocabulary(str(path), lowercase=True)


def test_class_label_vocabulary():
  v = labels.ClassLabelVocabulary(["neg", "pos", "neutral"])
  assert v.vocab_size == 3 and v.num_classes == 3
  assert v.encode("pos") == [1] and v.decode([2]) == "neutral" and v.decode(np.array([0], np.int32)) == "neg"
  assert v.encode_tf(tf.constant("neutral")).numpy().tolist() == [2]
  assert v.decode_tf(tf.constant([1])).numpy() == b"pos"
  with pytest.raises(
    ValueError, match=r"Unknown label 'positive': the declared classes are \['neg', 'pos', 'neutral'\]"
  ):
    v.encode("positive")
  with pytest.raises(
    tf.errors.InvalidArgumentError, match=r"(?s)Unknown label.*positive.*the declared classes are: neg, pos, neutral"
  ):
    v.encode_tf(tf.constant("positive"))
  with pytest.raises(ValueError, match="one class index in"):
    v.decode([3])
  with pytest.raises(ValueError, match="distinct"):
    labels.ClassLabelVocabulary(["a", "a"])
  assert v == labels.ClassLabelVocabulary(["neg", "pos", "neutral"]) != labels.ClassLabelVocabulary(["a", "b"])


def test_scalar_vocabulary():
  v = labels.ScalarVocabulary()
  assert v.encode("3.5") == [3.5] and v.decode(np.array([0.25], np.float32)) == 0.25
  assert v.encode_tf(tf.constant("1.5")).numpy().tolist() == [1.5]


def task_features(vocab, targets):
  return {"inputs": seqio.Feature(vocab, add_eos=False), "targets": targets}


def run(ds, feats, length=8, **kwargs):
  return list(labels.classification(ds, {"inputs": length, "targets": 1}, feats, **kwargs).as_numpy_iterator())


def test_classification_preprocessor(vocab):
  feats = task_features(vocab, seqio.Feature(labels.ClassLabelVocabulary(["no", "yes"]), add_eos=False))
  ds = tf.data.Dataset.from_tensor_slices({"inputs": ["a b", "c a b a b c"], "label": ["yes", "no"], "id": [1, 2]})
  out = run(ds, feats, length=6)
  assert set(out[0]) == {"inputs", "token_type_ids", "targets"}
  assert out[0]["inputs"].tolist() == [2, 5, 6, 3] and out[0]["targets"].tolist() == [1]
  assert out[1]["inputs"].tolist() == [2, 7, 5, 6, 5, 3] and out[1]["targets"].tolist() == [0]
  assert out[0]["targets"].dtype == np.int32
  # Integer labels are indices; a pair gets token types.
  pairs = tf.data.Dataset.from_tensor_slices({"s1": ["a"], "s2": ["bx c"], "y": [1]})
  out = run(pairs, feats, text_key="s1", second_key="s2", label_key="y")
  assert out[0]["inputs"].tolist() == [2, 5, 3, 6, 8, 7, 3] and out[0]["token_type_ids"].tolist() == [
    0,
    0,
    0,
    1,
    1,
    1,
    1,
  ]
  assert out[0]["targets"].tolist() == [1]


def test_labels_outside_the_classes_fail_when_read(vocab):
  feats = task_features(vocab, seqio.Feature(labels.ClassLabelVocabulary(["no", "yes"]), add_eos=False))
  bad = tf.data.Dataset.from_tensor_slices({"inputs": ["a", "b"], "label": ["yes", "maybe"]})
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"Unknown label.*maybe.*the declared classes are: no, yes"):
    run(bad, feats)
  bad_index = tf.data.Dataset.from_tensor_slices({"inputs": ["a"], "label": [2]})
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside the declared classes \[0, 2\)"):
    run(bad_index, feats)
  with pytest.raises(ValueError, match="reads the feature 'label'"):
    run(tf.data.Dataset.from_tensor_slices({"inputs": ["a"]}), feats)
  with pytest.raises(ValueError, match="ClassLabelVocabulary.*ScalarVocabulary"):
    run(bad, task_features(vocab, seqio.Feature(vocab, add_eos=False)))


def test_regression_preprocessor(vocab):
  feats = task_features(vocab, seqio.Feature(labels.ScalarVocabulary(), add_eos=False, dtype=tf.float32))
  ds = tf.data.Dataset.from_tensor_slices({"inputs": ["a", "b"], "label": [0.5, 3.0]})
  out = run(ds, feats)
  assert [o["targets"].tolist() for o in out] == [[0.5], [3.0]] and out[0]["targets"].dtype == np.float32

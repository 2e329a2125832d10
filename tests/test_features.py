"""t5lite.features against seqio's feature converters (pack=False) on the same examples."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5lite import features

# Rows of different lengths: row 0 at both length limits, row 1's targets at theirs, a short one, one token each.
INPUTS = [[5, 6, 7, 8, 9, 10, 1], [9, 1], [3, 4, 5, 1], [2]]
TARGETS = [[11, 12, 13, 14, 15, 1], [13, 14, 15, 16, 17, 1], [18, 1], [19]]
INPUT_LENGTH, TARGET_LENGTH = 7, 6


def _converted(converter, examples, lengths):
  """seqio's converter output for examples {feature: ids}, stacked into numpy arrays."""
  keys = sorted(examples[0])
  ds = tf.data.Dataset.from_generator(
    lambda: ({k: np.asarray(ex[k], np.int32) for k in keys} for ex in examples),
    output_signature={k: tf.TensorSpec([None], tf.int32) for k in keys},
  )
  rows = list(converter(ds, lengths).as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _assert_same(ours, theirs):
  assert sorted(ours) == sorted(theirs)
  for k in theirs:
    assert ours[k].dtype == theirs[k].dtype == np.int32, k
    np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_enc_dec_features_equal_seqio():
  examples = [{"inputs": i, "targets": t} for i, t in zip(INPUTS, TARGETS)]
  theirs = _converted(
    seqio.EncDecFeatureConverter(pack=False), examples, {"inputs": INPUT_LENGTH, "targets": TARGET_LENGTH}
  )
  _assert_same(features.enc_dec_features(INPUTS, TARGETS, INPUT_LENGTH, TARGET_LENGTH), theirs)


def test_lm_features_equal_seqio():
  examples = [{"targets": t} for t in TARGETS]
  theirs = _converted(seqio.LMFeatureConverter(pack=False), examples, {"targets": TARGET_LENGTH})
  _assert_same(features.lm_features(TARGETS, TARGET_LENGTH), theirs)


@pytest.mark.parametrize("target_length", [TARGET_LENGTH, 9])
def test_prefix_lm_features_equal_seqio(target_length):
  # Inputs of 1 to 7 tokens; row 0 fills the whole length when target_length is 6.
  examples = [{"inputs": i, "targets": t} for i, t in zip(INPUTS, TARGETS)]
  lengths = {"inputs": INPUT_LENGTH, "targets": target_length}
  theirs = _converted(seqio.PrefixLMFeatureConverter(pack=False), examples, lengths)
  ours = features.prefix_lm_features(INPUTS, TARGETS, INPUT_LENGTH + target_length)
  _assert_same(ours, theirs)
  # The way back: the inputs part of each row.
  np.testing.assert_array_equal(features.prompts(ours), features.pad(INPUTS))


def test_prefix_lm_with_empty_targets_and_empty_inputs_equal_seqio():
  inputs, targets = [[4, 5, 1], [], [6, 1]], [[], [7, 8, 1], [9]]
  examples = [{"inputs": i, "targets": t} for i, t in zip(inputs, targets)]
  theirs = _converted(seqio.PrefixLMFeatureConverter(pack=False), examples, {"inputs": 3, "targets": 3})
  _assert_same(features.prefix_lm_features(inputs, targets, 6), theirs)
  np.testing.assert_array_equal(features.prompts(theirs), [[4, 5, 1], [0, 0, 0], [6, 1, 0]])


def test_causal_lm_scoring_features_drop_only_the_causal_attention():
  with_prefix = features.prefix_lm_features(INPUTS, TARGETS, 13)
  causal = features.prefix_lm_features(INPUTS, TARGETS, 13, causal_attention=False)
  assert sorted(causal) == sorted(set(with_prefix) - {"decoder_causal_attention"})
  for k in causal:
    np.testing.assert_array_equal(causal[k], with_prefix[k])


def test_lengths_none_pad_to_the_longest_row():
  f = features.enc_dec_features(INPUTS, TARGETS)
  assert f["encoder_input_tokens"].shape == (4, 7) and f["decoder_target_tokens"].shape == (4, 6)
  assert features.prefix_lm_features(INPUTS, TARGETS)["decoder_target_tokens"].shape == (4, 13)
  assert features.pad([]).shape == (0, 1)


def test_shift_right_numpy_jax_and_packed_segments():
  targets = np.asarray([[3, 8, 1, 9, 1, 5, 4, 1, 0, 0]], np.int32)
  segments = np.asarray([[1, 1, 1, 2, 2, 3, 3, 3, 0, 0]], np.int32)
  # seqio.utils.make_autoregressive_inputs' own example.
  np.testing.assert_array_equal(features.shift_right(targets, segments), [[0, 3, 8, 0, 9, 0, 5, 4, 0, 0]])
  expected = seqio.utils.make_autoregressive_inputs(tf.constant(targets[0]), tf.constant(segments[0])).numpy()
  np.testing.assert_array_equal(features.shift_right(targets, segments)[0], expected)
  plain = features.shift_right(targets)
  assert isinstance(plain, np.ndarray) and plain.dtype == np.int32
  np.testing.assert_array_equal(plain, [[0, 3, 8, 1, 9, 1, 5, 4, 1, 0]])
  on_device = features.shift_right(jnp.asarray(targets), jnp.asarray(segments))
  assert isinstance(on_device, jnp.ndarray) and on_device.dtype == jnp.int32
  np.testing.assert_array_equal(on_device, features.shift_right(targets, segments))


def test_errors_name_the_bad_row():
  with pytest.raises(ValueError, match="sequence 0 has 6 tokens, more than the feature length 5"):
    features.enc_dec_features(INPUTS, TARGETS, 7, 5)
  with pytest.raises(ValueError, match="3 inputs but 4 targets"):
    features.prefix_lm_features(INPUTS[:3], TARGETS)
  with pytest.raises(ValueError, match="decoding needs inputs"):
    features.prompts(features.lm_features(TARGETS))


def test_imports_numpy_only():
  # The GPU machine and token-level inference have neither TensorFlow nor seqio; jax is
  # imported only when jax arrays are shifted.
  code = (
    "import sys, t5lite.features; "
    "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'seqio', 'gin', 'jax'}))"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True, check=True, timeout=120
  )
  assert out.stdout.strip() == "[]"

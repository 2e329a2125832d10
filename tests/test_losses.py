"""Tests for t5lite.losses: values on hand-worked examples and the custom gradient."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite import losses
from t5lite.losses import LossNormalizingFactor

# Two tokens, vocab 3: token 0 has logits [1, 2, 3] and target 2, token 1 has
# logits [0, 0, 0] and target 0.
LOGITS = np.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]], np.float32)
TARGETS = np.array([[2, 0]], np.int32)
LSE0 = 3.40760596444438  # log(e + e^2 + e^3)
LOSS0 = 0.40760596444438013  # LSE0 - 3
LOSS1 = 1.0986122886681098  # log(3)


def test_cross_entropy_two_tokens_by_hand():
  total, total_z, weight_sum = losses.compute_weighted_cross_entropy(LOGITS, TARGETS, z_loss=0.0)
  np.testing.assert_allclose(total, LOSS0 + LOSS1, rtol=1e-6)
  assert float(total_z) == 0.0
  assert float(weight_sum) == 2.0


def test_z_loss_value():
  onehot = jax.nn.one_hot(TARGETS, 3)
  loss, z = losses.cross_entropy_with_logits(jnp.asarray(LOGITS), onehot, 1e-4)
  np.testing.assert_allclose(z, [[1e-4 * LSE0**2, 1e-4 * math.log(3) ** 2]], rtol=1e-5)
  # The per-token loss includes the z-loss term.
  np.testing.assert_allclose(loss, [[LOSS0 + 1e-4 * LSE0**2, LOSS1 + 1e-4 * math.log(3) ** 2]], rtol=1e-5)
  total, total_z, _ = losses.compute_weighted_cross_entropy(LOGITS, TARGETS, z_loss=1e-4)
  np.testing.assert_allclose(total_z, 0.0012818727369729496, rtol=1e-5)
  np.testing.assert_allclose(total, 1.50621825311249 + 0.0012818727369729496, rtol=1e-6)


def test_padding_weights_exclude_tokens():
  total, _, weight_sum = losses.compute_weighted_cross_entropy(
    LOGITS, TARGETS, weights=np.array([[1.0, 0.0]]), z_loss=0.0
  )
  np.testing.assert_allclose(total, LOSS0, rtol=1e-6)
  assert float(weight_sum) == 1.0


def test_label_smoothing_perfect_prediction_has_zero_loss():
  ls, vocab = 0.1, 4
  targets = np.array([[1, 3]], np.int32)
  smoothed = np.full((1, 2, vocab), ls / (vocab - 1), np.float64)
  smoothed[0, 0, 1] = smoothed[0, 1, 3] = 1.0 - ls
  # Predicting exactly the smoothed distribution is the optimum: loss 0.
  logits = np.log(smoothed).astype(np.float32)
  total, _, _ = losses.compute_weighted_cross_entropy(logits, targets, label_smoothing=ls, z_loss=0.0)
  np.testing.assert_allclose(total, 0.0, atol=1e-5)
  # Without smoothing a very confident correct prediction also has loss 0.
  big = np.where(np.arange(vocab) == targets[..., None], 100.0, 0.0).astype(np.float32)
  total, _, _ = losses.compute_weighted_cross_entropy(big, targets, z_loss=0.0)
  np.testing.assert_allclose(total, 0.0, atol=1e-6)
  # Smoothed loss of uniform logits: -sum(q log(1/4)) - H(q) = log 4 - H(q).
  entropy = -(0.9 * math.log(0.9) + 3 * (0.1 / 3) * math.log(0.1 / 3))
  total, _, _ = losses.compute_weighted_cross_entropy(
    np.zeros((1, 2, vocab), np.float32), targets, label_smoothing=ls, z_loss=0.0
  )
  np.testing.assert_allclose(total, 2 * (math.log(4) - entropy), rtol=1e-6)


def _token_losses(logits, targets):
  lse = np.log(np.sum(np.exp(logits.astype(np.float64)), axis=-1))
  picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return lse - picked


# Two rows of four tokens with distinct losses.
NLOGITS = np.array(
  [
    [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 1.0]],
    [[0.0, 0.0, 4.0], [1.0, 2.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
  ],
  np.float32,
)
NTARGETS = np.array([[0, 2, 1, 2], [2, 0, 1, 1]], np.int32)
NWEIGHTS = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]], np.float32)


@pytest.mark.parametrize(
  "factor, expected",
  [
    (None, lambda l, w: np.sum(l * w)),
    (4.0, lambda l, w: np.sum(l * w) / 4.0),
    ("NUM_REAL_TARGET_TOKENS", lambda l, w: np.sum(l * w) / 5.0),
    (LossNormalizingFactor.NUM_TOTAL_TARGET_TOKENS, lambda l, w: np.sum(l * w) / 8.0),
    ("average_per_sequence", lambda l, w: (np.sum(l[0, :3]) / 3 + np.sum(l[1, :2]) / 2) / 2),
  ],
)
def test_loss_normalizing_factors(factor, expected):
  token_losses = _token_losses(NLOGITS, NTARGETS)
  total, total_z, weight_sum = losses.compute_weighted_cross_entropy(
    NLOGITS, NTARGETS, NWEIGHTS, z_loss=0.0, loss_normalizing_factor=factor
  )
  np.testing.assert_allclose(total, expected(token_losses, NWEIGHTS), rtol=1e-6)
  assert float(total_z) == 0.0
  assert float(weight_sum) == 5.0


def test_normalizing_factor_hand_numbers():
  # All-zero logits over vocab 3: every token loses log(3).  5 real tokens of 8.
  zeros = np.zeros_like(NLOGITS)
  real, _, _ = losses.compute_weighted_cross_entropy(
    zeros, NTARGETS, NWEIGHTS, z_loss=0.0, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS"
  )
  total, _, _ = losses.compute_weighted_cross_entropy(
    zeros, NTARGETS, NWEIGHTS, z_loss=0.0, loss_normalizing_factor="NUM_TOTAL_TARGET_TOKENS"
  )
  np.testing.assert_allclose(real, math.log(3), rtol=1e-6)
  np.testing.assert_allclose(total, 5 * math.log(3) / 8, rtol=1e-6)


def test_average_per_sequence_with_packed_segments():
  token_losses = _token_losses(NLOGITS, NTARGETS)
  # Row 0 packs segment 1 (tokens 0-1) and segment 2 (token 2); token 3 is padding.
  # Row 1 holds one segment of two real tokens.
  segment_ids = np.array([[1, 1, 2, 0], [1, 1, 0, 0]], np.int32)
  total, _, _ = losses.compute_weighted_cross_entropy(
    NLOGITS,
    NTARGETS,
    NWEIGHTS,
    z_loss=0.0,
    loss_normalizing_factor=LossNormalizingFactor.AVERAGE_PER_SEQUENCE,
    segment_ids=segment_ids,
  )
  l = token_losses
  expected = ((l[0, 0] + l[0, 1]) / 2 + l[0, 2] + (l[1, 0] + l[1, 1]) / 2) / 3
  np.testing.assert_allclose(total, expected, rtol=1e-6)


def test_all_padding_gives_zero_not_nan():
  total, total_z, weight_sum = losses.compute_weighted_cross_entropy(
    NLOGITS, NTARGETS, np.zeros_like(NWEIGHTS), loss_normalizing_factor="AVERAGE_PER_SEQUENCE"
  )
  assert float(total) == 0.0 and float(total_z) == 0.0 and float(weight_sum) == 0.0


def test_unknown_normalizing_factor_lists_valid_names():
  with pytest.raises(ValueError, match="NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE"):
    LossNormalizingFactor.from_str("PER_TOKEN")
  with pytest.raises(ValueError, match="valid names"):
    losses.compute_weighted_cross_entropy(LOGITS, TARGETS, loss_normalizing_factor="nope")
  assert LossNormalizingFactor.from_str("num_real_target_tokens") is LossNormalizingFactor.NUM_REAL_TARGET_TOKENS


def _plain_cross_entropy(logits, targets, z_loss):
  x = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(x, axis=-1)
  z = z_loss * lse**2
  return -jnp.sum(targets * jax.nn.log_softmax(x), axis=-1) + z, z


def test_custom_vjp_matches_autodiff():
  rng = np.random.default_rng(0)
  logits = (3.0 * rng.standard_normal((2, 3, 5))).astype(np.float32)
  # Soft targets that do not sum to one, to check the general gradient.
  targets = rng.uniform(size=(2, 3, 5)).astype(np.float32)
  a = np.arange(6.0, dtype=np.float32).reshape(2, 3) - 2.0
  b = np.linspace(-1.0, 2.0, 6, dtype=np.float32).reshape(2, 3)

  def objective(fn, x, t):
    loss, z = fn(x, t, 0.01)
    return jnp.sum(a * loss) + jnp.sum(b * z)

  grad = lambda fn: jax.jit(jax.grad(functools.partial(objective, fn), argnums=(0, 1)))
  got = grad(losses.cross_entropy_with_logits)(logits, targets)
  want = grad(_plain_cross_entropy)(logits, targets)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)

  # One-hot case through the weighted loss, under jit, gradient dtype follows the logits.
  def weighted(x):
    return losses.compute_weighted_cross_entropy(x, TARGETS, np.array([[1.0, 0.5]]), z_loss=1e-3)[0]

  def weighted_plain(x):
    loss, _ = _plain_cross_entropy(x, jax.nn.one_hot(TARGETS, 3), 1e-3)
    return jnp.sum(loss * jnp.array([[1.0, 0.5]]))

  np.testing.assert_allclose(jax.jit(jax.grad(weighted))(LOGITS), jax.jit(jax.grad(weighted_plain))(LOGITS), rtol=1e-5)
  assert jax.eval_shape(jax.grad(weighted), jnp.asarray(LOGITS, jnp.bfloat16)).dtype == jnp.bfloat16


def test_token_accuracy():
  correct, weight_sum = losses.token_accuracy(NLOGITS, NTARGETS, NWEIGHTS)
  # argmax: row 0 -> [0, 1, 0, 0], row 1 -> [2, 1, 0, 0]; hits at (0,0) and (1,0) only.
  assert float(correct) == 2.0
  assert float(weight_sum) == 5.0
  # Ties go to the first id: [0, 0, 0] predicts 0, which is token 1's target.
  correct, weight_sum = losses.token_accuracy(LOGITS, TARGETS)
  assert float(correct) == 2.0 and float(weight_sum) == 2.0
  correct, _ = losses.token_accuracy(LOGITS, np.array([[2, 1]]))
  assert float(correct) == 1.0

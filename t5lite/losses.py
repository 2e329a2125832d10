"""Token-level losses for t5lite: cross entropy with z-loss, label smoothing and
loss normalization, plus token accuracy.

All functions are pure and jittable and do their math in float32.  The cross
entropy has a custom VJP: the backward pass recomputes softmax from the logits
and the saved log-partition (one float per token), instead of keeping the
softmax / log-softmax intermediates of autodiff alive for the whole vocab.
Conventions follow T5X: the per-token loss already includes the z-loss term,
and label smoothing subtracts the entropy of the smoothed target so that a
perfect prediction has loss 0.
"""

from __future__ import annotations

import enum
import functools
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from t5lite.kernels import backend, xla_cpu

Array = jax.Array


# ---------------------------------------------------------------------------
# Cross entropy with z-loss.
# ---------------------------------------------------------------------------


def _custom_vjp_cross_entropy(nll: Callable, gradients: Callable) -> Callable:
  """A cross entropy with z-loss and a custom VJP, from its target-specific parts.

  Shared by both target forms: logits in float32, lse = logsumexp over the
  vocab, z = z_loss * lse^2, loss = nll + z; the backward pass gets the saved
  lse (one float per token) instead of autodiff's [..., vocab] intermediates.

  Args:
    nll: (float32 logits, targets, lse) -> the negative log-likelihood per token.
    gradients: (float32 logits, targets, lse, loss cotangent, z cotangent, z_loss)
      -> (float32 logits cotangent, targets cotangent).

  Returns:
    f(logits, targets, z_loss) -> (loss_per_token, z_loss_per_token), z_loss static.
  """

  def forward(logits: Array, targets: Array, z_loss: float):
    x = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(x, axis=-1)
    z = z_loss * jnp.square(lse)
    return nll(x, targets, lse) + z, z, lse

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
  def cross_entropy(logits: Array, targets: Array, z_loss: float) -> tuple[Array, Array]:
    loss, z, _ = forward(logits, targets, z_loss)
    return loss, z

  def fwd(logits: Array, targets: Array, z_loss: float):
    loss, z, lse = forward(logits, targets, z_loss)
    return (loss, z), (logits, targets, lse)

  def bwd(z_loss: float, residuals, cotangents):
    logits, targets, lse = residuals
    g_loss, g_z = cotangents
    d_logits, d_targets = gradients(logits.astype(jnp.float32), targets, lse, g_loss, g_z, z_loss)
    return d_logits.astype(logits.dtype), d_targets

  cross_entropy.defvjp(fwd, bwd)
  return cross_entropy


def _soft_nll(x: Array, targets: Array, lse: Array) -> Array:
  return -jnp.sum(targets.astype(jnp.float32) * (x - lse[..., None]), axis=-1)


def _soft_gradients(x: Array, targets: Array, lse: Array, g_loss: Array, g_z: Array, z_loss: float):
  t = targets.astype(jnp.float32)
  log_softmax = x - lse[..., None]
  softmax = jnp.exp(log_softmax)
  g_loss = g_loss[..., None].astype(jnp.float32)
  g_z = g_z[..., None].astype(jnp.float32)
  # d nll / d logits = sum(t) * softmax - t  (= softmax - t for a distribution);
  # d (z_loss lse^2) / d logits = 2 z_loss lse softmax, reached through both outputs.
  z_grad = (2.0 * z_loss) * lse[..., None] * softmax
  d_logits = g_loss * (jnp.sum(t, axis=-1, keepdims=True) * softmax - t + z_grad) + g_z * z_grad
  d_targets = -g_loss * log_softmax
  return d_logits, d_targets.astype(targets.dtype)


def _label_nll(x: Array, labels: Array, lse: Array) -> Array:
  vocab = x.shape[-1]
  labels = labels.astype(jnp.int32)
  valid = (labels >= 0) & (labels < vocab)
  picked = jnp.take_along_axis(x, jnp.clip(labels, 0, vocab - 1)[..., None], axis=-1)[..., 0]
  return jnp.where(valid, lse - picked, 0.0)


def _label_gradients(x: Array, labels: Array, lse: Array, g_loss: Array, g_z: Array, z_loss: float):
  g_loss = g_loss.astype(jnp.float32)
  lse = lse[..., None]
  # d loss / d logits = sum(t) softmax - t + 2 z_loss lse softmax with t = one_hot(labels)
  # (sum(t) is 0 for an out-of-range id); d z / d logits = 2 z_loss lse softmax.
  in_range = ((labels >= 0) & (labels < x.shape[-1])).astype(jnp.float32)
  coef = (g_loss * in_range)[..., None] + (2.0 * z_loss) * lse * (g_loss + g_z.astype(jnp.float32))[..., None]
  one_hot = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1) == labels.astype(jnp.int32)[..., None]
  d_logits = coef * jnp.exp(x - lse) - jnp.where(one_hot, g_loss[..., None], 0.0)
  labels_ct = (
    np.zeros(labels.shape, jax.dtypes.float0)
    if not jnp.issubdtype(labels.dtype, jnp.floating)
    else jnp.zeros_like(labels)
  )
  return d_logits, labels_ct


_soft_cross_entropy = _custom_vjp_cross_entropy(_soft_nll, _soft_gradients)
_label_cross_entropy = _custom_vjp_cross_entropy(_label_nll, _label_gradients)


def cross_entropy_with_logits(logits: Array, targets: Array, z_loss: float) -> tuple[Array, Array]:
  """Cross entropy of `logits` against one-hot or soft `targets`, plus z-loss.

  With lse = log(sum(exp(logits))) over the last axis:
    z_loss_per_token = z_loss * lse^2
    loss_per_token   = -sum(targets * (logits - lse)) + z_loss_per_token

  Args:
    logits: [..., vocab] (any float dtype; computed in float32).
    targets: [..., vocab] one-hot or soft target distribution.
    z_loss: coefficient of the z-loss (a Python float, not traced).

  Returns:
    (loss_per_token, z_loss_per_token), each of shape logits.shape[:-1], float32.
    loss_per_token includes the z-loss term. Custom VJP: the backward pass
    recomputes the softmax from the logits and the saved lse.
  """
  return _soft_cross_entropy(logits, targets, z_loss)


def cross_entropy_with_integer_labels(logits: Array, labels: Array, z_loss: float) -> tuple[Array, Array]:
  """`cross_entropy_with_logits` against one-hot targets, given as integer ids.

  Equal to `cross_entropy_with_logits(logits, jax.nn.one_hot(labels, vocab), z_loss)`
  (an id outside [0, vocab) has an all-zero one-hot row: its loss is the z-loss
  alone), without building the [..., vocab] one-hot array: the label's logit is
  gathered, and the backward pass writes softmax - one_hot in one elementwise
  pass. `labels` gets no gradient.

  Returns:
    (loss_per_token, z_loss_per_token), each of shape labels.shape, float32.
  """
  return _label_cross_entropy(logits, labels, z_loss)


# ---------------------------------------------------------------------------
# Loss normalization.
# ---------------------------------------------------------------------------


class LossNormalizingFactor(enum.Enum):
  """How `compute_weighted_cross_entropy` normalizes the summed loss.

  NUM_REAL_TARGET_TOKENS: divide by the number of target tokens with weight > 0.
  NUM_TOTAL_TARGET_TOKENS: divide by the number of target positions, padding included.
  AVERAGE_PER_SEQUENCE: divide each sequence's (or packed segment's) loss by its
    own count of tokens with weight > 0, then average over the sequences that have
    at least one such token.
  """

  NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
  NUM_TOTAL_TARGET_TOKENS = "NUM_TOTAL_TARGET_TOKENS"
  AVERAGE_PER_SEQUENCE = "AVERAGE_PER_SEQUENCE"

  @classmethod
  def from_str(cls, name: str) -> "LossNormalizingFactor":
    """Case-insensitive lookup by name; unknown names raise ValueError listing the valid ones."""
    key = name.strip().upper() if isinstance(name, str) else name
    try:
      return cls[key]
    except KeyError:
      valid = ", ".join(m.name for m in cls)
      raise ValueError(f"Unknown loss normalizing factor {name!r}; valid names: {valid}.") from None


LossNormalizingFactorLike = Union[None, float, int, str, LossNormalizingFactor]


def as_normalizer(factor: LossNormalizingFactorLike) -> Union[None, float, LossNormalizingFactor]:
  if factor is None or isinstance(factor, LossNormalizingFactor):
    return factor
  if isinstance(factor, str):
    return LossNormalizingFactor.from_str(factor)
  if isinstance(factor, bool):
    raise TypeError("loss_normalizing_factor must be None, a number, or a LossNormalizingFactor name.")
  if isinstance(factor, (int, float, np.number)):
    factor = float(factor)
    if not factor > 0:
      raise ValueError(f"A constant loss_normalizing_factor must be > 0, got {factor}.")
    return factor
  raise TypeError(
    f"loss_normalizing_factor must be None, a number, a string or a LossNormalizingFactor, got {factor!r}."
  )


def _per_sequence_token_factor(weights: Array, segment_ids: Optional[Array]) -> tuple[Array, Array]:
  """For AVERAGE_PER_SEQUENCE: returns (per-token factor 1/n_seq, number of sequences).

  A "sequence" is a row of the batch, or, when `segment_ids` is given, a maximal
  run of equal segment ids within a row (packed segments are contiguous).  n_seq
  is its count of tokens with weight > 0; sequences with n_seq = 0 (e.g. padding)
  get factor 0 and are not counted.
  """
  real = (weights > 0).astype(jnp.float32)
  if weights.ndim == 1:
    real = real[None]
    seg = None if segment_ids is None else segment_ids[None]
  else:
    seg = segment_ids
  real2 = real.reshape(-1, real.shape[-1])
  rows, length = real2.shape
  if seg is None:
    counts = jnp.sum(real2, axis=-1, keepdims=True)
    factor = jnp.where(counts > 0, 1.0 / jnp.maximum(counts, 1.0), 0.0) * jnp.ones_like(real2)
    num_seqs = jnp.sum(counts > 0)
  else:
    seg2 = jnp.asarray(seg).reshape(rows, length)
    changes = jnp.concatenate(
      [jnp.zeros((rows, 1), jnp.int32), (seg2[:, 1:] != seg2[:, :-1]).astype(jnp.int32)], axis=-1
    )
    run_id = jnp.cumsum(changes, axis=-1) + jnp.arange(rows, dtype=jnp.int32)[:, None] * length
    run_id = run_id.reshape(-1)
    counts = jax.ops.segment_sum(real2.reshape(-1), run_id, num_segments=rows * length)
    per_token = counts[run_id].reshape(rows, length)
    factor = jnp.where(per_token > 0, 1.0 / jnp.maximum(per_token, 1.0), 0.0)
    num_seqs = jnp.sum(counts > 0)
  return factor.reshape(weights.shape), num_seqs.astype(jnp.float32)


# ---------------------------------------------------------------------------
# Weighted cross entropy and accuracy.
# ---------------------------------------------------------------------------


def loss_scale_and_denominator(
  weights: Array,
  loss_normalizing_factor: LossNormalizingFactorLike = None,
  segment_ids: Optional[Array] = None,
) -> tuple[Array, Array]:
  """Per-token loss scale and the denominator that a normalizing factor implies.

  The loss is sum(token_loss * scale) / denominator. Gradient accumulation
  computes both once over the whole batch and sums microbatch losses with the
  matching slices of `scale`, so the result equals the unsplit batch's.
  """
  normalizer = as_normalizer(loss_normalizing_factor)
  weights = jnp.asarray(weights, jnp.float32)
  if normalizer is LossNormalizingFactor.AVERAGE_PER_SEQUENCE:
    if segment_ids is not None and jnp.shape(segment_ids) != weights.shape:
      raise ValueError(f"segment_ids shape {jnp.shape(segment_ids)} must equal targets shape {weights.shape}.")
    factor, num_seqs = _per_sequence_token_factor(weights, segment_ids)
    return weights * factor, jnp.maximum(num_seqs, 1.0)
  if normalizer is None:
    denom = jnp.float32(1.0)
  elif isinstance(normalizer, float):
    denom = jnp.float32(normalizer)
  elif normalizer is LossNormalizingFactor.NUM_REAL_TARGET_TOKENS:
    denom = jnp.maximum(jnp.sum(weights > 0).astype(jnp.float32), 1.0)
  else:  # NUM_TOTAL_TARGET_TOKENS
    denom = jnp.float32(max(int(np.prod(weights.shape)), 1))
  return weights, denom


def compute_weighted_cross_entropy(
  logits: Array,
  targets: Array,
  weights: Optional[Array] = None,
  label_smoothing: float = 0.0,
  z_loss: float = 1e-4,
  loss_normalizing_factor: LossNormalizingFactorLike = None,
  segment_ids: Optional[Array] = None,
) -> tuple[Array, Array, Array]:
  """Weighted, optionally label-smoothed cross entropy with z-loss.

  Args:
    logits: [batch, length, vocab] (or [length, vocab]).
    targets: integer ids, logits.shape[:-1].
    weights: per-token weights (0 for padding), defaults to all ones.
    label_smoothing: ls in [0, 1): the target puts 1 - ls on the true id and
      ls / (vocab - 1) on every other id; the entropy of that distribution is
      subtracted so a perfect prediction has loss 0.
    z_loss: z-loss coefficient (see `cross_entropy_with_logits`).
    loss_normalizing_factor: None (plain weighted sum), a positive number
      (divide by it), or a `LossNormalizingFactor` / its name.
    segment_ids: packing segment ids (same shape as targets); only used by
      AVERAGE_PER_SEQUENCE, which then averages per packed segment.

  label_smoothing, z_loss and loss_normalizing_factor are configuration: pass
  them as Python values (static under jit), not traced arrays.

  Returns:
    (total_loss, total_z_loss, weight_sum): total_loss includes the z-loss and
    both are normalized the same way; weight_sum is the plain sum of weights.
    Divisions by a token or sequence count use max(count, 1), so an all-padding
    batch gives 0 rather than NaN.
  """
  if logits.ndim != targets.ndim + 1 or logits.shape[:-1] != targets.shape:
    raise ValueError(f"logits shape {logits.shape} must be targets shape {targets.shape} plus a vocab dim.")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
  normalizer = as_normalizer(loss_normalizing_factor)
  vocab = logits.shape[-1]
  if label_smoothing > 0 and vocab < 2:
    raise ValueError("label_smoothing needs a vocab of at least 2.")

  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab - 1) if vocab > 1 else 0.0
  # Entropy of the smoothed target (0 without smoothing); a Python constant.
  normalizing_constant = -(
    confidence * np.log(confidence) + (vocab - 1) * low_confidence * np.log(low_confidence + 1e-20)
  )
  if label_smoothing == 0.0:
    # Integer-label path: no [..., vocab] one-hot array (same values and gradient).
    loss, z = cross_entropy_with_integer_labels(logits, targets, float(z_loss))
  else:
    soft_targets = jax.nn.one_hot(targets, vocab, dtype=jnp.float32) * (confidence - low_confidence) + low_confidence
    loss, z = cross_entropy_with_logits(logits, soft_targets, float(z_loss))
    loss = loss - normalizing_constant

  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  else:
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != targets.shape:
      raise ValueError(f"weights shape {weights.shape} must equal targets shape {targets.shape}.")
  weight_sum = jnp.sum(weights)
  scale, denom = loss_scale_and_denominator(weights, normalizer, segment_ids)

  total_loss = jnp.sum(loss * scale) / denom
  total_z_loss = jnp.sum(z * scale) / denom
  return total_loss, total_z_loss, weight_sum


def argmax(x: Array) -> Array:
  """jnp.argmax(x, axis=-1); on the CPU backend computed by `t5lite.kernels.xla_cpu.argmax`
  (same index for inputs without NaNs, ties to the lowest index)."""
  if backend.cpu_kernels():
    return xla_cpu.argmax(x)
  return jnp.argmax(x, axis=-1)


def token_accuracy(logits: Array, targets: Array, weights: Optional[Array] = None) -> tuple[Array, Array]:
  """(weighted number of positions where argmax(logits) == target, sum of weights)."""
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f"logits shape {logits.shape} must be targets shape {targets.shape} plus a vocab dim.")
  correct = (argmax(logits) == targets).astype(jnp.float32)
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  return jnp.sum(correct * weights), jnp.sum(weights)

"""Formulations that exist only because XLA's CPU backend runs them faster.

Each computes what a plain jax expression computes (equal up to float rounding;
tests/kernels/test_xla_cpu.py compares every one with the plain form) and is
used only where `t5lite.kernels.backend` chooses it: on the CPU backend. Why
each one is faster there is written down in docs/performance.md ("XLA:CPU
kernels"); here is what each does:

* `attention`: softmax(q k^T + bias, masked) v with a hand-written backward
  pass whose matmuls all read head-major, row-major operands, pinned with
  optimization barriers so that XLA:CPU does not fold the transposes back into
  the dots. The bias gradient's batch sum is a tree of adds of halves.
* `fold_mask_into_bias`: the boolean self-attention mask (and causal triangle)
  turned into an additive one once per layer stack, folded into the bias where
  their shapes allow.
* `relpos_gather`: the relative-position bias gathered from the flattened
  [heads * buckets] table straight into [batch, heads, q, k].
* `argmax`: argmax over the vocabulary in two levels (block maxima, then inside
  the chosen block).
* `mean`: a mean over leading dims as a contraction with a block of 1/n.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t5lite.kernels import masking

Array = jax.Array


# --------------------------------------------------------------------------
# Attention with a hand-written backward pass
# --------------------------------------------------------------------------


def fold_mask_into_bias(
  bias: Optional[Array], mask: Optional[Array], is_causal: bool = False
) -> tuple[Optional[Array], Optional[Array]]:
  """Self-attention (bias, mask) prepared once per layer stack.

  The boolean mask (with the causal triangle when `is_causal`) becomes
  additive: 0 where a key is visible, -0.7 * float32 max where it is not.
  When the bias already has the mask's shape or a larger one, the two are
  folded into one float32 bias, where(mask, bias, -0.7 max), and the mask is
  dropped. A batch-shared bias [1, h, q, k] with a per-example mask
  [b, 1, q, k] stays apart from the additive mask, so that neither pass
  builds a [b, h, q, k] bias.

  Same forward values as a select in every layer: a masked logit q.k + bias
  + (-0.7 * f32 max) rounds to -0.7 * f32 max exactly as the select gave it,
  so the softmax weights, fully masked rows included, are equal. Gradients
  are equal wherever a query row has at least one visible key, which the
  models' masks guarantee (padding sees padding, causal rows see themselves).
  """
  if is_causal:
    q_len, k_len = (mask if mask is not None else bias).shape[-2:]
    mask = masking.with_causal(mask, q_len, k_len)
  if mask is None:
    return bias, None
  if bias is not None:
    bias = bias.astype(jnp.promote_types(bias.dtype, jnp.float32))
    if jnp.broadcast_shapes(bias.shape, mask.shape) == bias.shape:
      return jnp.where(mask, bias, masking.large_negative(bias.dtype)), None
  return bias, jnp.where(mask, jnp.float32(0), masking.large_negative(jnp.float32))


def sum_axis_by_halves(x: Array, axis: int) -> Array:
  """jnp.sum(x, axis, keepdims=True) as a tree of elementwise adds of halves."""
  while x.shape[axis] > 1:
    n = x.shape[axis]
    half = n // 2
    y = jax.lax.slice_in_dim(x, 0, half, axis=axis) + jax.lax.slice_in_dim(x, half, 2 * half, axis=axis)
    if n % 2:
      last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
      y = jnp.concatenate(
        [jax.lax.slice_in_dim(y, 0, 1, axis=axis) + last, jax.lax.slice_in_dim(y, 1, half, axis=axis)], axis=axis
      )
    x = y
  return x


def _sum_to_shape(x: Array, shape: tuple[int, ...]) -> Array:
  """Sums the broadcast dims of `x` away so that it has `shape` (a broadcastable shape)."""
  lead = x.ndim - len(shape)
  x = jnp.sum(x, axis=tuple(range(lead))) if lead else x
  for i, (n, m) in enumerate(zip(shape, x.shape)):
    if n == 1 and m != 1:
      x = sum_axis_by_halves(x, i)
  return x


def _bmm(a: Array, b: Array, preferred_element_type=None) -> Array:
  """a [b, h, m, k] x b [b, h, k, n] -> [b, h, m, n]: both operands row-major."""
  return jax.lax.dot_general(a, b, (((3,), (2,)), ((0, 1), (0, 1))), preferred_element_type=preferred_element_type)


def _pinned(x: Array) -> Array:
  """Materialises `x` in the layout it has (an optimization barrier), so that
  XLA:CPU does not fold the surrounding transpose into the next dot."""
  return jax.lax.optimization_barrier(x)


def attention(
  query: Array,
  key: Array,
  value: Array,
  bias: Optional[Array] = None,
  mask: Optional[Array] = None,
  *,
  is_causal: bool = False,
  float32_logits: bool = True,
) -> Array:
  """softmax(q k^T + bias, masked) v, unscaled; q [b, q, heads, d], k and v
  [b, k, heads, d] -> [b, q, heads, d] in the value's dtype.

  `mask` is boolean (True: may attend) or additive (float). Logits in float32
  when `float32_logits`; the softmax is always float32. The backward pass
  keeps the [b, h, q, k] softmax weights as its residual, so do not use it
  under rematerialisation (remat policies cannot see inside it).
  """
  if is_causal:
    mask = masking.with_causal(mask, query.shape[1], key.shape[1])
  return _attention(query, key, value, bias, mask, bool(float32_logits))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(query, key, value, bias, mask, float32_logits):
  return _attention_fwd(query, key, value, bias, mask, float32_logits)[0]


def _attention_fwd(query, key, value, bias, mask, float32_logits):
  logits_dtype = jnp.float32 if float32_logits else query.dtype
  q_h = _pinned(jnp.transpose(query, (0, 2, 1, 3)))  # [b, h, q, d]
  k_t = _pinned(jnp.transpose(key, (0, 2, 3, 1)))  # [b, h, d, k]
  v_h = _pinned(jnp.transpose(value, (0, 2, 1, 3)))  # [b, h, k, d]
  logits = _bmm(q_h, k_t, logits_dtype)
  if bias is not None:
    logits = logits + bias.astype(logits_dtype)
  logits = masking.apply_mask(logits, mask)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  out = _pinned(_bmm(probs.astype(value.dtype), v_h))  # [b, h, q, d]
  return jnp.transpose(out, (0, 2, 1, 3)), (q_h, k_t, v_h, bias, mask, probs)


def _attention_bwd(float32_logits, residuals, d_out):
  q_h, k_t, v_h, bias, mask, probs = residuals
  f32 = jnp.float32
  logits_dtype = f32 if float32_logits else q_h.dtype
  d_out = d_out.astype(v_h.dtype)
  do_h = _pinned(jnp.transpose(d_out, (0, 2, 1, 3)))  # [b, h, q, d]
  do_t = _pinned(jnp.transpose(d_out, (0, 2, 3, 1)))  # [b, h, d, q]
  v_t = _pinned(jnp.swapaxes(v_h, 2, 3))  # [b, h, d, k]
  q_t = _pinned(jnp.swapaxes(q_h, 2, 3))  # [b, h, d, q]
  k_h = _pinned(jnp.swapaxes(k_t, 2, 3))  # [b, h, k, d]
  d_probs = _bmm(do_h, v_t, f32)  # [b, h, q, k]
  # dV and dK are computed transposed ([b, h, d, k] = [d, q] x [q, k]), the
  # form that keeps the [q, k] block row-major, and transposed back after.
  dv_t = _pinned(_bmm(do_t, probs.astype(v_h.dtype), f32))
  d_logits = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
  if mask is not None and mask.dtype == jnp.bool_:  # additive masks: masked weights are 0 already
    d_logits = jnp.where(mask, d_logits, 0.0)
  ds = d_logits.astype(logits_dtype)
  dq = _pinned(_bmm(ds, k_h.astype(logits_dtype), f32))  # [b, h, q, d]
  dk_t = _pinned(_bmm(q_t.astype(logits_dtype), ds, f32))  # [b, h, d, k]
  d_bias = None
  if bias is not None:
    d_bias = _sum_to_shape(d_logits.astype(logits_dtype), bias.shape).astype(bias.dtype)
  d_query = jnp.transpose(dq, (0, 2, 1, 3)).astype(q_h.dtype)
  d_key = jnp.transpose(dk_t, (0, 3, 1, 2)).astype(k_t.dtype)
  d_value = jnp.transpose(dv_t, (0, 3, 1, 2)).astype(v_h.dtype)
  return d_query, d_key, d_value, d_bias, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# --------------------------------------------------------------------------
# Relative position bias gather
# --------------------------------------------------------------------------


def relpos_gather(table: Array, buckets: Array) -> Array:
  """table [heads, num_buckets], buckets int [b, q, k] -> [b, heads, q, k].

  Gathers scalars from the flattened table at head * num_buckets + bucket,
  so that the backward pass scatters from the [b, h, q, k] gradient as it
  is, with no transposed copy of it.
  """
  heads, num_buckets = table.shape
  offsets = (np.arange(heads, dtype=np.int32) * num_buckets)[None, :, None, None]
  return jnp.take(table.reshape(-1), buckets[:, None] + offsets, axis=0)


# --------------------------------------------------------------------------
# Argmax and means
# --------------------------------------------------------------------------


def _argmax_block(vocab_size: int) -> Optional[int]:
  """The divisor of `vocab_size` in [16, 1024] nearest 128 (the smaller on a tie), or None."""
  divisors = [b for b in range(16, min(1024, vocab_size - 1) + 1) if vocab_size % b == 0]
  return min(divisors, key=lambda b: (abs(b - 128), b)) if divisors else None


def argmax(x: Array) -> Array:
  """jnp.argmax(x, axis=-1) for x without NaNs, in two levels (ties go to the
  lowest index, as argmax's).

  The last axis is cut into blocks: a plain max per block, the argmax over
  the block maxima, then the argmax inside the chosen block only. The first
  block whose maximum is the overall maximum holds the first position of that
  maximum. With NaNs the index may differ from argmax's. Falls back to
  jnp.argmax when the axis has no usable divisor.
  """
  vocab = x.shape[-1]
  block = _argmax_block(vocab)
  if block is None:
    return jnp.argmax(x, axis=-1)
  blocks = x.reshape(x.shape[:-1] + (vocab // block, block))
  first_block = jnp.argmax(jnp.max(blocks, axis=-1), axis=-1)
  chosen = jnp.take_along_axis(blocks, first_block[..., None, None], axis=-2)[..., 0, :]
  return first_block * block + jnp.argmax(chosen, axis=-1)


def mean(x: Array, axes: Sequence[int]) -> Array:
  """jnp.mean(x, axes) (equal up to float rounding): over trailing dims the
  plain mean, over other dims a contraction with a block of 1/n at HIGHEST
  precision (full float32 products)."""
  axes = tuple(sorted(a % x.ndim for a in axes))
  if axes == tuple(range(x.ndim - len(axes), x.ndim)):
    return jnp.mean(x, axis=axes)
  sizes = tuple(x.shape[a] for a in axes)
  return jnp.tensordot(
    jnp.full(sizes, 1.0 / math.prod(sizes), x.dtype),
    x,
    axes=(tuple(range(len(axes))), axes),
    precision=jax.lax.Precision.HIGHEST,
  )

"""Attention masks as every attention implementation applies them.

Boolean masks select (True: may attend); additive float masks (0 or a large
negative, see `t5lite.kernels.xla_cpu.fold_mask_into_bias`) are added.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np


def large_negative(dtype: Any) -> jax.Array:
  """-0.7 * the dtype's largest finite value: the constant jax.nn.dot_product_attention
  uses for masked logits, so that every implementation agrees even on fully
  masked rows (uniform weights)."""
  return jnp.asarray(-0.7 * float(jnp.finfo(dtype).max), dtype)


def apply_mask(logits: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Masked logits: a boolean mask selects, a float (additive) mask is added.

  For logits narrower than float32 the additive mask's negative entries are
  first raised to that dtype's own large negative, so they do not round to -inf.
  """
  if mask is None:
    return logits
  if mask.dtype == jnp.bool_:
    return jnp.where(mask, logits, large_negative(logits.dtype))
  if jnp.dtype(logits.dtype) != jnp.float32:
    mask = jnp.maximum(mask, large_negative(logits.dtype).astype(mask.dtype))
  return logits + mask.astype(logits.dtype)


def with_causal(mask: Optional[jax.Array], q_len: int, k_len: int) -> jax.Array:
  """`mask` (boolean or additive, or None) with the causal triangle applied:
  query i sees keys 0..i."""
  tril = np.tril(np.ones((q_len, k_len), dtype=bool))[None, None]
  if mask is None or mask.dtype == jnp.bool_:
    return tril if mask is None else jnp.logical_and(mask, tril)
  return jnp.where(tril, mask, large_negative(mask.dtype))

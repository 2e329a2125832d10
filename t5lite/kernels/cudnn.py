"""cuDNN fused attention (the `cudnn_flash_jax` attention implementation).

A thin adapter over `jax.nn.dot_product_attention(implementation="cudnn")`:
T5's unit scale (the 1/sqrt(d_kv) lives in the query initialiser), the bias
and mask broadcast to the full [batch or 1, heads, q, k] shapes and the bias
cast to the activation dtype, as the cuDNN kernel wants them. The cuDNN
kernel differentiates the bias too (T5's relative position bias trains
through it). Where cuDNN rejects the call (a float32 activation, a head size
or shape it has no kernel for), one warning is logged and XLA's implementation
of the same function runs instead.
"""

from __future__ import annotations

import logging
from typing import Optional

import jax
import jax.numpy as jnp

logger = logging.getLogger(__name__)
_warned = False


def reset_fallback_warning() -> None:
  """Lets the next fallback from cuDNN to plain attention log its warning again
  (it is logged once per process); the attention check uses it to see whether a
  fallback happened while it lowered a program."""
  global _warned
  _warned = False


def attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  bias: Optional[jax.Array] = None,
  mask: Optional[jax.Array] = None,
  *,
  is_causal: bool = False,
  implementation: Optional[str] = "cudnn",
) -> jax.Array:
  """softmax(q k^T + bias, masked) v for q [b, q, heads, d], k and v [b, k, heads, d].

  `bias` [b or 1, heads or 1, q or 1, k] (any float dtype), `mask` boolean
  [b or 1, 1 or heads, q or 1, k] (True: may attend). Returns [b, q, heads, d]
  in the query's dtype. `implementation="xla"` runs XLA's version of the same
  function (what the CPU tests compare).
  """
  global _warned
  if implementation == "cudnn":
    if query.dtype in (jnp.bfloat16, jnp.float16):
      q_len, k_len = query.shape[1], key.shape[1]
      c_bias = None if bias is None else jnp.broadcast_to(bias, bias.shape[:2] + (q_len, k_len)).astype(query.dtype)
      c_mask = None if mask is None else jnp.broadcast_to(mask, mask.shape[:2] + (q_len, k_len))
      try:
        return jax.nn.dot_product_attention(
          query,
          key,
          value,
          bias=c_bias,
          mask=c_mask,
          scale=1.0,
          is_causal=is_causal,
          implementation="cudnn",
        )
      except (NotImplementedError, ValueError, RuntimeError) as e:  # unsupported shape/dtype
        reason = str(e)
    else:
      reason = f"{query.dtype} activations (cuDNN attention takes bfloat16 or float16)"
    if not _warned:
      logger.warning("cuDNN attention unavailable (%s); using XLA's implementation", reason)
      _warned = True
  return jax.nn.dot_product_attention(
    query, key, value, bias=bias, mask=mask, scale=1.0, is_causal=is_causal, implementation="xla"
  )

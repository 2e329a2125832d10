"""Multi-head attention, its masks and its KV cache.

`MultiHeadAttention` is T5's bias-free attention (with optional biases and
run-time query scaling for GPT-2-style models); it runs the implementation
its `attention` option resolves to on this backend (t5lite.kernels.backend):
the plain einsum below (`dot_product`), cuDNN fused attention
(t5lite.kernels.cudnn) or the XLA:CPU kernel (t5lite.kernels.xla_cpu, not under
rematerialisation, whose policies cannot see inside its backward pass). With
attention dropout the plain einsum runs on every backend. Masks are boolean [batch, 1, q, k] (True: may attend).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5lite.kernels import backend, cudnn, masking, xla_cpu
from t5lite.models import lora as lora_lib
from t5lite.models import params

Array = jax.Array
DType = Any


# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------


def _effective_segments(tokens: Array, segment_ids: Optional[Array]) -> Array:
  """Segment id per token with padding (token id 0) forced to segment 0."""
  valid = tokens > 0
  if segment_ids is None:
    return valid.astype(jnp.int32)
  return jnp.where(valid, segment_ids.astype(jnp.int32), 0)


def encoder_self_attention_mask(tokens: Array, segment_ids: Optional[Array] = None) -> Array:
  """Bidirectional mask within a segment; padding never seen by real tokens.

  Padding queries attend to the padding keys (which include themselves), so
  no row is entirely masked; real queries only see real keys of their own
  segment.
  """
  seg = _effective_segments(tokens, segment_ids)
  return seg[:, None, :, None] == seg[:, None, None, :]


def decoder_self_attention_mask(
  segment_ids: Optional[Array] = None, causal_attention: Optional[Array] = None, length: Optional[int] = None
) -> tuple[Optional[Array], bool]:
  """Returns (mask, is_causal) for decoder self-attention.

  Plain decoders return is_causal=True and only the same-segment mask (None
  when unpacked), leaving the triangle to the attention kernel. With
  `causal_attention` (1 on the prefix, seqio PrefixLM) tokens of the prefix
  also see each other bidirectionally; then the full mask is returned and
  is_causal=False.
  """
  same_segment = None
  if segment_ids is not None:
    seg = segment_ids.astype(jnp.int32)
    same_segment = seg[:, None, :, None] == seg[:, None, None, :]
  if causal_attention is None:
    return same_segment, True
  length = causal_attention.shape[-1] if length is None else length
  prefix = causal_attention.astype(bool)
  tril = np.tril(np.ones((length, length), dtype=bool))[None, None]
  mask = jnp.logical_or(tril, prefix[:, None, :, None] & prefix[:, None, None, :])
  if same_segment is not None:
    mask = mask & same_segment
  return mask, False


def encoder_decoder_attention_mask(
  encoder_tokens: Array,
  encoder_segment_ids: Optional[Array] = None,
  decoder_segment_ids: Optional[Array] = None,
) -> Array:
  """Decoder queries see the non-padding encoder tokens of their own segment.

  Decoder padding (segment 0) may look at everything, which keeps rows from
  being fully masked; the loss ignores those positions anyway.
  """
  enc_seg = _effective_segments(encoder_tokens, encoder_segment_ids)
  if decoder_segment_ids is None:
    return (enc_seg > 0)[:, None, None, :]
  dec_seg = decoder_segment_ids.astype(jnp.int32)
  same = dec_seg[:, None, :, None] == enc_seg[:, None, None, :]
  return same | (dec_seg == 0)[:, None, :, None]


# --------------------------------------------------------------------------
# Attention implementations
# --------------------------------------------------------------------------


def einsum_attention(
  query: Array,
  key: Array,
  value: Array,
  bias: Optional[Array] = None,
  mask: Optional[Array] = None,
  *,
  is_causal: bool = False,
  float32_logits: bool = True,
  dropout: Optional[Callable[[Array], Array]] = None,
) -> Array:
  """The plain (`dot_product`) attention: unscaled softmax(q k^T + bias) v with einsums.

  query [b, q, heads, d], key and value [b, k, heads, d] -> [b, q, heads, d]
  in the value's dtype. `mask` is boolean (True: may attend) or additive
  (float: 0 or a large negative). Logits are accumulated in float32 when
  `float32_logits`; the softmax is always float32. `dropout`, if given, is
  applied to the attention weights. Autodiff gives the backward pass.
  """
  if is_causal:
    mask = masking.with_causal(mask, query.shape[1], key.shape[1])
  logits_dtype = jnp.float32 if float32_logits else query.dtype
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=logits_dtype)
  if bias is not None:
    logits = logits + bias.astype(logits_dtype)
  logits = masking.apply_mask(logits, mask)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value)


# --------------------------------------------------------------------------
# Attention module and KV cache
# --------------------------------------------------------------------------


def _cache_layout_key(key: Array) -> Array:
  """[b, len, heads, kv] -> the cache's key layout [b, heads, kv, len]."""
  return jnp.transpose(key, (0, 2, 3, 1))


def _cache_layout_value(value: Array) -> Array:
  """[b, len, heads, kv] -> the cache's value layout [b, heads, len, kv]."""
  return jnp.transpose(value, (0, 2, 1, 3))


def _cache_shape_key(shape: Sequence[int]) -> tuple[int, ...]:
  return (shape[0], shape[2], shape[3], shape[1])


def _cache_shape_value(shape: Sequence[int]) -> tuple[int, ...]:
  return (shape[0], shape[2], shape[1], shape[3])


def _fold_rows(x: Array, fold: int, cache_rows: int) -> Array:
  """A bias or mask [rows | cache_rows | 1, h, q, k] made broadcastable to the
  folded logits [cache_rows, h, fold, q, k], where rows = cache_rows * fold."""
  if fold > 1 and x.shape[0] == cache_rows * fold:
    return jnp.moveaxis(x.reshape((cache_rows, fold) + x.shape[1:]), 1, 2)
  return x[:, :, None]


class MultiHeadAttention(nn.Module):
  """Multi-head attention, bias-free as in T5 by default.

  Kernels: query/key/value [d_model, heads, kv] ('embed','heads','kv'), out
  [heads, kv, d_model] ('heads','kv','embed'). With `use_bias` (GPT-2, BERT)
  zero-initialised query_bias/key_bias/value_bias [heads, kv] ('heads','kv')
  and out_bias [d_model] ('embed'). `scale_logits=False` (T5): the query init
  is scaled by 1/sqrt(d_kv) and the dot product is left unscaled.
  `scale_logits=True` (Vaswani et al. 2017, GPT-2): queries are multiplied by
  d_kv**-0.5 after the projection and its bias, before any attention
  implementation or the decode cache sees them, and the query init is not
  pre-scaled. With `lora` (t5lite.models.lora.LoraConfig), the kernels it
  selects get low-rank adapters `{kernel}_lora_a` / `{kernel}_lora_b`.
  """

  num_heads: int
  head_dim: int
  dtype: DType = jnp.float32
  dropout_rate: float = 0.0
  implementation: str = "auto"  # an `attention` option value (t5lite.kernels.backend)
  float32_logits: bool = True
  saves_weights_ok: bool = True  # False under remat: the XLA:CPU kernel's backward keeps the weights
  # Autoregressive decoding with a KV cache ('cache' collection): see below.
  decode: bool = False
  cross_attention: bool = False
  use_bias: bool = False
  scale_logits: bool = False
  lora: Optional[lora_lib.LoraConfig] = None

  @nn.compact
  def __call__(
    self,
    inputs_q: Array,
    inputs_kv: Optional[Array],
    bias: Optional[Array] = None,
    mask: Optional[Array] = None,
    *,
    is_causal: bool = False,
    deterministic: bool = True,
    decode_index: Optional[Array] = None,
  ) -> Array:
    """Attention of `inputs_q` [b, q, d] over `inputs_kv` [b, k, d].

    With `decode=True` the module keeps a 'cache' collection (apply with
    mutable=['cache']). The first call, made while the collection does not
    hold this module's entries yet, computes attention as usual and
    creates them: for self-attention zero `cached_key`/`cached_value` of
    the call's full length [b, max_len, heads, kv]; for cross-attention
    (`cross_attention=True`) the keys and values of `inputs_kv` (the
    encoder output), computed once per input. Later calls: self-attention
    writes the chunk's keys and values at cache slots [decode_index,
    decode_index + q) and attends over the whole cache (`bias` and `mask`
    must then cover [q, max_len] and hide slots not written yet);
    cross-attention reads its cached keys and values (`inputs_kv` may be
    None).
    """
    implementation = backend.resolve_attention(self.implementation, self.dtype)
    d_model = inputs_q.shape[-1]
    d_kv_in = d_model if inputs_kv is None else inputs_kv.shape[-1]
    h, k = self.num_heads, self.head_dim
    qkv_init = params.kernel_init(in_axis=0, out_axis=(1, 2))
    q_init = qkv_init if self.scale_logits else qkv_init.scaled(k**-0.5)
    wq = params.param(self, "query", q_init, (d_model, h, k), ("embed", "heads", "kv"))
    wk = params.param(self, "key", qkv_init, (d_kv_in, h, k), ("embed", "heads", "kv"))
    wv = params.param(self, "value", qkv_init, (d_kv_in, h, k), ("embed", "heads", "kv"))
    wo = params.param(
      self, "out", params.kernel_init(in_axis=(0, 1), out_axis=2), (h, k, d_model), ("heads", "kv", "embed")
    )
    if self.use_bias:
      bq, bk, bv = (
        params.param(self, f"{n}_bias", params.zeros_init, (h, k), ("heads", "kv")) for n in ("query", "key", "value")
      )
      bo = params.param(self, "out_bias", params.zeros_init, (d_model,), ("embed",))
    else:
      bq = bk = bv = bo = None
    in_axes, out_axes = ("embed", "heads", "kv"), ("heads", "kv", "embed")
    aq, ak, av = (
      lora_lib.adapter(self, self.lora, n, w.shape, in_axes, 1, deterministic)
      for n, w in (("query", wq), ("key", wk), ("value", wv))
    )
    ao = lora_lib.adapter(self, self.lora, "out", wo.shape, out_axes, 2, deterministic)
    wq, wk, wv, wo = (wq, bq, aq), (wk, bk, ak), (wv, bv, av), (wo, bo, ao)

    dt = self.dtype
    xq = inputs_q.astype(dt)
    axes = ("batch", "length", "heads", "kv")
    q = self._project(xq, wq)
    if self.scale_logits:
      q = q * jnp.asarray(k**-0.5, dt)
    q = nn.with_logical_constraint(q, axes)
    if self.decode:
      cached = self._cached_attention(q, inputs_q, inputs_kv, wk, wv, bias, mask, decode_index)
      if cached is not None:
        return self._project_out(cached, wo)
    if inputs_kv is None:
      raise ValueError("inputs_kv is required unless a decode cache holds the keys and values")
    xkv = xq if inputs_kv is inputs_q else inputs_kv.astype(dt)
    key = nn.with_logical_constraint(self._project(xkv, wk), axes)
    value = nn.with_logical_constraint(self._project(xkv, wv), axes)
    if self.decode:  # the first call: create the cache entries
      if self.cross_attention:
        self.variable("cache", "cross_key", lambda: _cache_layout_key(key))
        self.variable("cache", "cross_value", lambda: _cache_layout_value(value))
      else:
        self.variable("cache", "cached_key", jnp.zeros, _cache_shape_key(key.shape), key.dtype)
        self.variable("cache", "cached_value", jnp.zeros, _cache_shape_value(value.shape), value.dtype)

    use_dropout = self.dropout_rate > 0.0 and not deterministic
    if not use_dropout and implementation == "cudnn_flash_jax":
      out = cudnn.attention(q, key, value, bias, mask, is_causal=is_causal)
    elif not use_dropout and implementation == "cpu_dot_product" and self.saves_weights_ok:
      out = xla_cpu.attention(q, key, value, bias, mask, is_causal=is_causal, float32_logits=self.float32_logits)
    else:  # 'dot_product', and attention dropout on every backend (the kernels have none)
      drop = (lambda w: nn.Dropout(self.dropout_rate)(w, deterministic=False)) if use_dropout else None
      out = einsum_attention(
        q, key, value, bias, mask, is_causal=is_causal, float32_logits=self.float32_logits, dropout=drop
      )
    return self._project_out(out, wo)

  def _project(self, x: Array, weights: tuple, in_dims: int = 1) -> Array:
    """x @ kernel (+ bias) (+ the LoRA adapter's output) in the activation dtype;
    `weights` is (kernel, bias or None, lora_lib.Adapter or None)."""
    kernel, bias, adapter = weights
    y = params.dense(x, kernel.astype(self.dtype), in_dims=in_dims)
    if adapter is not None:
      y = y + adapter(x, in_dims, self.dtype)
    return y if bias is None else y + bias.astype(self.dtype)

  def _project_out(self, out: Array, wo: tuple) -> Array:
    """Attention output [b, q, heads, kv] -> [b, q, d_model] through the 'out' kernel (and bias)."""
    out = nn.with_logical_constraint(out.astype(self.dtype), ("batch", "length", "heads", "kv"))
    y = self._project(out, wo, in_dims=2)
    return nn.with_logical_constraint(y, ("batch", "length", "embed"))

  def _cached_attention(self, q, inputs_q, inputs_kv, wk, wv, bias, mask, decode_index) -> Optional[Array]:
    """Attention against the decode cache, or None when the cache does not
    exist yet (the first call, which creates it).

    The cache keeps keys as [b, heads, kv, len] and values as [b, heads,
    len, kv], the layouts XLA's batched matmuls read without a transpose
    (with the [b, len, heads, kv] layout of training every step copied each
    cross-attention's encoder keys and values). Cross-attention: when there
    are more query rows than cache rows (beam search: row b * beams + k is
    beam k of example b), the beams of an example are folded into extra
    query positions of its single copy of the encoder keys and values.
    """
    dt = self.dtype
    if self.cross_attention:
      if not self.has_variable("cache", "cross_key"):
        return None
      k_t = self.get_variable("cache", "cross_key")
      v = self.get_variable("cache", "cross_value")
    else:
      if not self.has_variable("cache", "cached_key"):
        return None
      if decode_index is None:
        raise ValueError("decode_index is required when decoding from a cache")
      xkv = inputs_q.astype(dt)
      key = self._project(xkv, wk)
      value = self._project(xkv, wv)
      cached_key = self.variable("cache", "cached_key")
      cached_value = self.variable("cache", "cached_value")
      if key.shape[1] > cached_value.value.shape[2]:
        raise ValueError(f"a chunk of {key.shape[1]} positions does not fit a cache of {cached_value.value.shape[2]}")
      idx = jnp.asarray(decode_index, jnp.int32)
      zero = jnp.int32(0)
      cached_key.value = nn.with_logical_constraint(
        jax.lax.dynamic_update_slice(
          cached_key.value, _cache_layout_key(key).astype(cached_key.value.dtype), (zero, zero, zero, idx)
        ),
        ("batch", "heads", "kv", "length"),
      )
      cached_value.value = nn.with_logical_constraint(
        jax.lax.dynamic_update_slice(
          cached_value.value, _cache_layout_value(value).astype(cached_value.value.dtype), (zero, zero, idx, zero)
        ),
        ("batch", "heads", "length", "kv"),
      )
      k_t, v = cached_key.value, cached_value.value
    rows, q_len = q.shape[0], q.shape[1]
    fold = rows // k_t.shape[0]
    if fold * k_t.shape[0] != rows:
      raise ValueError(f"{rows} query rows do not fold onto {k_t.shape[0]} cache rows")
    qf = q.reshape((k_t.shape[0], fold * q_len) + q.shape[2:])
    logits_dtype = jnp.float32 if self.float32_logits else qf.dtype
    logits = jnp.einsum("bqhd,bhdk->bhqk", qf, k_t.astype(qf.dtype), preferred_element_type=logits_dtype)
    if bias is not None or mask is not None:
      logits = logits.reshape(logits.shape[:2] + (fold, q_len, logits.shape[-1]))
      if bias is not None:  # [b or 1 or rows, h, q, k]
        logits = logits + _fold_rows(bias, fold, k_t.shape[0]).astype(logits_dtype)
      if mask is not None:
        logits = masking.apply_mask(logits, _fold_rows(mask, fold, k_t.shape[0]))
      logits = logits.reshape(logits.shape[:2] + (fold * q_len, logits.shape[-1]))
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights.astype(v.dtype), v)
    return out.reshape((rows, q_len) + out.shape[2:])


def decode_self_attention_inputs(
  module: nn.Module,
  relpos: Optional[nn.Module],
  valid: Array,
  decode_index: Array,
  bidirectional_chunk: bool = False,
) -> tuple[Array, Array]:
  """(bias, mask) of a decoder chunk against the whole KV cache.

  Called from a decoder's compact `__call__` in decode mode once its cache
  exists. The chunk's queries sit at cache slots [decode_index,
  decode_index + q), q = valid.shape[1]; `valid` [b, q] says which of the
  chunk's positions are real (False for left padding of a prompt). The
  module's cache entry `key_valid` [b, max_len] records that for every slot
  written so far. A query sees the written, valid slots up to its own
  (all of the chunk's slots with `bidirectional_chunk`, for a prefix-LM
  prompt). Relative positions are slot differences, so left padding shifts
  nothing. The bias is None without a `relpos` module (absolute positions).
  """
  key_valid = module.variable("cache", "key_valid")
  idx = jnp.asarray(decode_index, jnp.int32)
  key_valid.value = jax.lax.dynamic_update_slice(key_valid.value, valid.astype(bool), (jnp.int32(0), idx))
  max_len = key_valid.value.shape[1]
  q_len = valid.shape[1]
  q_pos = idx + jnp.arange(q_len, dtype=jnp.int32)
  k_pos = jnp.arange(max_len, dtype=jnp.int32)
  visible = k_pos[None, :] <= q_pos[:, None]
  if bidirectional_chunk:
    visible = visible | (k_pos < idx + q_len)[None, :]
  mask = visible[None, None] & key_valid.value[:, None, None, :]
  bias = None if relpos is None else relpos(q_len, max_len, q_pos[None], k_pos[None])
  return bias, mask


def decode_positions(module: nn.Module, decode_index: Array, q_len: int) -> Array:
  """Absolute positions int32 [b, q_len] of a decoder chunk at cache slots [decode_index, decode_index + q_len).

  A token's position is the number of valid slots before it in the module's
  `key_valid` cache entry (call after `decode_self_attention_inputs` has
  written the chunk's validity), so a left-padded prompt counts from its first
  real token, as Hugging Face's generate (position_ids = cumsum(attention_mask) - 1).
  """
  key_valid = module.get_variable("cache", "key_valid").astype(jnp.int32)
  before = jnp.cumsum(key_valid, axis=1) - key_valid  # valid slots strictly before each slot
  idx = jnp.asarray(decode_index, jnp.int32)
  return jax.lax.dynamic_slice_in_dim(before, idx, q_len, axis=1)

"""Tests of t5lite.models.attention: the plain attention against numpy, masks, parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t5lite.kernels import cudnn
from t5lite.models import attention
from t5lite.models import params as params_lib


def _qkv(seed, b=2, q=5, k=7, h=3, d=4, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  mk = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # noqa: E731
  return mk(b, q, h, d), mk(b, k, h, d), mk(b, k, h, d), rng


def test_einsum_attention_matches_numpy_reference():
  q, k, v, rng = _qkv(3)
  bias = jnp.asarray(rng.normal(size=(1, 3, 5, 7)), jnp.float32)
  mask = jnp.asarray(rng.random((2, 1, 5, 7)) > 0.3)
  mask = mask.at[:, :, :, 0].set(True)
  out = attention.einsum_attention(q, k, v, bias, mask)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) + bias  # no 1/sqrt(d) scaling in T5
  logits = np.where(mask, logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  np.testing.assert_allclose(out, np.einsum("bhqk,bkhd->bqhd", w, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_adapter_equals_einsum_on_cpu(causal):
  q, k, v, rng = _qkv(4, q=6, k=6)
  bias = jnp.asarray(rng.normal(size=(2, 3, 6, 6)), jnp.float32)
  mask = jnp.asarray(rng.random((2, 1, 6, 6)) > 0.4)
  mask = mask.at[:, :, :, 0].set(True)
  # jit: one compile is cheaper on CPU than compiling every op eagerly.
  both = jax.jit(
    lambda *args: (
      attention.einsum_attention(*args, is_causal=causal),
      cudnn.attention(*args, is_causal=causal, implementation="xla"),
    )
  )
  a, b = both(q, k, v, bias, mask)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Fully masked rows give the same (uniform) answer in both paths.
  a, b = both(q, k, v, bias, jnp.zeros((2, 1, 6, 6), bool))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_attention_param_axes_and_query_scaling():
  d_model, heads, d_kv = 256, 4, 64
  x = jnp.zeros((1, 2, d_model))
  mha = attention.MultiHeadAttention(num_heads=heads, head_dim=d_kv)
  boxed = mha.init(jax.random.key(0), x, x)
  axes = params_lib.logical_axes_tree(boxed)["params"]
  assert axes == {
    "query": ("embed", "heads", "kv"),
    "key": ("embed", "heads", "kv"),
    "value": ("embed", "heads", "kv"),
    "out": ("heads", "kv", "embed"),
  }
  p = nn.unbox(boxed)["params"]
  # fan-in variance scaling; the query additionally carries 1/sqrt(d_kv).
  np.testing.assert_allclose(np.std(p["key"]), 1 / np.sqrt(d_model), rtol=0.03)
  np.testing.assert_allclose(np.std(p["query"]), 1 / np.sqrt(d_model * d_kv), rtol=0.03)
  np.testing.assert_allclose(np.std(p["out"]), 1 / np.sqrt(heads * d_kv), rtol=0.03)


def test_masks():
  tokens = jnp.asarray([[5, 6, 7, 8, 0]])
  seg = jnp.asarray([[1, 1, 2, 2, 0]])
  enc = attention.encoder_self_attention_mask(tokens, seg)[0, 0]
  want = np.array([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], bool)
  np.testing.assert_array_equal(enc, want)
  unpacked = attention.encoder_self_attention_mask(tokens)[0, 0]
  np.testing.assert_array_equal(unpacked[:4, :4], np.ones((4, 4), bool))
  assert not unpacked[:4, 4].any()

  mask, causal = attention.decoder_self_attention_mask(None)
  assert mask is None and causal
  mask, causal = attention.decoder_self_attention_mask(seg)
  assert causal
  np.testing.assert_array_equal(mask[0, 0], want | (np.asarray(seg[0])[:, None] == np.asarray(seg[0])[None]))

  # Prefix LM: positions 0-1 form the prefix of a 4-token sequence.
  prefix = jnp.asarray([[1, 1, 0, 0]])
  mask, causal = attention.decoder_self_attention_mask(None, prefix)
  assert not causal
  np.testing.assert_array_equal(mask[0, 0], np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], bool))

  dec_seg = jnp.asarray([[1, 2, 2, 0]])
  cross = attention.encoder_decoder_attention_mask(tokens, seg, dec_seg)[0, 0]
  np.testing.assert_array_equal(
    cross, np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
  )
  np.testing.assert_array_equal(attention.encoder_decoder_attention_mask(tokens)[0, 0, 0], [1, 1, 1, 1, 0])

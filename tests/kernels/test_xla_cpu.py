"""Tests of t5lite.kernels.xla_cpu: every XLA:CPU formulation equals the plain one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite.kernels import xla_cpu
from t5lite.models import attention


def _qkv(seed, b=2, q=5, k=7, h=3, d=4, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  mk = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # noqa: E731
  return mk(b, q, h, d), mk(b, k, h, d), mk(b, k, h, d), rng


@pytest.mark.parametrize("form", ["bool_mask", "shared_bias_additive_mask", "per_example_bias_folded", "causal"])
def test_fast_backward_matches_autodiff(form):
  """The hand-written attention VJP (head-major row-major matmuls, additive or
  boolean masks, batch-shared or per-example bias) against jax autodiff of the
  plain einsum path, and the forward values against each other."""
  q, k, v, rng = _qkv(7, q=6, k=6)
  shared = jnp.asarray(rng.normal(size=(1, 3, 6, 6)), jnp.float32)
  per_example = jnp.asarray(rng.normal(size=(2, 3, 6, 6)), jnp.float32)
  mask = jnp.asarray(rng.random((2, 1, 6, 6)) > 0.4).at[:, :, :, 0].set(True)
  causal = False
  if form == "bool_mask":
    bias, m = shared, mask
  elif form == "shared_bias_additive_mask":
    bias, m = xla_cpu.fold_mask_into_bias(shared, mask)
    assert bias.shape == (1, 3, 6, 6) and m.shape == (2, 1, 6, 6) and m.dtype == jnp.float32
  elif form == "per_example_bias_folded":
    bias, m = xla_cpu.fold_mask_into_bias(per_example, mask)
    assert bias.shape == (2, 3, 6, 6) and m is None
  else:
    bias, m, causal = shared, mask, True
  cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

  def loss(fast, q, k, v, bias):
    fn = xla_cpu.attention if fast else attention.einsum_attention
    out = fn(q, k, v, bias, m, is_causal=causal)
    return jnp.sum(out * cot), out

  grads = jax.jit(jax.grad(loss, argnums=(1, 2, 3, 4), has_aux=True), static_argnums=0)
  (g_fast, out_fast), (g_ref, out_ref) = grads(True, q, k, v, bias), grads(False, q, k, v, bias)
  np.testing.assert_allclose(out_fast, out_ref, rtol=1e-5, atol=1e-6)
  for name, a, b in zip(("query", "key", "value", "bias"), g_fast, g_ref):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
  # The shared bias' gradient is the sum over the batch of the per-example ones.
  if form == "shared_bias_additive_mask":
    per_row = jax.grad(lambda bb: loss(False, q, k, v, bb)[0])(jnp.broadcast_to(bias, (2, 3, 6, 6)))
    np.testing.assert_allclose(g_fast[3][0], per_row.sum(0), rtol=1e-4, atol=1e-5)


def test_sum_axis_by_halves_equals_sum():
  x = jnp.asarray(np.random.default_rng(8).normal(size=(7, 3, 5)), jnp.float32)
  for axis in range(3):
    np.testing.assert_allclose(xla_cpu.sum_axis_by_halves(x, axis), x.sum(axis, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vocab", [32128, 100, 257, 3])
def test_argmax_equals_argmax(vocab):
  rng = np.random.default_rng(vocab)
  # Few distinct values so that ties (also across blocks) are common.
  x = rng.integers(0, 4, size=(6, 5, vocab)).astype(np.float32)
  x[0, 0] = 0.0  # a row of ties: index 0
  x[1, 1] = -1.0
  x[1, 1, vocab - 1] = 5.0  # the maximum in the last block
  x[1, 2] = -np.inf
  x[1, 2, vocab // 2] = np.inf
  x[2, 3] = -np.inf  # all -inf: index 0
  got = np.asarray(jax.jit(xla_cpu.argmax)(x))
  want = np.asarray(jnp.argmax(x, axis=-1))
  np.testing.assert_array_equal(got, want)
  assert got[0, 0] == 0 and got[1, 1] == vocab - 1 and got[1, 2] == vocab // 2 and got[2, 3] == 0
  # With a long axis every random row has several tied maxima (values 0..3).
  assert vocab < 64 or all((x[i, j] == x[i, j].max()).sum() > 1 for i in range(3, 6) for j in range(5))


@pytest.mark.parametrize("shape,axes", [((256, 384), (0,)), ((4, 128, 6), (0, 1)), ((5, 7), (1,)), ((3, 130, 2), (1,))])
def test_mean_equals_jnp_mean(shape, axes):
  x = jnp.asarray(np.random.default_rng(len(shape)).normal(size=shape) ** 2 * 1e-3, jnp.float32)
  np.testing.assert_allclose(
    jax.jit(xla_cpu.mean, static_argnums=1)(x, axes), jnp.mean(x, axis=axes), rtol=1e-6, atol=0
  )


def test_relpos_gather_equals_plain_take_with_gradient():
  rng = np.random.default_rng(9)
  table = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
  buckets = jnp.asarray(rng.integers(0, 8, size=(2, 5, 6)), jnp.int32)
  cot = jnp.asarray(rng.normal(size=(2, 3, 5, 6)), jnp.float32)
  plain = lambda t: jnp.transpose(jnp.take(t, buckets, axis=1), (1, 0, 2, 3))  # noqa: E731
  np.testing.assert_array_equal(xla_cpu.relpos_gather(table, buckets), plain(table))
  g_cpu = jax.grad(lambda t: jnp.sum(xla_cpu.relpos_gather(t, buckets) * cot))(table)
  g_plain = jax.grad(lambda t: jnp.sum(plain(t) * cot))(table)
  np.testing.assert_allclose(g_cpu, g_plain, rtol=1e-5, atol=1e-6)

"""Tests of t5lite.models.layers: RMSNorm and the gated-GELU MLP (the stack is tested
through the models in test_t5.py and test_decoder_only.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from t5lite.models import layers
from t5lite.models import params as params_lib


def test_rms_norm_values_and_axes():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 8)) * 3, jnp.float32)
  norm = layers.RMSNorm()
  boxed = norm.init(jax.random.key(0), x)
  assert params_lib.logical_axes_tree(boxed) == {"params": {"scale": ("embed",)}}
  scale = jnp.arange(1.0, 9.0)
  y = norm.apply({"params": {"scale": scale}}, x)
  want = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
  y16 = layers.RMSNorm(dtype=jnp.bfloat16).apply({"params": {"scale": scale}}, x)
  assert y16.dtype == jnp.bfloat16


def test_gated_mlp_matches_formula():
  rng = np.random.default_rng(2)
  d, f = 6, 10
  p = {
    k: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32)
    for k, s in [("wi_0", (d, f)), ("wi_1", (d, f)), ("wo", (f, d))]
  }
  x = jnp.asarray(rng.normal(size=(2, 4, d)), jnp.float32)
  y = layers.GatedMlp(d_ff=f).apply({"params": p}, x)
  h0, h1 = np.asarray(x) @ p["wi_0"], np.asarray(x) @ p["wi_1"]
  gelu = 0.5 * h0 * (1 + np.tanh(np.sqrt(2 / np.pi) * (h0 + 0.044715 * h0**3)))
  np.testing.assert_allclose(y, (gelu * h1) @ p["wo"], rtol=1e-5, atol=1e-5)
  axes = params_lib.logical_axes_tree(jax.eval_shape(layers.GatedMlp(d_ff=f).init, jax.random.key(0), x))
  assert axes["params"] == {"wi_0": ("embed", "mlp"), "wi_1": ("embed", "mlp"), "wo": ("mlp", "embed")}

"""Tests of the decoder-only Transformer (t5lite.models.decoder_only).

As in test_t5.py, parameters come from numpy with shapes from
`jax.eval_shape`, forward passes are jitted and cached per config, and most
tests share one input shape (batch 2, length 8).
"""

import functools
import math
import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t5lite.models import decoder_only
from t5lite.models import params as params_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
VOCAB = 89
LEN = 8
TEST_CFG = dict(vocab_size=VOCAB, d_model=32, num_heads=2, d_kv=8, d_ff=48, num_layers=2)


def make_config(**overrides):
  return decoder_only.DecoderOnlyConfig(**{**TEST_CFG, **overrides})


def fake_params(abstract, seed=0):
  """Numpy stand-in for model.init: fan-in scaled normals, T5-like scales."""
  rng = np.random.default_rng(seed)

  def make(path, leaf, names):
    shape = leaf.shape
    core = [n for n in names if n != "layers"]
    cshape = [s for s, n in zip(shape, names) if n != "layers"]
    if core == ["embed"]:
      v = 1 + 0.2 * rng.standard_normal(shape)
    elif core == ["vocab", "embed"]:
      v = rng.standard_normal(shape)
    elif core == ["heads", "relpos_buckets"]:
      v = rng.uniform(-1, 1, shape)
    else:
      fan_in = cshape[0] if core[0] == "embed" else math.prod(cshape[:-1])
      v = rng.standard_normal(shape) / np.sqrt(fan_in)
      if path[-1].key == "query":
        v /= np.sqrt(cshape[-1])
    return jnp.asarray(v, jnp.float32)

  params = nn.unbox(abstract)["params"]
  return {"params": jax.tree_util.tree_map_with_path(make, params, params_lib.logical_axes_tree(abstract["params"]))}


@functools.cache
def jitted(cfg):
  return jax.jit(decoder_only.DecoderOnlyTransformer(cfg).apply, static_argnames=("enable_dropout",))


@pytest.fixture(scope="module")
def params():
  return fake_params(decoder_only.abstract_variables(make_config()))


def tokens(rng, *shape):
  return jnp.asarray(rng.integers(1, VOCAB, shape), jnp.int32)


def test_shapes_axes_and_preset_counts(params):
  x = tokens(np.random.default_rng(0), 2, LEN)
  logits = jitted(make_config())(params, x)
  assert logits.shape == (2, LEN, VOCAB) and logits.dtype == jnp.float32
  axes = params_lib.logical_axes_tree(decoder_only.abstract_variables(make_config()))["params"]
  assert set(axes) == {"token_embedder", "decoder"}
  assert axes["decoder"]["logits_dense"]["kernel"] == ("embed", "vocab")
  assert axes["decoder"]["relpos_bias"]["rel_embedding"] == ("heads", "relpos_buckets")
  assert "encoder_decoder_attention" not in axes["decoder"]["layers_0"]
  # tiny: embeddings + logits + relpos + final norm + 4 x (attention, MLP, 2 norms).
  d, f, hk = 128, 512, 4 * 32
  tiny = 2 * 32128 * d + 4 * 32 + d + 4 * (4 * d * hk + 3 * d * f + 2 * d)
  count = lambda name: params_lib.count_params(  # noqa: E731
    decoder_only.abstract_variables(decoder_only.decoder_only_config(name, scan_layers=True))
  )
  assert count("tiny") == tiny == 9_274_624
  assert abs(count("1b") - 1e9) / 1e9 < 0.01


def test_causal_without_prefix(params):
  x = tokens(np.random.default_rng(1), 2, LEN)
  changed = x.at[:, 4].set(x[:, 4] % (VOCAB - 1) + 1)
  a, b = jitted(make_config())(params, x), jitted(make_config())(params, changed)
  np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-5, atol=1e-5)
  assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-3


def test_prefix_lm_attention(params):
  x = tokens(np.random.default_rng(2), 2, LEN)
  prefix = jnp.asarray([[1, 1, 1, 0, 0, 0, 0, 0]] * 2, jnp.int32)
  fn = jitted(make_config())
  base = fn(params, x, decoder_causal_attention=prefix)
  # A later prefix token is visible to earlier prefix positions...
  in_prefix = fn(params, x.at[:, 2].set(x[:, 2] % (VOCAB - 1) + 1), decoder_causal_attention=prefix)
  assert np.abs(in_prefix[:, :2] - base[:, :2]).max() > 1e-3
  # ...but the causal part never sees the future.
  later = fn(params, x.at[:, 5].set(x[:, 5] % (VOCAB - 1) + 1), decoder_causal_attention=prefix)
  np.testing.assert_allclose(later[:, :5], base[:, :5], rtol=1e-5, atol=1e-5)
  assert np.abs(later[:, 5:] - base[:, 5:]).max() > 1e-3
  # Without the prefix feature, position 0 ignores position 2.
  plain = fn(params, x), fn(params, x.at[:, 2].set(x[:, 2] % (VOCAB - 1) + 1))
  np.testing.assert_allclose(plain[0][:, :2], plain[1][:, :2], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="allow_prefix_lm"):
    jitted(make_config(allow_prefix_lm=False))(params, x, decoder_causal_attention=prefix)


def test_packed_prefix_lm_matches_separate_examples_and_plain_attention(params):
  rng = np.random.default_rng(3)
  a, b = tokens(rng, 3), tokens(rng, 4)
  pad = lambda v: jnp.concatenate([v, jnp.zeros(LEN - v.shape[0], v.dtype)])  # noqa: E731
  packed = dict(
    decoder_input_tokens=jnp.stack([pad(jnp.concatenate([a, b]))] * 2),
    decoder_segment_ids=jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]] * 2),
    decoder_positions=jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0]] * 2),
    decoder_causal_attention=jnp.asarray([[1, 1, 0, 1, 1, 1, 0, 0]] * 2),
  )
  alone = dict(
    decoder_input_tokens=jnp.stack([pad(a), pad(b)]),
    decoder_causal_attention=jnp.asarray([[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]),
  )
  fn = jitted(make_config())
  logits, single = fn(params, **packed), fn(params, **alone)
  np.testing.assert_allclose(logits[0, :3], single[0, :3], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[0, 3:7], single[1, :4], rtol=1e-5, atol=1e-5)
  # The default on CPU (cpu_dot_product) against the plain einsum (dot_product).
  assert make_config().attention == "auto"
  plain = jitted(make_config(attention="dot_product"))
  np.testing.assert_allclose(plain(params, **packed), logits, rtol=1e-5, atol=1e-5)


def test_scan_with_remat_matches_unscanned(params):
  x = tokens(np.random.default_rng(4), 2, LEN)
  seg = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 2]] * 2)
  per_layer = [params["params"]["decoder"][f"layers_{i}"] for i in range(2)]
  decoder = {k: v for k, v in params["params"]["decoder"].items() if not k.startswith("layers_")}
  decoder["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
  stacked = {"params": {**params["params"], "decoder": decoder}}
  ref = jitted(make_config())(params, x, decoder_segment_ids=seg)
  out = jitted(make_config(scan_layers=True, remat_policy="dots_saveable"))(stacked, x, decoder_segment_ids=seg)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_config_validation_and_presets():
  with pytest.raises(ValueError, match="DecoderOnlyConfig.num_layers=0 must be an integer >= 1"):
    make_config(num_layers=0)
  with pytest.raises(
    ValueError, match="'cudnn'; valid values are \\('auto', 'dot_product', 'cudnn_flash_jax', 'cpu_dot_product'\\)"
  ):
    make_config(attention="cudnn")
  with pytest.raises(
    ValueError, match=r"unknown decoder-only preset 'huge'.*\['1b', 'base', 'moe_tiny', 'small', 'tiny'\]"
  ):
    decoder_only.decoder_only_config("huge")
  cfg = decoder_only.decoder_only_config("1b", remat_policy="minimal")
  assert (cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff) == (2048, 32, 64, 5120)


def test_gin_presets_match_python_presets():
  try:
    for name in decoder_only.DECODER_ONLY_PRESETS:
      gin.clear_config()
      gin.parse_config_file(str(REPO / "gin" / "models" / "decoder_only" / f"{name}.gin"))
      assert gin.get_configurable(decoder_only.DecoderOnlyConfig)() == decoder_only.decoder_only_config(name)
  finally:
    gin.clear_config()

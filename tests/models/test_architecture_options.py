"""Tests of the architecture options of TransformerConfig (t5lite.models.config) that
let the T5 blocks express the original T5 and GPT-2: mlp_activations, use_bias,
norm_type, learned absolute positions, scale_attention_logits, scale_tied_logits.

The defaults must leave T5 v1.1 bit-for-bit as it was: the parameter trees are
spelled out and the logits compared with numbers computed before the options
existed. Each option is checked against numpy, and the GPT-2-like decoder's
KV-cache decoding against its teacher-forced logits (left-padded prompts too).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t5lite import partitioning
from t5lite.models import attention, decoder_only, layers, t5
from t5lite.models import model as model_lib
from t5lite.models import params as params_lib

V = 61
# GPT-2's architecture at a tiny size; d_kv = 24 so that d_kv**-0.5 is not a power of two.
GPT2_LIKE = dict(
  vocab_size=V,
  d_model=48,
  num_heads=2,
  d_kv=24,
  d_ff=96,
  num_layers=2,
  norm_type="layernorm",
  mlp_activations=("gelu",),
  use_bias=True,
  position_embedding="absolute",
  max_position_embeddings=16,
  logits_via_embedding=True,
  scale_tied_logits=False,
  scale_attention_logits=True,
  layer_norm_epsilon=1e-5,
)


def _flat(tree):
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _perturbed(params, seed):
  """Params with non-zero biases and norm scales away from 1 (so that neither is a no-op)."""
  rng = np.random.default_rng(seed)

  def change(path, x):
    name = str(getattr(path[-1], "key", path[-1]))
    if name.endswith("bias"):
      return x + jnp.asarray(0.3 * rng.standard_normal(x.shape), jnp.float32)
    if name == "scale":
      return x * jnp.asarray(1 + 0.3 * rng.standard_normal(x.shape), jnp.float32)
    return x

  return jax.tree_util.tree_map_with_path(change, params)


def _gpt2_model(prefix_lm=False, **overrides):
  m = model_lib.DecoderOnlyModel(
    config=decoder_only.DecoderOnlyConfig(**{**GPT2_LIKE, **overrides}), prefix_lm=prefix_lm
  )
  lengths = {"inputs": 4, "targets": 4} if prefix_lm else {"targets": 8}
  return m, _perturbed(m.init_params(jax.random.key(3), m.input_shapes(1, lengths)), 4)


# --------------------------------------------------------------------------
# Defaults: T5 v1.1 unchanged
# --------------------------------------------------------------------------


def _layer_params(d, h, k, f, cross):
  attention_names = ["self_attention"] + (["encoder_decoder_attention"] if cross else [])
  out = {}
  for a in attention_names:
    out |= {f"{a}/query": (d, h, k), f"{a}/key": (d, h, k), f"{a}/value": (d, h, k), f"{a}/out": (h, k, d)}
  out |= {"mlp/wi_0": (d, f), "mlp/wi_1": (d, f), "mlp/wo": (f, d)}
  norms = ["pre_self_attention_layer_norm", "pre_mlp_layer_norm"] + (
    ["pre_cross_attention_layer_norm"] if cross else []
  )
  return out | {f"{n}/scale": (d,) for n in norms}


def _stack(name, num_layers, cross, d=128, h=4, k=32, f=512):
  out = {f"{name}/relpos_bias/rel_embedding": (h, 32), f"{name}/{name}_norm/scale": (d,)}
  for i in range(num_layers):
    out.update({f"{name}/layers_{i}/{n}": s for n, s in _layer_params(d, h, k, f, cross).items()})
  return out


def test_default_parameter_trees_are_unchanged():
  want_t5 = {
    "token_embedder/embedding": (32128, 128),
    **_stack("encoder", 2, cross=False),
    **_stack("decoder", 2, cross=True),
    "decoder/logits_dense/kernel": (128, 32128),
  }
  got = {n: tuple(x.shape) for n, x in _flat(nn.unbox(t5.abstract_variables(t5.t5_config("tiny"))["params"])).items()}
  assert got == want_t5
  want_dec = {
    "token_embedder/embedding": (32128, 128),
    **_stack("decoder", 4, cross=False),
    "decoder/logits_dense/kernel": (128, 32128),
  }
  abstract = decoder_only.abstract_variables(decoder_only.decoder_only_config("tiny"))
  got = {n: tuple(x.shape) for n, x in _flat(nn.unbox(abstract["params"])).items()}
  assert got == want_dec


# Logits of the 'tiny' presets (vocab 97) with numpy parameters, computed by the
# code before the architecture options existed: (sum, |sum|, logits[0, 0, :5], logits[1, -1, -5:]).
REFERENCE = {
  ("t5", False): (
    -85.78858537116321,
    923.0820769240963,
    [-0.8849735856056213, -0.4286661446094513, -0.505588948726654, 0.5593936443328857, 0.10935923457145691],
    [-1.465510606765747, -1.4378974437713623, 0.7684956789016724, 0.8269854187965393, 1.0672426223754883],
  ),
  ("t5", True): (
    -3.254726958395622,
    74.05467701144516,
    [-0.001784157706424594, -0.03134075552225113, 0.08014865964651108, -0.0326264351606369, -0.09028997272253036],
    [-0.15103977918624878, 0.01590401865541935, 0.08356666564941406, 0.03356729447841644, -0.12922362983226776],
  ),
  ("dec", False): (
    79.10880160110537,
    1330.3312342878198,
    [-1.0316243171691895, -1.3959546089172363, -0.2573317885398865, -0.7758637070655823, 1.6242272853851318],
    [0.4917246401309967, 0.16128994524478912, -1.322092056274414, -0.936165988445282, -0.25048768520355225],
  ),
  ("dec", True): (
    -2.5159526923537214,
    111.81721676371785,
    [-0.09788776934146881, 0.05446106195449829, -0.004267833195626736, 0.009691166691482067, 0.062294263392686844],
    [0.15641920268535614, 0.024000845849514008, -0.02207428216934204, -0.12920111417770386, 0.10310659557580948],
  ),
}


@pytest.mark.parametrize("family,tied", sorted(REFERENCE))
def test_default_logits_are_unchanged(family, tied):
  if family == "t5":
    module = t5.T5Transformer(t5.t5_config("tiny", vocab_size=97, logits_via_embedding=tied))
    example = t5.example_inputs()
  else:
    module = decoder_only.DecoderOnlyTransformer(
      decoder_only.decoder_only_config("tiny", vocab_size=97, logits_via_embedding=tied)
    )
    example = decoder_only.example_inputs()
  abstract = jax.eval_shape(lambda r: module.init(r, **example), jax.random.key(0))
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape) * 0.3, jnp.float32), nn.unbox(abstract))
  rng = np.random.default_rng(5)
  if family == "t5":
    enc = jnp.asarray(rng.integers(1, 97, (2, 7)), jnp.int32).at[1, 5:].set(0)
    dec = jnp.asarray(rng.integers(1, 97, (2, 6)), jnp.int32)
    logits = module.apply(params, enc, dec)
  else:
    logits = module.apply(params, jnp.asarray(rng.integers(1, 97, (2, 9)), jnp.int32))
  logits = np.asarray(logits, np.float64)
  total, abs_total, first, last = REFERENCE[family, tied]
  np.testing.assert_allclose(logits[0, 0, :5], first, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(logits[1, -1, -5:], last, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose([logits.sum(), np.abs(logits).sum()], [total, abs_total], rtol=1e-4)


# --------------------------------------------------------------------------
# The blocks against numpy
# --------------------------------------------------------------------------


def test_layer_norm_matches_numpy_with_a_mean_and_eps_near_the_variance():
  rng = np.random.default_rng(0)
  x = (3.0 + 0.01 * rng.standard_normal((2, 3, 8))).astype(np.float32)  # mean 3, variance ~1e-4
  eps = 1e-4
  scale = np.linspace(0.5, 2.0, 8).astype(np.float32)
  bias = np.linspace(-1.0, 1.0, 8).astype(np.float32)
  norm = layers.LayerNorm(eps)
  boxed = norm.init(jax.random.key(0), x)
  assert params_lib.logical_axes_tree(boxed) == {"params": {"scale": ("embed",), "bias": ("embed",)}}
  np.testing.assert_array_equal(nn.unbox(boxed)["params"]["scale"], np.ones(8))
  np.testing.assert_array_equal(nn.unbox(boxed)["params"]["bias"], np.zeros(8))
  y = norm.apply({"params": {"scale": scale, "bias": bias}}, x)
  x64 = x.astype(np.float64)
  mean = x64.mean(-1, keepdims=True)
  var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
  want = (x64 - mean) / np.sqrt(var + eps) * scale + bias
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
  assert layers.LayerNorm(eps, jnp.bfloat16).apply({"params": {"scale": scale, "bias": bias}}, x).dtype == jnp.bfloat16


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


NUMPY_ACTIVATIONS = {
  "gelu": _gelu_tanh,
  "gelu_exact": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2))),
  "relu": lambda x: np.maximum(x, 0),
  "silu": lambda x: x / (1 + np.exp(-x)),
  "linear": lambda x: x,
}


@pytest.mark.parametrize(
  "activations,use_bias",
  [
    (("relu",), False),
    (("gelu_exact",), True),
    (("gelu",), True),
    (("silu", "linear"), True),
    (("relu", "gelu", "linear"), False),
  ],
)
def test_mlp_matches_numpy(activations, use_bias):
  rng = np.random.default_rng(1)
  d, f = 6, 10
  x = (2.0 * rng.standard_normal((2, 4, d))).astype(np.float32)
  mlp = layers.MlpBlock(d_ff=f, activations=activations, use_bias=use_bias)
  boxed = jax.eval_shape(mlp.init, jax.random.key(0), x)
  names = ["wi"] if len(activations) == 1 else [f"wi_{i}" for i in range(len(activations))]
  want_axes = {n: ("embed", "mlp") for n in names} | {"wo": ("mlp", "embed")}
  if use_bias:
    want_axes |= {f"{n}_bias": ("mlp",) for n in names} | {"wo_bias": ("embed",)}
  assert params_lib.logical_axes_tree(boxed)["params"] == want_axes
  p = {
    n: (rng.standard_normal(s.shape) / (np.sqrt(s.shape[0]) if len(s.shape) == 2 else 2.0)).astype(np.float32)
    for n, s in nn.unbox(boxed)["params"].items()
  }
  y = mlp.apply({"params": p}, x)
  h = 1.0
  for n, act in zip(names, activations):
    pre = x.astype(np.float64) @ p[n] + (p[f"{n}_bias"] if use_bias else 0.0)
    h = h * NUMPY_ACTIVATIONS[act](pre)
  want = h @ p["wo"] + (p["wo_bias"] if use_bias else 0.0)
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_gelu_exact_and_gelu_tanh_differ():
  """The two GELU forms are told apart (a model mapped to the wrong one would be off)."""
  x = jnp.linspace(-4.0, 4.0, 81)[None, None, :, None]
  p = {"wi": jnp.ones((1, 1)), "wo": jnp.ones((1, 1))}
  exact = layers.MlpBlock(1, activations=("gelu_exact",)).apply({"params": p}, x)
  approx = layers.MlpBlock(1, activations=("gelu",)).apply({"params": p}, x)
  assert float(jnp.max(jnp.abs(exact - approx))) > 1e-4


@pytest.mark.parametrize("scale_logits", [False, True])
def test_attention_biases_and_scale_match_numpy(scale_logits):
  rng = np.random.default_rng(2)
  d, h, k = 8, 2, 24
  xq = rng.standard_normal((2, 3, d)).astype(np.float32)
  xkv = rng.standard_normal((2, 5, d)).astype(np.float32)
  mod = attention.MultiHeadAttention(h, k, implementation="dot_product", use_bias=True, scale_logits=scale_logits)
  boxed = jax.eval_shape(mod.init, jax.random.key(0), xq, xkv)
  axes = params_lib.logical_axes_tree(boxed)["params"]
  assert {n: axes[n] for n in ("query_bias", "key_bias", "value_bias", "out_bias")} == {
    "query_bias": ("heads", "kv"),
    "key_bias": ("heads", "kv"),
    "value_bias": ("heads", "kv"),
    "out_bias": ("embed",),
  }
  p = {n: (0.5 * rng.standard_normal(s.shape)).astype(np.float32) for n, s in nn.unbox(boxed)["params"].items()}
  y = mod.apply({"params": p}, xq, xkv)
  q = np.einsum("bld,dhk->blhk", xq, p["query"]) + p["query_bias"]
  key = np.einsum("bld,dhk->blhk", xkv, p["key"]) + p["key_bias"]
  value = np.einsum("bld,dhk->blhk", xkv, p["value"]) + p["value_bias"]
  logits = np.einsum("bqhk,bshk->bhqs", q, key) * (k**-0.5 if scale_logits else 1.0)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  want = np.einsum("bhqs,bshk,hkd->bqd", w, value, p["out"]) + p["out_bias"]
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_new_parameters_start_at_zero_and_the_query_init_is_not_prescaled():
  m, _ = _gpt2_model()
  params = _flat(m.init_params(jax.random.key(0), m.input_shapes(1, {"targets": 8})))
  biases = [n for n in params if n.endswith("bias")]
  assert len(biases) == 2 * 6 + 2 * 2 + 1  # attention 4 + mlp 2 per layer, 2 layer norms per layer, final norm
  for n in biases:
    np.testing.assert_array_equal(params[n], 0.0)
  axes = m.param_logical_axes(m.input_shapes(1, {"targets": 8}))
  assert axes["decoder"]["position_embedder"]["embedding"] == ("abspos", "embed")
  assert params["decoder/position_embedder/embedding"].shape == (16, 48)
  assert not any("relpos" in n or "logits_dense" in n for n in params)
  # Variance scaling on fan-in 48; pre-scaled by 24**-0.5 only without run-time scaling.
  unscaled = float(np.std(params["decoder/layers_0/self_attention/query"]))
  np.testing.assert_allclose(unscaled, 48**-0.5, rtol=0.1)
  m5, _ = _gpt2_model(scale_attention_logits=False)
  t5_style = _flat(m5.init_params(jax.random.key(0), m5.input_shapes(1, {"targets": 8})))
  np.testing.assert_allclose(
    float(np.std(t5_style["decoder/layers_0/self_attention/query"])), (48 * 24) ** -0.5, rtol=0.1
  )


@pytest.mark.parametrize("implementation", ["dot_product", "cpu_dot_product"])
def test_run_time_query_scale_equals_a_prescaled_query_kernel(implementation):
  m, params = _gpt2_model(attention=implementation)
  m_t5, _ = _gpt2_model(attention=implementation, scale_attention_logits=False)
  s = 24**-0.5

  def prescale(path, x):
    names = [str(getattr(p, "key", p)) for p in path]
    return x * s if names[-2:] in (["self_attention", "query"], ["self_attention", "query_bias"]) else x

  tokens = jnp.asarray(np.random.default_rng(5).integers(1, V, (2, 9)), jnp.int32)
  got = m.module.apply({"params": params}, tokens)
  want = m_t5.module.apply({"params": jax.tree_util.tree_map_with_path(prescale, params)}, tokens)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
  unscaled = m_t5.module.apply({"params": params}, tokens)
  assert float(jnp.max(jnp.abs(got - unscaled))) > 1e-2  # the scale matters for these inputs


# --------------------------------------------------------------------------
# Learned absolute positions and the GPT-2-like decoder
# --------------------------------------------------------------------------


def test_absolute_positions_are_added_to_the_token_embedding():
  """Moving row p of the position table onto the embedding of the token at p (and
  zeroing the table) gives the same logits; an untied output projection keeps the
  changed embedding rows out of the logits."""
  _, params = _gpt2_model()
  mu = decoder_only.DecoderOnlyTransformer(
    decoder_only.DecoderOnlyConfig(**{**GPT2_LIKE, "logits_via_embedding": False})
  )
  tokens = np.array([[3, 4, 5, 6]], np.int32)
  table = np.asarray(params["decoder"]["position_embedder"]["embedding"])
  kernel = jnp.asarray(np.random.default_rng(6).standard_normal((48, V)), jnp.float32)
  p1 = {**params, "decoder": {**params["decoder"], "logits_dense": {"kernel": kernel}}}
  emb = np.array(params["token_embedder"]["embedding"])
  emb[3:7] += table[:4]
  zero_table = {"position_embedder": {"embedding": jnp.zeros_like(table)}}
  p2 = {"token_embedder": {"embedding": jnp.asarray(emb)}, "decoder": {**p1["decoder"], **zero_table}}
  p3 = {**p1, "decoder": {**p1["decoder"], **zero_table}}
  a = mu.apply({"params": p1}, tokens)
  np.testing.assert_allclose(mu.apply({"params": p2}, tokens), a, rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(mu.apply({"params": p3}, tokens) - a))) > 1e-2  # without positions: other logits


def test_packed_positions_are_honoured():
  m, params = _gpt2_model()
  seq = np.array([[7, 8, 9, 10, 11, 0, 0, 0]], np.int32)
  segments = np.array([[1, 1, 1, 2, 2, 0, 0, 0]], np.int32)
  positions = np.array([[0, 1, 2, 0, 1, 0, 0, 0]], np.int32)
  packed = m.module.apply({"params": params}, seq, segments, positions)
  first = m.module.apply({"params": params}, seq[:, :3])
  second = m.module.apply({"params": params}, seq[:, 3:5])
  np.testing.assert_allclose(packed[0, :3], first[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 3:5], second[0], rtol=1e-5, atol=1e-5)
  unpositioned = m.module.apply({"params": params}, seq, segments)  # positions 3, 4 for the second segment
  assert float(jnp.max(jnp.abs(unpositioned[0, 3:5] - second[0]))) > 1e-2


def test_a_sequence_longer_than_the_position_table_is_refused():
  m, params = _gpt2_model()
  with pytest.raises(ValueError, match="17 positions does not fit .* max_position_embeddings=16"):
    m.module.apply({"params": params}, jnp.ones((1, 17), jnp.int32))
  m.module.apply({"params": params}, jnp.ones((1, 16), jnp.int32))  # the full table is fine
  opts = model_lib.DecodeOptions("greedy", max_decode_len=12, eos_id=-1)
  with pytest.raises(ValueError, match="17 positions does not fit .* max_position_embeddings=16"):
    m.predict_batch(params, jnp.ones((1, 5), jnp.int32), opts)  # 5 prompt slots + 12 decode slots


@pytest.mark.parametrize("prefix_lm,scan", [(False, False), (True, True)])
def test_gpt2_like_cache_decoding_equals_teacher_forcing_with_left_padding(prefix_lm, scan):
  m, params = _gpt2_model(prefix_lm=prefix_lm, scan_layers=scan)
  prompts = np.array([[5, 6, 7, 0], [9, 0, 0, 0], [3, 4, 5, 6], [0, 0, 0, 0]], np.int32)
  cont = np.random.default_rng(1).integers(2, V, (4, 5)).astype(np.int32)
  cache, start, offset = m.prefill(params, jnp.asarray(prompts), 5)
  step_fn = jax.jit(m.tokens_to_logits(params, offset))
  got = []
  for j in range(5):
    tok = start[:, None] if j == 0 else jnp.asarray(cont[:, j - 1 : j])
    logits, cache = step_fn(tok, cache, jnp.int32(j))
    got.append(np.asarray(logits))
  for r in range(4):
    p = prompts[r][prompts[r] > 0]
    inputs = np.concatenate([[0], p, cont[r][:-1]])[None].astype(np.int32)
    causal = (np.arange(inputs.shape[1]) <= len(p))[None].astype(np.int32) if prefix_lm else None
    full = m.module.apply({"params": params}, inputs, decoder_causal_attention=causal)[0]
    for j in range(5):
      np.testing.assert_allclose(got[j][r], full[len(p) + j], atol=5e-5, rtol=1e-5)


def test_gpt2_like_greedy_predict_batch_equals_recompute():
  m, params = _gpt2_model()
  prompts = np.array([[5, 6, 7], [9, 0, 0]], np.int32)
  opts = model_lib.DecodeOptions("greedy", max_decode_len=6, eos_id=-1)
  tokens, _, _ = jax.jit(m.predict_batch, static_argnums=2)(params, jnp.asarray(prompts), opts)
  for r in range(2):
    seq = [0] + [int(t) for t in prompts[r] if t > 0]
    for _ in range(6):
      logits = m.module.apply({"params": params}, jnp.asarray([seq], jnp.int32))
      seq.append(int(jnp.argmax(logits[0, -1])))
    np.testing.assert_array_equal(tokens[r], seq[-6:])


def test_encoder_decoder_with_absolute_positions_decodes_from_the_cache():
  cfg = t5.t5_config(
    "tiny", vocab_size=V, position_embedding="absolute", max_position_embeddings=12, norm_type="layernorm"
  )
  m = model_lib.EncoderDecoderModel(config=cfg)
  shapes = m.input_shapes(1, {"inputs": 8, "targets": 8})
  params = _perturbed(m.init_params(jax.random.key(0), shapes), 1)
  flat = _flat(params)
  assert flat["encoder/position_embedder/embedding"].shape == (12, 128)
  assert flat["decoder/position_embedder/embedding"].shape == (12, 128)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, V, (2, 7)).astype(np.int32)
  enc[1, 4:] = 0
  dec = rng.integers(2, V, (2, 6)).astype(np.int32)
  dec[:, 0] = 0
  full = m.module.apply({"params": params}, enc, dec)
  cache = m.init_decode_cache(params, jnp.asarray(enc), 6)
  step_fn = jax.jit(m.tokens_to_logits(params))
  for i in range(6):
    logits, cache = step_fn(jnp.asarray(dec[:, i : i + 1]), cache, jnp.int32(i))
    np.testing.assert_allclose(logits, full[:, i], atol=5e-5, rtol=1e-5)


# --------------------------------------------------------------------------
# The original T5: ReLU MLP, tied embeddings with the d_model**-0.5 output scale
# --------------------------------------------------------------------------


def test_original_t5_style_config_decodes_and_scales_tied_logits():
  cfg = t5.t5_config("tiny", vocab_size=V, mlp_activations=("relu",), logits_via_embedding=True)
  m = model_lib.EncoderDecoderModel(config=cfg)
  params = m.init_params(jax.random.key(2), m.input_shapes(1, {"inputs": 8, "targets": 8}))
  flat = _flat(params)
  assert "decoder/layers_0/mlp/wi" in flat and "decoder/layers_0/mlp/wi_0" not in flat
  assert not any("logits_dense" in n for n in flat)
  enc = np.random.default_rng(3).integers(2, V, (2, 7)).astype(np.int32)
  enc[0, 5:] = 0
  opts = model_lib.DecodeOptions("greedy", max_decode_len=5, eos_id=-1)
  tokens, _, _ = jax.jit(m.predict_batch, static_argnums=2)(params, jnp.asarray(enc), opts)
  dec = np.zeros((2, 5), np.int32)
  for i in range(5):
    step = np.argmax(np.asarray(m.module.apply({"params": params}, enc, dec)[:, i]), -1)
    np.testing.assert_array_equal(tokens[:, i], step)
    if i + 1 < 5:
      dec[:, i + 1] = step
  # scale_tied_logits=False (GPT-2) leaves out the d_model**-0.5 factor and nothing else.
  unscaled = t5.T5Transformer(
    t5.t5_config("tiny", vocab_size=V, mlp_activations=("relu",), logits_via_embedding=True, scale_tied_logits=False)
  )
  a = m.module.apply({"params": params}, enc, dec)
  b = unscaled.apply({"params": params}, enc, dec)
  np.testing.assert_allclose(b, a * math.sqrt(128), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# FLOPs, partitioning, bad values
# --------------------------------------------------------------------------


def test_flops_count_neither_the_position_table_nor_biases():
  gpt, _ = _gpt2_model()
  plain = model_lib.DecoderOnlyModel(
    config=decoder_only.DecoderOnlyConfig(**{**GPT2_LIKE, "use_bias": False, "position_embedding": "relative"})
  )
  lengths = {"targets": 8}
  assert gpt.flops_per_step(2, lengths) == plain.flops_per_step(2, lengths)
  per_layer = 4 * 48 * 2 * 24 + 2 * 48 * 96  # q, k, v, out and wi, wo
  attn = 4 * 2 * 24 * 2 * 8 * 8
  assert gpt.flops_per_step(2, lengths) == 3 * (2 * 2 * per_layer * 8 + attn) * 2


def test_the_position_axis_is_named_and_never_sharded():
  assert "abspos" in params_lib.LOGICAL_AXES
  for name, rules in partitioning.RULE_PRESETS.items():
    assert dict(rules).get("abspos", "missing") is None, name
  spec = partitioning.logical_to_spec(("abspos", "embed"), partitioning.get_rules("fsdp_tensor_parallel"))
  assert tuple(spec) == (None, "fsdp")


@pytest.mark.parametrize(
  "overrides,match",
  [
    (dict(mlp_activations=("gelu", "swish")), r"mlp_activations\[1\]='swish' is not one of the valid options"),
    (dict(mlp_activations=()), "mlp_activations is empty"),
    (dict(mlp_activations="relu"), r"mlp_activations='relu' must be a non-empty tuple .* e.g. \('relu',\)"),
    (dict(norm_type="batchnorm"), r"norm_type='batchnorm' is not one of the valid options \('rmsnorm', 'layernorm'\)"),
    (dict(position_embedding="rotary"), r"position_embedding='rotary' is not one of the valid options"),
    (dict(position_embedding="absolute"), r"max_position_embeddings=0 must be an integer >= 1"),
    (dict(max_position_embeddings=-1), r"max_position_embeddings=-1 must be an integer >= 0"),
    (dict(use_bias="yes"), r"use_bias='yes' must be True or False"),
    (dict(scale_tied_logits=1), r"scale_tied_logits=1 must be True or False"),
  ],
)
def test_bad_architecture_values_are_refused(overrides, match):
  with pytest.raises(ValueError, match=match):
    decoder_only.decoder_only_config("tiny", **overrides)
  with pytest.raises(ValueError, match=match):
    t5.t5_config("tiny", **overrides)


def test_a_list_of_activations_becomes_a_tuple():
  cfg = t5.t5_config("tiny", mlp_activations=["relu"])
  assert cfg.mlp_activations == ("relu",)
  assert hash(cfg) == hash(t5.t5_config("tiny", mlp_activations=("relu",)))

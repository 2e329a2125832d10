"""Tests of the T5 v1.1 encoder-decoder (t5lite.models.t5).

Most tests use numpy-made parameters shaped by `jax.eval_shape(model.init)`:
compiling JAX's random-number code for a real init costs about a second per
parameter on CPU. Only the initial-loss test runs the real init. Forward
passes are jitted and cached per (config, method) and most tests share the
same input shapes (batch 2, 9 encoder and 8 decoder positions), so each
variant compiles once.
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

from t5lite.kernels import backend
from t5lite.models import params as params_lib
from t5lite.models import t5

REPO = pathlib.Path(__file__).resolve().parents[2]
VOCAB = 97
TEST_CFG = dict(vocab_size=VOCAB, d_model=32, num_heads=2, d_kv=8, d_ff=48, num_encoder_layers=2, num_decoder_layers=2)
AXIS_VOCABULARY = {"vocab", "embed", "mlp", "heads", "kv", "joined_kv", "relpos_buckets", "layers"}


def make_config(**overrides):
  return t5.T5Config(**{**TEST_CFG, **overrides})


def fake_params(abstract, seed=0):
  """Numpy stand-in for model.init: fan-in scaled normals, T5-like scales."""
  rng = np.random.default_rng(seed)

  def make(path, leaf, names):
    shape = leaf.shape
    core = [n for n in names if n != "layers"]
    cshape = [s for s, n in zip(shape, names) if n != "layers"]
    if core == ["embed"]:  # norm scales, perturbed so that layers differ
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


def tokens(rng, *shape):
  return jnp.asarray(rng.integers(1, VOCAB, shape), jnp.int32)


@functools.cache
def jitted(cfg, method="__call__"):
  """Cached jax.jit of T5Transformer(cfg).apply(..., method=method)."""
  model = t5.T5Transformer(cfg)
  return jax.jit(functools.partial(model.apply, method=method), static_argnames=("enable_dropout",))


@pytest.fixture(scope="module")
def params():
  return fake_params(t5.abstract_variables(make_config()))


ENC_LEN, DEC_LEN = 9, 8


def packed_batch(rng):
  """Two packed rows (segments a+b and b+a) and the four examples alone,
  each alone example right-padded to the same lengths."""
  enc = [tokens(rng, 4), tokens(rng, 3)]
  dec = [tokens(rng, 3), tokens(rng, 4)]

  def pad(x, n):
    return jnp.concatenate([x, jnp.zeros(n - x.shape[0], jnp.int32)])

  def seg(lengths, n):
    ids = np.concatenate([np.full(l, i + 1) for i, l in enumerate(lengths)])
    pos = np.concatenate([np.arange(l) for l in lengths])
    k = n - len(ids)
    return np.concatenate([ids, np.zeros(k, int)]), np.concatenate([pos, np.zeros(k, int)])

  rows = []
  for order in ((0, 1), (1, 0)):
    e_seg, e_pos = seg([enc[i].shape[0] for i in order], ENC_LEN)
    d_seg, d_pos = seg([dec[i].shape[0] for i in order], DEC_LEN)
    rows.append(
      dict(
        encoder_input_tokens=pad(jnp.concatenate([enc[i] for i in order]), ENC_LEN),
        decoder_input_tokens=pad(jnp.concatenate([dec[i] for i in order]), DEC_LEN),
        encoder_segment_ids=e_seg,
        decoder_segment_ids=d_seg,
        encoder_positions=e_pos,
        decoder_positions=d_pos,
      )
    )
  packed = {k: jnp.asarray(np.stack([r[k] for r in rows]), jnp.int32) for k in rows[0]}
  alone = dict(
    encoder_input_tokens=jnp.stack([pad(e, ENC_LEN) for e in enc]),
    decoder_input_tokens=jnp.stack([pad(d, DEC_LEN) for d in dec]),
  )
  return packed, alone


def test_shapes_and_encode_decode_methods(params):
  cfg = make_config()
  rng = np.random.default_rng(0)
  enc, dec = tokens(rng, 2, ENC_LEN), tokens(rng, 2, DEC_LEN)
  logits = jitted(cfg)(params, enc, dec)
  assert logits.shape == (2, DEC_LEN, VOCAB) and logits.dtype == jnp.float32
  model = t5.T5Transformer(cfg)

  @jax.jit
  def two_steps(params, enc, dec):
    encoded = model.apply(params, enc, method=model.encode)
    return encoded, model.apply(params, encoded, enc, dec, method=model.decode)

  encoded, again = two_steps(params, enc, dec)
  assert encoded.shape == (2, ENC_LEN, 32)
  np.testing.assert_allclose(again, logits, rtol=1e-5, atol=1e-5)


def test_param_tree_and_logical_axes():
  abstract = t5.abstract_variables(make_config())
  axes = params_lib.logical_axes_tree(abstract)["params"]
  assert axes["token_embedder"]["embedding"] == ("vocab", "embed")
  assert axes["decoder"]["logits_dense"]["kernel"] == ("embed", "vocab")
  assert axes["encoder"]["relpos_bias"]["rel_embedding"] == ("heads", "relpos_buckets")
  assert axes["decoder"]["relpos_bias"]["rel_embedding"] == ("heads", "relpos_buckets")
  layer = axes["decoder"]["layers_1"]
  assert layer["encoder_decoder_attention"]["out"] == ("heads", "kv", "embed")
  assert layer["mlp"]["wi_0"] == ("embed", "mlp")
  assert set(axes["encoder"]) == {"relpos_bias", "layers_0", "layers_1", "encoder_norm"}
  shapes = nn.unbox(abstract)["params"]
  checked = jax.tree.map(
    lambda s, names: len(names) == s.ndim and set(names) <= AXIS_VOCABULARY and s.dtype == jnp.float32, shapes, axes
  )
  assert all(jax.tree.leaves(checked))
  # Same information through flax's own helper.
  spec = nn.get_partition_spec(abstract)["params"]["token_embedder"]["embedding"]
  assert tuple(spec) == ("vocab", "embed")


def test_preset_parameter_counts():
  small = t5.abstract_variables(t5.t5_config("small"))
  assert params_lib.count_params(small["params"]) == 76_961_152
  # Scanned stacks trace faster and hold the same parameters.
  for name, approx in [("base", 248e6), ("large", 783e6)]:
    n = params_lib.count_params(t5.abstract_variables(t5.t5_config(name, scan_layers=True)))
    assert abs(n - approx) / approx < 0.01, (name, n)


def test_decoder_is_causal(params):
  rng = np.random.default_rng(1)
  enc, dec = tokens(rng, 2, ENC_LEN), tokens(rng, 2, DEC_LEN)
  changed = dec.at[:, 3].set((dec[:, 3] % (VOCAB - 1)) + 1)
  a, b = jitted(make_config())(params, enc, dec), jitted(make_config())(params, enc, changed)
  np.testing.assert_allclose(a[:, :3], b[:, :3], rtol=1e-5, atol=1e-5)
  assert np.abs(a[:, 3:] - b[:, 3:]).max() > 1e-3


def test_packing_matches_separate_examples(params):
  packed, alone = packed_batch(np.random.default_rng(2))
  logits = jitted(make_config())(params, **packed)
  single = jitted(make_config())(params, **alone)
  # Row 0 packs a (3 decoder tokens) then b (4); row 1 packs b then a.
  np.testing.assert_allclose(logits[0, :3], single[0, :3], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[0, 3:7], single[1, :4], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[1, :4], single[1, :4], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[1, 4:7], single[0, :3], rtol=1e-5, atol=1e-5)


def test_encoder_padding_does_not_change_outputs(params):
  rng = np.random.default_rng(3)
  enc, dec = tokens(rng, 2, 5), tokens(rng, 2, DEC_LEN)
  padded = jnp.concatenate([enc, jnp.zeros((2, ENC_LEN - 5), jnp.int32)], axis=1)
  a, b = jitted(make_config())(params, enc, dec), jitted(make_config())(params, padded, dec)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_plain_attention_matches_the_cpu_kernels(params):
  """attention='dot_product' (plain einsum, autodiff) against the CPU default
  ('auto' = 'cpu_dot_product': folded masks, hand-written backward): the same logits
  and the same gradients of every parameter, packed (segment masks, causal decoder)
  and padded."""
  packed, alone = packed_batch(np.random.default_rng(4))
  assert backend.resolve_attention(make_config().attention) == "cpu_dot_product"
  cot = jnp.asarray(np.random.default_rng(5).normal(size=(2, DEC_LEN, VOCAB)), jnp.float32)

  def grads(cfg):
    model = t5.T5Transformer(cfg)
    return jax.jit(jax.value_and_grad(lambda p, b: jnp.sum(model.apply(p, **b) * cot)))

  plain, cpu = grads(make_config(attention="dot_product")), grads(make_config())
  for batch in (packed, alone):
    (v_plain, g_plain), (v_cpu, g_cpu) = plain(params, batch), cpu(params, batch)
    np.testing.assert_allclose(v_plain, v_cpu, rtol=1e-5)
    np.testing.assert_allclose(
      jitted(make_config(attention="dot_product"))(params, **batch),
      jitted(make_config())(params, **batch),
      rtol=1e-5,
      atol=1e-5,
    )
    flat_plain = jax.tree_util.tree_leaves_with_path(g_plain)
    for (path, a), b in zip(flat_plain, jax.tree.leaves(g_cpu)):
      scale = float(np.abs(a).max())
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


def test_bfloat16_activations(params):
  cfg = make_config(dtype=jnp.bfloat16)
  assert cfg.dtype == "bfloat16"
  abstract = t5.abstract_variables(cfg)
  assert {x.dtype for x in jax.tree.leaves(nn.unbox(abstract))} == {jnp.dtype(jnp.float32)}
  rng = np.random.default_rng(5)
  enc, dec = tokens(rng, 2, ENC_LEN), tokens(rng, 2, DEC_LEN)
  low = jitted(cfg)(params, enc, dec)
  full = jitted(make_config())(params, enc, dec)
  assert low.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(low)))
  assert np.corrcoef(np.ravel(low), np.ravel(full))[0, 1] > 0.98


def test_dropout_only_when_enabled(params):
  rng = np.random.default_rng(6)
  enc, dec = tokens(rng, 2, ENC_LEN), tokens(rng, 2, DEC_LEN)
  plain = jitted(make_config())(params, enc, dec)
  key = jax.random.key(0, impl="unsafe_rbg")  # cheap to compile on CPU
  other_key = jax.random.fold_in(key, 1)
  xla = jitted(make_config(dropout_rate=0.3))
  off = xla(params, enc, dec, enable_dropout=False)
  np.testing.assert_allclose(off, plain, rtol=1e-5, atol=1e-5)
  for fn in (xla, jitted(make_config(dropout_rate=0.3, attention="dot_product"))):
    on = fn(params, enc, dec, enable_dropout=True, rngs={"dropout": key})
    other = fn(params, enc, dec, enable_dropout=True, rngs={"dropout": other_key})
    assert np.abs(on - plain).max() > 1e-2 and np.abs(on - other).max() > 1e-2
    assert bool(jnp.all(jnp.isfinite(on)))


def stack_layers(params, num_layers):
  """Unscanned param tree -> the nn.scan layout (per-layer trees stacked)."""

  def convert(tree):
    if not isinstance(tree, dict):
      return tree
    if "layers_0" in tree:
      per_layer = [tree[f"layers_{i}"] for i in range(num_layers)]
      rest = {k: v for k, v in tree.items() if not k.startswith("layers_")}
      return {**rest, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)}
    return {k: convert(v) for k, v in tree.items()}

  return convert(params)


def test_scan_and_remat_match_unscanned(params):
  """Scanned + fully rematerialised stacks give the unscanned logits and
  gradients once the per-layer params are stacked into the scan layout."""
  packed, _ = packed_batch(np.random.default_rng(7))
  scanned_cfg = make_config(scan_layers=True, remat_policy="full")
  stacked = stack_layers(params, 2)
  abstract = t5.abstract_variables(scanned_cfg)
  assert jax.tree.map(lambda s: s.shape, nn.unbox(abstract)) == jax.tree.map(lambda s: s.shape, stacked)
  axes = params_lib.logical_axes_tree(abstract)["params"]
  assert axes["encoder"]["layers"]["self_attention"]["query"] == ("layers", "embed", "heads", "kv")

  def loss_and_grad(cfg, p):
    model = t5.T5Transformer(cfg)

    def loss(p):
      logits = model.apply(p, **packed)
      return jnp.mean(jnp.square(logits)), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(p)

  (_, ref_logits), ref_grad = loss_and_grad(make_config(), params)
  (_, scan_logits), scan_grad = loss_and_grad(scanned_cfg, stacked)
  np.testing.assert_allclose(scan_logits, ref_logits, rtol=1e-5, atol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), stack_layers(ref_grad, 2), scan_grad
  )


def test_initial_loss_is_near_log_vocab():
  """A real init of the tiny preset (vocab 32128) starts at ~ln(V).

  Embeddings are N(0, 1), the final RMSNorm output has unit scale and the
  logits kernel has variance 1/d_model, so logits are ~N(0, 1) and the
  expected cross entropy on random targets is about ln(V) + 1/2 (10.88 for
  ln V = 10.38); over 128 tokens the sample mean stays within ~0.3 of that.
  |loss - ln V| < 1 is therefore a fair bound that still catches a wrong
  init scale (e.g. logits with std 2 would give ln V + 2).
  """
  cfg = t5.t5_config("tiny")
  model = t5.T5Transformer(cfg)
  rng = np.random.default_rng(8)
  enc = jnp.asarray(rng.integers(1, cfg.vocab_size, (4, 32)), jnp.int32)
  dec = jnp.asarray(rng.integers(1, cfg.vocab_size, (4, 32)), jnp.int32)
  targets = jnp.asarray(rng.integers(1, cfg.vocab_size, (4, 32)), jnp.int32)
  # A real init; unsafe_rbg keys compile several times faster than threefry on CPU.
  boxed = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), enc[:1, :4], dec[:1, :4])
  params = nn.unbox(boxed)
  logits = jax.jit(model.apply)(params, enc, dec)
  loss = float(jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]))
  assert abs(loss - math.log(cfg.vocab_size)) < 1.0, loss
  assert 0.8 < float(jnp.std(logits)) < 1.2
  np.testing.assert_allclose(np.std(params["params"]["token_embedder"]["embedding"]), 1.0, rtol=0.02)


def test_config_validation_and_presets():
  with pytest.raises(ValueError, match="unknown attention implementation 'flash'.*'auto', 'dot_product'"):
    make_config(attention="flash")
  with pytest.raises(ValueError, match="T5Config.d_model=0 must be an integer >= 1"):
    make_config(d_model=0)
  with pytest.raises(ValueError, match="unknown remat policy 'some'.*'none', 'full'"):
    make_config(remat_policy="some")
  with pytest.raises(ValueError, match="dtype.*'int32'"):
    make_config(dtype="int32")
  with pytest.raises(ValueError, match="dropout_rate"):
    make_config(dropout_rate=1.5)
  with pytest.raises(
    ValueError,
    match=r"unknown T5 preset 'medium'.*\['base', 'large', 'small', 'switch_base_16', 'switch_base_8', 'switch_tiny', 'tiny', 'xl', 'xxl'\]",
  ):
    t5.t5_config("medium")
  cfg = t5.t5_config("base", dtype="bfloat16", scan_layers=True)
  assert (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.num_encoder_layers) == (768, 2048, 12, 12)
  assert cfg.activation_dtype == jnp.bfloat16 and cfg.remat_policy == "none"
  assert make_config(remat_policy=None).remat_policy == "none"


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(d_model=-1), "T5Config.d_model=-1 must be an integer >= 1"),
    (dict(num_heads=True), "T5Config.num_heads=True must be an integer >= 1, not a bool"),
    (dict(d_ff=1024.0), "T5Config.d_ff=1024.0 must be an integer >= 1, not a float"),
    (dict(vocab_size="32128"), "T5Config.vocab_size='32128' must be an integer >= 1, not a string"),
    (dict(num_decoder_layers=0), "T5Config.num_decoder_layers=0 must be an integer >= 1"),
    (dict(dropout_rate=float("nan")), "T5Config.dropout_rate=nan must be a finite number in [0.0, 1.0)"),
    (dict(dropout_rate=-0.1), "T5Config.dropout_rate=-0.1 must be a finite number in [0.0, 1.0)"),
    (dict(layer_norm_epsilon=0.0), "T5Config.layer_norm_epsilon=0.0 must be a finite number > 0.0"),
    (dict(layer_norm_epsilon=float("inf")), "T5Config.layer_norm_epsilon=inf must be a finite number > 0.0"),
    (dict(relative_attention_num_buckets=3), "T5Config.relative_attention_num_buckets=3 must be an integer >= 4"),
    (
      dict(relative_attention_max_distance=16),
      "T5Config.relative_attention_max_distance=16 must be an integer >= 17 (> relative_attention_num_buckets // 2 = 16)",
    ),
  ],
)
def test_config_numbers_are_checked(overrides, message):
  """Sizes are positive ints (not bools, floats or strings), rates and epsilons finite and in range."""
  with pytest.raises(ValueError) as e:
    t5.T5Config(**overrides)
  assert str(e.value).startswith(message), str(e.value)
  cfg = t5.T5Config(d_model=np.int64(64), dropout_rate=0, layer_norm_epsilon=1)
  assert (cfg.d_model, cfg.dropout_rate, cfg.layer_norm_epsilon) == (64, 0.0, 1.0)
  assert (type(cfg.d_model), type(cfg.dropout_rate)) == (int, float)


def test_gin_presets_match_python_presets():
  try:
    for name in t5.T5_PRESETS:
      gin.clear_config()
      # Switch presets live in gin/models/switch/ (switch_base_8 -> switch/base_8.gin).
      path = ("switch", name[len("switch_") :]) if name.startswith("switch_") else ("t5_1_1", name)
      gin.parse_config_file(str(REPO / "gin" / "models" / path[0] / f"{path[1]}.gin"))
      assert gin.get_configurable(t5.T5Config)() == t5.t5_config(name), name
  finally:
    gin.clear_config()

"""Tests of the shared building blocks in t5lite.models.layers.

Real `module.init` is avoided where the initial values do not matter: on a
CPU, compiling JAX's random-number code costs about a second per parameter,
so most tests build parameters from `jax.eval_shape` shapes with numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t5lite.models import layers

# Hand-computed T5 buckets for relative_position = key_pos - query_pos with
# 32 buckets and max distance 128. Bidirectional: 16 buckets per direction,
# 8 exact ones, then bucket 8 + floor(8 * log(n / 8) / log(16)); keys after
# the query add 16. Causal: 16 exact buckets, then
# 16 + floor(16 * log(n / 16) / log(8)); keys after the query -> 0.
BIDIRECTIONAL = {
    0: 0, -1: 1, -7: 7, -8: 8, -12: 9, -16: 10, -20: 10, -24: 11, -32: 12, -48: 13,
    -64: 14, -90: 14, -100: 15, -127: 15, -128: 15, -1000: 15,
    1: 17, 7: 23, 8: 24, 16: 26, 32: 28, 127: 31, 1000: 31,
}
CAUSAL = {
    5: 0, 1: 0, 0: 0, -1: 1, -15: 15, -16: 16, -20: 17, -24: 19, -32: 21, -64: 26,
    -100: 30, -127: 31, -128: 31, -5000: 31,
}


@pytest.mark.parametrize("bidirectional,table", [(True, BIDIRECTIONAL), (False, CAUSAL)])
def test_relative_position_bucket_table(bidirectional, table):
    rel = np.array(list(table), np.int32)
    want = np.array(list(table.values()), np.int32)
    got_np = layers.relative_position_bucket(rel, bidirectional, 32, 128)
    assert isinstance(got_np, np.ndarray)
    np.testing.assert_array_equal(got_np, want)
    got_jnp = layers.relative_position_bucket(jnp.asarray(rel), bidirectional, 32, 128)
    np.testing.assert_array_equal(np.asarray(got_jnp), want)


def test_relative_position_bias_positions_match_static():
    module = layers.RelativePositionBias(num_heads=3, num_buckets=8, max_distance=16, bidirectional=True)
    table = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)), jnp.float32)
    params = {"params": {"rel_embedding": table}}
    static = module.apply(params, 5, 5)
    assert static.shape == (1, 3, 5, 5)
    # Row 0: arange positions; row 1: a packed row whose second segment restarts at 0.
    pos = jnp.asarray([[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]], jnp.int32)
    dyn = module.apply(params, 5, 5, pos, pos)
    assert dyn.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(dyn[0], static[0])
    np.testing.assert_allclose(dyn[1, :, 2:, 2:], static[0, :, :3, :3])
    # 8 buckets, bidirectional: 4 per side, 2 exact. Key 2 seen from query 3
    # (relative position -1) -> bucket 1; key 1 from query 0 (+1) -> 4 + 1 = 5.
    np.testing.assert_allclose(static[0, :, 3, 2], table[:, 1])
    np.testing.assert_allclose(static[0, :, 0, 1], table[:, 5])


def test_rms_norm_values_and_axes():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 8)) * 3, jnp.float32)
    norm = layers.RMSNorm()
    boxed = norm.init(jax.random.key(0), x)
    assert layers.logical_axes_tree(boxed) == {"params": {"scale": ("embed",)}}
    scale = jnp.arange(1.0, 9.0)
    y = norm.apply({"params": {"scale": scale}}, x)
    want = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    y16 = layers.RMSNorm(dtype=jnp.bfloat16).apply({"params": {"scale": scale}}, x)
    assert y16.dtype == jnp.bfloat16


def test_gated_mlp_matches_formula():
    rng = np.random.default_rng(2)
    d, f = 6, 10
    p = {k: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32)
         for k, s in [("wi_0", (d, f)), ("wi_1", (d, f)), ("wo", (f, d))]}
    x = jnp.asarray(rng.normal(size=(2, 4, d)), jnp.float32)
    y = layers.GatedMlp(d_ff=f).apply({"params": p}, x)
    h0, h1 = np.asarray(x) @ p["wi_0"], np.asarray(x) @ p["wi_1"]
    gelu = 0.5 * h0 * (1 + np.tanh(np.sqrt(2 / np.pi) * (h0 + 0.044715 * h0**3)))
    np.testing.assert_allclose(y, (gelu * h1) @ p["wo"], rtol=1e-5, atol=1e-5)
    axes = layers.logical_axes_tree(jax.eval_shape(layers.GatedMlp(d_ff=f).init, jax.random.key(0), x))
    assert axes["params"] == {"wi_0": ("embed", "mlp"), "wi_1": ("embed", "mlp"), "wo": ("mlp", "embed")}


def _qkv(seed, b=2, q=5, k=7, h=3, d=4, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    mk = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # noqa: E731
    return mk(b, q, h, d), mk(b, k, h, d), mk(b, k, h, d), rng


def test_einsum_attention_matches_numpy_reference():
    q, k, v, rng = _qkv(3)
    bias = jnp.asarray(rng.normal(size=(1, 3, 5, 7)), jnp.float32)
    mask = jnp.asarray(rng.random((2, 1, 5, 7)) > 0.3)
    mask = mask.at[:, :, :, 0].set(True)
    out = layers.einsum_attention(q, k, v, bias, mask)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) + bias  # no 1/sqrt(d) scaling in T5
    logits = np.where(mask, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.einsum("bhqk,bkhd->bqhd", w, v), rtol=1e-5, atol=1e-5)


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
        bias, m = layers.fold_mask_into_bias(shared, mask)
        assert bias.shape == (1, 3, 6, 6) and m.shape == (2, 1, 6, 6) and m.dtype == jnp.float32
    elif form == "per_example_bias_folded":
        bias, m = layers.fold_mask_into_bias(per_example, mask)
        assert bias.shape == (2, 3, 6, 6) and m is None
    else:
        bias, m, causal = shared, mask, True
    cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def loss(fast, q, k, v, bias):
        out = layers.einsum_attention(q, k, v, bias, m, is_causal=causal, fast_backward=fast)
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
        np.testing.assert_allclose(layers._sum_axis_by_halves(x, axis), x.sum(axis, keepdims=True), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_equals_einsum_on_cpu(causal):
    q, k, v, rng = _qkv(4, q=6, k=6)
    bias = jnp.asarray(rng.normal(size=(2, 3, 6, 6)), jnp.float32)
    mask = jnp.asarray(rng.random((2, 1, 6, 6)) > 0.4)
    mask = mask.at[:, :, :, 0].set(True)
    # jit: one compile is cheaper on CPU than compiling every op eagerly.
    both = jax.jit(lambda *args: (layers.einsum_attention(*args, is_causal=causal),
                                  layers.fused_attention(*args, is_causal=causal)))
    a, b = both(q, k, v, bias, mask)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # Fully masked rows give the same (uniform) answer in both paths.
    a, b = both(q, k, v, bias, jnp.zeros((2, 1, 6, 6), bool))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_attention_param_axes_and_query_scaling():
    d_model, heads, d_kv = 256, 4, 64
    x = jnp.zeros((1, 2, d_model))
    mha = layers.MultiHeadAttention(num_heads=heads, head_dim=d_kv)
    boxed = mha.init(jax.random.key(0), x, x)
    axes = layers.logical_axes_tree(boxed)["params"]
    assert axes == {"query": ("embed", "heads", "kv"), "key": ("embed", "heads", "kv"),
                    "value": ("embed", "heads", "kv"), "out": ("heads", "kv", "embed")}
    p = nn.unbox(boxed)["params"]
    # fan-in variance scaling; the query additionally carries 1/sqrt(d_kv).
    np.testing.assert_allclose(np.std(p["key"]), 1 / np.sqrt(d_model), rtol=0.03)
    np.testing.assert_allclose(np.std(p["query"]), 1 / np.sqrt(d_model * d_kv), rtol=0.03)
    np.testing.assert_allclose(np.std(p["out"]), 1 / np.sqrt(heads * d_kv), rtol=0.03)


def test_masks():
    tokens = jnp.asarray([[5, 6, 7, 8, 0]])
    seg = jnp.asarray([[1, 1, 2, 2, 0]])
    enc = layers.encoder_self_attention_mask(tokens, seg)[0, 0]
    want = np.array([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(enc, want)
    unpacked = layers.encoder_self_attention_mask(tokens)[0, 0]
    np.testing.assert_array_equal(unpacked[:4, :4], np.ones((4, 4), bool))
    assert not unpacked[:4, 4].any()

    mask, causal = layers.decoder_self_attention_mask(None)
    assert mask is None and causal
    mask, causal = layers.decoder_self_attention_mask(seg)
    assert causal
    np.testing.assert_array_equal(mask[0, 0], want | (np.asarray(seg[0])[:, None] == np.asarray(seg[0])[None]))

    # Prefix LM: positions 0-1 form the prefix of a 4-token sequence.
    prefix = jnp.asarray([[1, 1, 0, 0]])
    mask, causal = layers.decoder_self_attention_mask(None, prefix)
    assert not causal
    np.testing.assert_array_equal(mask[0, 0], np.array(
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], bool))

    dec_seg = jnp.asarray([[1, 2, 2, 0]])
    cross = layers.encoder_decoder_attention_mask(tokens, seg, dec_seg)[0, 0]
    np.testing.assert_array_equal(cross, np.array(
        [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [1, 1, 1, 1, 1]], bool))
    np.testing.assert_array_equal(layers.encoder_decoder_attention_mask(tokens)[0, 0, 0], [1, 1, 1, 1, 0])


def test_count_params_and_axes_tree_on_abstract_values():
    x = jnp.zeros((1, 3, 16))
    abstract = jax.eval_shape(layers.GatedMlp(d_ff=32).init, jax.random.key(0), x)
    assert layers.count_params(abstract) == 3 * 16 * 32
    assert layers.count_params(nn.unbox(abstract)) == 3 * 16 * 32
    axes = layers.logical_axes_tree(abstract)
    # Params first: each tuple of names reaches the function whole.
    dims = jax.tree.map(lambda p, names: dict(zip(names, p.shape)), nn.unbox(abstract), axes)
    assert dims["params"]["wo"] == {"mlp": 32, "embed": 16}


def test_helpers_reject_bad_values():
    assert layers.dtype_name(jnp.bfloat16) == "bfloat16"
    assert layers.dtype_name("float32") == "float32"
    with pytest.raises(ValueError, match="int8"):
        layers.dtype_name("int8")
    assert layers.remat_policy("none") is None
    assert layers.remat_policy("minimal") is jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    with pytest.raises(ValueError, match="'sometimes'.*'full'"):
        layers.remat_policy("sometimes")
    x = jnp.zeros((1, 2, 8))
    with pytest.raises(ValueError, match="'flash'"):
        jax.eval_shape(layers.MultiHeadAttention(2, 4, implementation="flash").init, jax.random.key(0), x, x)

"""Building blocks shared by the t5lite encoder-decoder and decoder-only models.

Everything here follows the T5 v1.1 recipe: pre-norm residual blocks with
RMSNorm, gated-GELU feed-forward layers, bias-free multi-head attention whose
1/sqrt(d_kv) factor lives in the query initialiser instead of the dot product,
and bucketed relative position biases computed once per layer stack.

Parameters are always float32 and carry *logical* axis names (see
`LOGICAL_AXES`) through `nn.with_logical_partitioning`; activations get
`nn.with_logical_constraint` hints. The modules know nothing about meshes: a
trainer maps the logical names to mesh axes with its own rules. Nothing in
this file imports gin, TensorFlow or seqio.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from t5lite import checks

Array = jax.Array
DType = Any
PyTree = Any

# Logical axis vocabulary used by parameters ('layers' only appears when a
# stack is scanned) and by activation constraints.
LOGICAL_AXES = ("vocab", "embed", "mlp", "heads", "kv", "relpos_buckets", "layers")
ACTIVATION_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "vocab")

ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product")
REMAT_POLICIES = ("none", "full", "dots_saveable", "minimal")
_DTYPE_NAMES = ("float32", "bfloat16", "float16")

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------


def dtype_name(dtype: Any) -> str:
    """Canonical string name ('float32', 'bfloat16', 'float16') of a dtype.

    Accepts those strings or anything `jnp.dtype` understands (jnp.bfloat16,
    np.float32, ...). Raises ValueError for anything else.
    """
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = None
    if name not in _DTYPE_NAMES:
        raise ValueError(
            f"unsupported activation dtype {dtype!r}; valid options are {_DTYPE_NAMES} "
            "(as strings or jnp dtypes)"
        )
    return name


def remat_policy(name: str) -> Optional[Callable[..., bool]]:
    """Maps a remat policy name to a `jax.checkpoint_policies` function.

    'none' -> no rematerialisation (returns None; callers skip nn.remat),
    'full' -> save nothing, recompute the whole layer in the backward pass,
    'dots_saveable' -> keep every matmul output (jax dots_saveable),
    'minimal' -> keep matmul outputs without batch dims, i.e. the weight
    projections but not the attention score/value products (T5X 'minimal').
    """
    if name == "none":
        return None
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots_saveable":
        return jax.checkpoint_policies.dots_saveable
    if name == "minimal":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    raise ValueError(f"unknown remat_policy {name!r}; valid options are {REMAT_POLICIES}")


def validate_transformer_config(cfg: Any, layer_fields: Sequence[str]) -> None:
    """Shared __post_init__ checks for the model config dataclasses.

    Normalises `dtype` to its string name, `remat_policy=None` to 'none' and
    numbers to Python ints and floats (the configs are frozen, hence
    object.__setattr__).

    Raises:
      ValueError: sizes that are not integers >= 1 (bools, floats and strings
        included), dropout_rate outside [0, 1), relative_attention_num_buckets
        < 4, relative_attention_max_distance <= num_buckets // 2,
        layer_norm_epsilon not > 0, NaN or infinity, an unknown attention,
        remat policy or dtype.
    """
    cls = type(cfg).__name__
    positive = ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", *layer_fields)
    for field in positive:
        object.__setattr__(cfg, field, checks.check_int(f"{cls}.{field}", getattr(cfg, field), minimum=1))
    dropout = checks.check_float(f"{cls}.dropout_rate", cfg.dropout_rate, minimum=0.0, maximum=1.0, max_open=True)
    object.__setattr__(cfg, "dropout_rate", dropout)
    nb = checks.check_int(f"{cls}.relative_attention_num_buckets", cfg.relative_attention_num_buckets, minimum=4)
    md = checks.check_int(f"{cls}.relative_attention_max_distance", cfg.relative_attention_max_distance,
                          minimum=nb // 2 + 1, hint=f" (> relative_attention_num_buckets // 2 = {nb // 2})")
    object.__setattr__(cfg, "relative_attention_num_buckets", nb)
    object.__setattr__(cfg, "relative_attention_max_distance", md)
    if cfg.attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"{cls}.attention: unknown attention implementation {cfg.attention!r}; "
            f"valid options are {ATTENTION_IMPLEMENTATIONS}"
        )
    policy = "none" if cfg.remat_policy is None else cfg.remat_policy
    if policy not in REMAT_POLICIES:
        raise ValueError(
            f"{cls}.remat_policy: unknown remat policy {cfg.remat_policy!r}; "
            f"valid options are {REMAT_POLICIES}"
        )
    object.__setattr__(cfg, "remat_policy", policy)
    try:
        object.__setattr__(cfg, "dtype", dtype_name(cfg.dtype))
    except ValueError as e:
        raise ValueError(f"{cls}.dtype: {e}") from None
    epsilon = checks.check_float(f"{cls}.layer_norm_epsilon", cfg.layer_norm_epsilon, minimum=0.0, min_open=True)
    object.__setattr__(cfg, "layer_norm_epsilon", epsilon)


# --------------------------------------------------------------------------
# Parameter helpers
# --------------------------------------------------------------------------

# Dense kernels: variance scaling on fan-in with a truncated normal, as in T5X.
def kernel_init(in_axis: int | Sequence[int] = -2, out_axis: int | Sequence[int] = -1) -> Callable:
    """Initializer for a kernel whose input dims are `in_axis` (fan-in)."""
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis)


# T5 keeps the full N(0, 1) embedding init; RMSNorm makes the scale harmless.
embedding_init = nn.initializers.normal(stddev=1.0)
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def _scaled(init: Callable, factor: float) -> Callable:
    def scaled_init(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype) * jnp.asarray(factor, dtype)

    return scaled_init


def _param(module: nn.Module, name: str, init: Callable, shape: Sequence[int], axes: Sequence[str]):
    """Float32 parameter annotated with logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), jnp.float32)


def _dense(x: Array, kernel: Array, in_dims: int = 1) -> Array:
    """x [..., *kernel.shape[:in_dims]] @ kernel -> [..., *kernel.shape[in_dims:]].

    Done as one 2-D matmul (leading dims of `x` and the kernel's input and
    output dims each flattened; all reshapes are free). Same math as the
    einsum/jnp.dot over N-D arrays, but XLA's CPU backend then computes the
    weight gradient x^T @ dy straight from the row-major arrays; with
    several contracting dims it materialised a transposed copy of dy, with
    the elementwise backward (e.g. GELU's) fused into that slow copy.
    """
    in_shape, out_shape = kernel.shape[:in_dims], kernel.shape[in_dims:]
    lead = x.shape[: x.ndim - in_dims]
    k_in, k_out = math.prod(in_shape), math.prod(out_shape)
    y = jnp.dot(x.reshape((-1, k_in)), kernel.reshape((k_in, k_out)))
    return y.reshape(lead + tuple(out_shape))


def count_params(tree: PyTree) -> int:
    """Number of scalars in a (boxed or unboxed, concrete or abstract) pytree."""
    leaves = jax.tree.leaves(meta.unbox(tree))
    return int(sum(math.prod(x.shape) for x in leaves))


def logical_axes_tree(abstract_variables: PyTree) -> PyTree:
    """Logical axis names of each parameter, as a tree of tuples of strings.

    `abstract_variables` is the boxed output of `module.init` (or of
    `jax.eval_shape(module.init, ...)`). The result has the structure of
    `flax.core.meta.unbox(abstract_variables)`, with each array replaced by a
    tuple of names (one per dimension; None for unannotated variables).
    Because tuples are pytree nodes, combine it with the params by passing
    the params first: `jax.tree.map(lambda p, names: ..., params, axes)` hands
    each whole tuple to the function. `nn.get_partition_spec(variables)` gives
    the same information as PartitionSpecs.
    """

    def names(x):
        if isinstance(x, meta.Partitioned):
            return tuple(x.names)
        return (None,) * len(getattr(x, "shape", ()))

    return jax.tree.map(names, abstract_variables, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


# --------------------------------------------------------------------------
# Basic modules
# --------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no bias and no mean subtraction."""

    epsilon: float = 1e-6
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (y * scale).astype(self.dtype)


class Embed(nn.Module):
    """Token embedding table with axes ('vocab', 'embed')."""

    num_embeddings: int
    features: int
    dtype: DType = jnp.float32

    def setup(self):
        self.embedding = _param(
            self, "embedding", embedding_init, (self.num_embeddings, self.features), ("vocab", "embed")
        )

    def __call__(self, ids: Array) -> Array:
        # Ids outside [0, vocab) are clamped (like array indexing in JAX).
        return jnp.take(self.embedding, ids, axis=0, mode="clip").astype(self.dtype)

    def attend(self, x: Array) -> Array:
        """Tied output projection: float32 logits x @ embedding.T."""
        table = self.embedding.astype(self.dtype)
        lead = x.shape[:-1]
        logits = jnp.einsum("td,vd->tv", x.reshape((-1, x.shape[-1])), table, preferred_element_type=jnp.float32)
        return logits.reshape(lead + (self.num_embeddings,))


class OutputDense(nn.Module):
    """Untied output projection 'logits_dense', kernel axes ('embed', 'vocab')."""

    features: int
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = _param(self, "kernel", kernel_init(), (x.shape[-1], self.features), ("embed", "vocab"))
        lead = x.shape[:-1]
        logits = jnp.dot(x.reshape((-1, x.shape[-1])), kernel.astype(self.dtype), preferred_element_type=jnp.float32)
        return logits.reshape(lead + (self.features,))


class GatedMlp(nn.Module):
    """T5 v1.1 feed-forward: wo(gelu_tanh(x @ wi_0) * (x @ wi_1))."""

    d_ff: int
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        d_model = x.shape[-1]
        wi_0 = _param(self, "wi_0", kernel_init(), (d_model, self.d_ff), ("embed", "mlp"))
        wi_1 = _param(self, "wi_1", kernel_init(), (d_model, self.d_ff), ("embed", "mlp"))
        wo = _param(self, "wo", kernel_init(), (self.d_ff, d_model), ("mlp", "embed"))
        x = x.astype(self.dtype)
        gate = _dense(x, wi_0.astype(self.dtype))
        linear = _dense(x, wi_1.astype(self.dtype))
        h = nn.gelu(gate, approximate=True) * linear
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
        out = _dense(h, wo.astype(self.dtype))
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


# --------------------------------------------------------------------------
# Relative position bias
# --------------------------------------------------------------------------


def relative_position_bucket(
    relative_position: Any,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> Any:
    """T5 bucket index of `relative_position = key_position - query_position`.

    Small distances get one bucket each; larger ones share logarithmically
    wider buckets up to `max_distance`, beyond which everything lands in the
    last bucket. Bidirectional: half the buckets for keys before the query
    (including itself), half for keys after it. Unidirectional (causal): keys
    after the query all map to bucket 0. Works on numpy arrays (returned as
    numpy, for static tables) and on jax arrays.
    """
    xp = np if isinstance(relative_position, (np.ndarray, np.generic, int)) else jnp
    n = -xp.asarray(relative_position).astype(np.int32)  # distance looking back
    ret = xp.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret = ret + (n < 0).astype(np.int32) * num_buckets
        n = xp.abs(n)
    else:
        n = xp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # The eps keeps exact powers (e.g. n = 2 * max_exact) from rounding down.
    scaled = xp.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(np.int32)
    large = xp.minimum(large, num_buckets - 1)
    return ret + xp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Per-head learned bias indexed by relative-position bucket.

    One instance per layer stack; its output is computed once and handed to
    every layer. Parameter 'rel_embedding' has axes ('heads', 'relpos_buckets').
    """

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True

    @nn.compact
    def __call__(
        self, q_len: int, k_len: int, q_positions: Optional[Array] = None, k_positions: Optional[Array] = None
    ) -> Array:
        """Float32 bias of shape [1, heads, q_len, k_len] (static positions) or
        [batch, heads, q_len, k_len] when per-example positions are given."""
        table = _param(
            self, "rel_embedding", relpos_init, (self.num_heads, self.num_buckets), ("heads", "relpos_buckets")
        )
        bucket = lambda rel: relative_position_bucket(  # noqa: E731
            rel, self.bidirectional, self.num_buckets, self.max_distance
        )
        if q_positions is None and k_positions is None:
            rel = np.arange(k_len, dtype=np.int32)[None, :] - np.arange(q_len, dtype=np.int32)[:, None]
            buckets = bucket(rel)[None]  # static numpy [1, q, k]: one bias for the batch
        else:
            if q_positions is None:
                q_positions = jnp.arange(q_len, dtype=jnp.int32)[None]
            if k_positions is None:
                k_positions = jnp.arange(k_len, dtype=jnp.int32)[None]
            rel = k_positions[:, None, :].astype(jnp.int32) - q_positions[:, :, None].astype(jnp.int32)
            buckets = bucket(rel)  # [b, q, k]
        # Gather scalars from the flattened table straight into [b, heads, q, k]
        # (index head * num_buckets + bucket). Same values as taking [heads, b, q, k]
        # and transposing, but the backward pass then scatters from the [b, h, q, k]
        # gradient as it is instead of transposing it to [b, q, k, h] first (on CPU
        # that strided copy was a large share of the step; 140 ms for the shared
        # [6, 512, 512] encoder bias of T5 small).
        offsets = (np.arange(self.num_heads, dtype=np.int32) * self.num_buckets)[None, :, None, None]
        return jnp.take(table.reshape(-1), buckets[:, None] + offsets, axis=0)


def bias_positions(config: Any, positions: Optional[Array]) -> tuple[Optional[Array], Optional[Array]]:
    """(q_positions, k_positions) for a self-attention `RelativePositionBias`
    call: the positions features when `config.position_bias_from_positions`,
    else (None, None), the batch-shared bias of token indices (see T5Config)."""
    if config.position_bias_from_positions and positions is not None:
        return positions, positions
    return None, None


# --------------------------------------------------------------------------
# Attention masks (boolean, True = may attend; shape [batch, 1, q, k])
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
# Attention
# --------------------------------------------------------------------------


def _large_negative(dtype: DType) -> Array:
    # Same constant as jax.nn.dot_product_attention so both paths agree even
    # on fully masked rows (uniform weights).
    return jnp.asarray(-0.7 * float(jnp.finfo(dtype).max), dtype)


def _apply_mask(logits: Array, mask: Optional[Array]) -> Array:
    """Masked logits: a boolean mask selects, a float (additive) mask is added.

    Additive masks come from `fold_mask_into_bias` (0 or -0.7 * float32 max);
    for narrower logits the negative entries are first raised to that dtype's
    own large negative, so that they do not round to -inf.
    """
    if mask is None:
        return logits
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, logits, _large_negative(logits.dtype))
    if jnp.dtype(logits.dtype) != jnp.float32:
        mask = jnp.maximum(mask, _large_negative(logits.dtype).astype(mask.dtype))
    return logits + mask.astype(logits.dtype)


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
    fast_backward: bool = False,
) -> Array:
    """Unscaled softmax(q k^T + bias) v with einsums; [b, l, heads, kv] layout.

    `mask` is boolean (True: may attend) or additive (float: 0 or a large
    negative, as `fold_mask_into_bias` makes it). Logits are accumulated in
    float32 when `float32_logits`; the softmax is always float32. `dropout`, if given, is applied to the attention weights.
    `fast_backward` (ignored with dropout): same forward values, with a custom
    VJP that keeps the softmax weights and orders the backward matmuls for XLA's
    CPU backend; the gradients equal autodiff's up to float rounding. It saves
    the [b, h, q, k] weights as its residual, so do not combine it with
    rematerialisation (policies cannot see inside it).
    """
    if is_causal:
        q_len, k_len = query.shape[1], key.shape[1]
        tril = np.tril(np.ones((q_len, k_len), dtype=bool))[None, None]
        if mask is None or mask.dtype == jnp.bool_:
            mask = tril if mask is None else jnp.logical_and(mask, tril)
        else:
            mask = jnp.where(tril, mask, _large_negative(mask.dtype))
        is_causal = False
    if fast_backward and dropout is None:
        return _attention_with_fast_backward(query, key, value, bias, mask, bool(float32_logits))
    logits_dtype = jnp.float32 if float32_logits else query.dtype
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=logits_dtype)
    if bias is not None:
        logits = logits + bias.astype(logits_dtype)
    logits = _apply_mask(logits, mask)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value)


def _sum_axis_by_halves(x: Array, axis: int) -> Array:
    """jnp.sum(x, axis, keepdims=True) as a tree of elementwise adds of halves.

    Same sum up to float rounding order. On XLA:CPU a reduction over a leading
    axis of a large tensor (the batch sum of a shared bias's gradient) runs as
    a slow single-threaded library reduction (measured: 700 ms for 8 layers of
    [8, 6, 512, 512] gradients on the 2-core dev box); adds of slices fuse into
    one parallel elementwise loop (17 ms).
    """
    while x.shape[axis] > 1:
        n = x.shape[axis]
        half = n // 2
        y = jax.lax.slice_in_dim(x, 0, half, axis=axis) + jax.lax.slice_in_dim(x, half, 2 * half, axis=axis)
        if n % 2:
            last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
            y = jnp.concatenate([jax.lax.slice_in_dim(y, 0, 1, axis=axis) + last,
                                 jax.lax.slice_in_dim(y, 1, half, axis=axis)], axis=axis)
        x = y
    return x


def _sum_to_shape(x: Array, shape: tuple[int, ...]) -> Array:
    """Sums the broadcast dims of `x` away so that it has `shape` (a broadcastable shape)."""
    lead = x.ndim - len(shape)
    x = jnp.sum(x, axis=tuple(range(lead))) if lead else x
    for i, (n, m) in enumerate(zip(shape, x.shape)):
        if n == 1 and m != 1:
            x = _sum_axis_by_halves(x, i)
    return x


def _bmm(a: Array, b: Array, preferred_element_type: Optional[DType] = None) -> Array:
    """a [b, h, m, k] x b [b, h, k, n] -> [b, h, m, n]: both operands row-major."""
    return jax.lax.dot_general(
        a, b, (((3,), (2,)), ((0, 1), (0, 1))), preferred_element_type=preferred_element_type
    )


def _pinned(x: Array) -> Array:
    """On CPU, materialises `x` in the layout it has (an optimization barrier).

    XLA's CPU backend otherwise folds the transposes around the attention
    matmuls into the dots' dimension numbers and often picks forms where the
    contraction runs along both operands' minor dims (or the major dim of
    a [q, k] block); Eigen runs those 2.5-3x slower than the plain
    row-major x row-major form `_bmm` asks for (measured on the 2-core dev
    box for [64, 512] x [512, 512] blocks: 44-51 against 111-148 GFLOP/s, one
    core). Other backends handle transposed operands in the matmul itself.
    """
    return jax.lax.optimization_barrier(x) if jax.default_backend() == "cpu" else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention_with_fast_backward(query, key, value, bias, mask, float32_logits):
    """softmax(q k^T + bias, masked) v, as `einsum_attention` computes it, with a
    hand-written backward pass. Every matmul, forward and backward, runs on
    head-major operands laid out row-major x row-major (see `_pinned`)."""
    return _attention_fwd(query, key, value, bias, mask, float32_logits)[0]


def _attention_fwd(query, key, value, bias, mask, float32_logits):
    logits_dtype = jnp.float32 if float32_logits else query.dtype
    q_h = _pinned(jnp.transpose(query, (0, 2, 1, 3)))  # [b, h, q, d]
    k_t = _pinned(jnp.transpose(key, (0, 2, 3, 1)))  # [b, h, d, k]
    v_h = _pinned(jnp.transpose(value, (0, 2, 1, 3)))  # [b, h, k, d]
    logits = _bmm(q_h, k_t, logits_dtype)
    if bias is not None:
        logits = logits + bias.astype(logits_dtype)
    logits = _apply_mask(logits, mask)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = _pinned(_bmm(probs.astype(value.dtype), v_h))  # [b, h, q, d]
    return jnp.transpose(out, (0, 2, 1, 3)), (q_h, k_t, v_h, bias, mask, probs)


def _attention_bwd(float32_logits, residuals, d_out):
    q_h, k_t, v_h, bias, mask, probs = residuals
    f32 = jnp.float32
    logits_dtype = f32 if float32_logits else q_h.dtype
    d_out = d_out.astype(v_h.dtype)
    do_h = _pinned(jnp.transpose(d_out, (0, 2, 1, 3)))  # [b, h, q, d]
    do_t = _pinned(jnp.transpose(d_out, (0, 2, 3, 1)))  # [b, h, d, q]
    v_t = _pinned(jnp.swapaxes(v_h, 2, 3))  # [b, h, d, k]
    q_t = _pinned(jnp.swapaxes(q_h, 2, 3))  # [b, h, d, q]
    k_h = _pinned(jnp.swapaxes(k_t, 2, 3))  # [b, h, k, d]
    d_probs = _bmm(do_h, v_t, f32)  # [b, h, q, k]
    # dV and dK are computed transposed ([b, h, d, k] = [d, q] x [q, k]), the
    # form that keeps the [q, k] block row-major, and transposed back after.
    dv_t = _pinned(_bmm(do_t, probs.astype(v_h.dtype), f32))
    d_logits = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
    if mask is not None and mask.dtype == jnp.bool_:  # additive masks: masked weights are 0 already
        d_logits = jnp.where(mask, d_logits, 0.0)
    ds = d_logits.astype(logits_dtype)
    dq = _pinned(_bmm(ds, k_h.astype(logits_dtype), f32))  # [b, h, q, d]
    dk_t = _pinned(_bmm(q_t.astype(logits_dtype), ds, f32))  # [b, h, d, k]
    d_bias = None
    if bias is not None:
        d_bias = _sum_to_shape(d_logits.astype(logits_dtype), bias.shape).astype(bias.dtype)
    d_query = jnp.transpose(dq, (0, 2, 1, 3)).astype(q_h.dtype)
    d_key = jnp.transpose(dk_t, (0, 3, 1, 2)).astype(k_t.dtype)
    d_value = jnp.transpose(dv_t, (0, 3, 1, 2)).astype(v_h.dtype)
    return d_query, d_key, d_value, d_bias, None


_attention_with_fast_backward.defvjp(_attention_fwd, _attention_bwd)


_warned_cudnn_fallback = False


def fused_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Optional[Array] = None,
    mask: Optional[Array] = None,
    *,
    is_causal: bool = False,
) -> Array:
    """`jax.nn.dot_product_attention` with T5's unit scale.

    On GPU with bfloat16/float16 activations this asks for the cuDNN kernel
    (bias and mask are then broadcast to full [b or 1, h, q, k] shapes and
    cast to the activation dtype, as cuDNN wants); if cuDNN rejects the
    shapes it falls back to XLA. Everywhere else it is the XLA
    implementation, numerically equal to `einsum_attention`.
    """
    global _warned_cudnn_fallback
    if jax.default_backend() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16):
        q_len, k_len = query.shape[1], key.shape[1]
        c_bias = None if bias is None else jnp.broadcast_to(
            bias, bias.shape[:2] + (q_len, k_len)).astype(query.dtype)
        c_mask = None if mask is None else jnp.broadcast_to(mask, mask.shape[:2] + (q_len, k_len))
        try:
            return jax.nn.dot_product_attention(
                query, key, value, bias=c_bias, mask=c_mask, scale=1.0, is_causal=is_causal,
                implementation="cudnn",
            )
        except (NotImplementedError, ValueError, RuntimeError) as e:  # unsupported shape/dtype
            if not _warned_cudnn_fallback:
                logger.warning("cuDNN attention unavailable (%s); using the XLA implementation", e)
                _warned_cudnn_fallback = True
    return jax.nn.dot_product_attention(
        query, key, value, bias=bias, mask=mask, scale=1.0, is_causal=is_causal, implementation="xla"
    )


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
    """Bias-free T5 attention. Kernels: query/key/value ('embed','heads','kv'),
    out ('heads','kv','embed'). The query init is scaled by 1/sqrt(d_kv) and the
    dot product is left unscaled, as in T5."""

    num_heads: int
    head_dim: int
    dtype: DType = jnp.float32
    dropout_rate: float = 0.0
    implementation: str = "xla"
    float32_logits: bool = True
    fast_backward: bool = False  # einsum_attention's fast_backward ('xla' path only)
    # Autoregressive decoding with a KV cache ('cache' collection): see below.
    decode: bool = False
    cross_attention: bool = False

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
        if self.implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attention implementation {self.implementation!r}; valid options are "
                f"{ATTENTION_IMPLEMENTATIONS}"
            )
        d_model = inputs_q.shape[-1]
        d_kv_in = d_model if inputs_kv is None else inputs_kv.shape[-1]
        h, k = self.num_heads, self.head_dim
        qkv_init = kernel_init(in_axis=0, out_axis=(1, 2))
        wq = _param(self, "query", _scaled(qkv_init, k**-0.5), (d_model, h, k), ("embed", "heads", "kv"))
        wk = _param(self, "key", qkv_init, (d_kv_in, h, k), ("embed", "heads", "kv"))
        wv = _param(self, "value", qkv_init, (d_kv_in, h, k), ("embed", "heads", "kv"))
        wo = _param(self, "out", kernel_init(in_axis=(0, 1), out_axis=2), (h, k, d_model), ("heads", "kv", "embed"))

        dt = self.dtype
        xq = inputs_q.astype(dt)
        axes = ("batch", "length", "heads", "kv")
        q = nn.with_logical_constraint(_dense(xq, wq.astype(dt)), axes)
        if self.decode:
            cached = self._cached_attention(q, inputs_q, inputs_kv, wk, wv, bias, mask, decode_index)
            if cached is not None:
                out = nn.with_logical_constraint(cached.astype(dt), axes)
                y = _dense(out, wo.astype(dt), in_dims=2)
                return nn.with_logical_constraint(y, ("batch", "length", "embed"))
        if inputs_kv is None:
            raise ValueError("inputs_kv is required unless a decode cache holds the keys and values")
        xkv = xq if inputs_kv is inputs_q else inputs_kv.astype(dt)
        key = nn.with_logical_constraint(_dense(xkv, wk.astype(dt)), axes)
        value = nn.with_logical_constraint(_dense(xkv, wv.astype(dt)), axes)
        if self.decode:  # the first call: create the cache entries
            if self.cross_attention:
                self.variable("cache", "cross_key", lambda: _cache_layout_key(key))
                self.variable("cache", "cross_value", lambda: _cache_layout_value(value))
            else:
                self.variable("cache", "cached_key", jnp.zeros, _cache_shape_key(key.shape), key.dtype)
                self.variable("cache", "cached_value", jnp.zeros, _cache_shape_value(value.shape), value.dtype)

        use_dropout = self.dropout_rate > 0.0 and not deterministic
        if self.implementation == "dot_product" and not use_dropout:
            out = fused_attention(q, key, value, bias, mask, is_causal=is_causal)
        else:  # 'xla', or 'dot_product' with attention dropout (not supported there)
            drop = None
            if use_dropout:
                drop = lambda w: nn.Dropout(self.dropout_rate)(w, deterministic=False)  # noqa: E731
            out = einsum_attention(
                q, key, value, bias, mask, is_causal=is_causal, float32_logits=self.float32_logits, dropout=drop,
                fast_backward=self.fast_backward,
            )
        out = nn.with_logical_constraint(out.astype(dt), axes)
        y = _dense(out, wo.astype(dt), in_dims=2)
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
            key = _dense(xkv, wk.astype(dt))
            value = _dense(xkv, wv.astype(dt))
            cached_key = self.variable("cache", "cached_key")
            cached_value = self.variable("cache", "cached_value")
            if key.shape[1] > cached_value.value.shape[2]:
                raise ValueError(
                    f"a chunk of {key.shape[1]} positions does not fit a cache of {cached_value.value.shape[2]}"
                )
            idx = jnp.asarray(decode_index, jnp.int32)
            zero = jnp.int32(0)
            cached_key.value = nn.with_logical_constraint(jax.lax.dynamic_update_slice(
                cached_key.value, _cache_layout_key(key).astype(cached_key.value.dtype), (zero, zero, zero, idx)),
                ("batch", "heads", "kv", "length"))
            cached_value.value = nn.with_logical_constraint(jax.lax.dynamic_update_slice(
                cached_value.value, _cache_layout_value(value).astype(cached_value.value.dtype),
                (zero, zero, idx, zero)), ("batch", "heads", "length", "kv"))
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
                logits = _apply_mask(logits, _fold_rows(mask, fold, k_t.shape[0]))
            logits = logits.reshape(logits.shape[:2] + (fold * q_len, logits.shape[-1]))
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        out = jnp.einsum("bhqk,bhkd->bqhd", weights.astype(v.dtype), v)
        return out.reshape((rows, q_len) + out.shape[2:])

# --------------------------------------------------------------------------
# Transformer layer and stack
# --------------------------------------------------------------------------


class TransformerLayer(nn.Module):
    """Pre-norm residual layer: self-attention, optional cross-attention, MLP.

    `config` is a T5Config or DecoderOnlyConfig (duck-typed: num_heads, d_kv,
    d_ff, dropout_rate, dtype, attention, float32_attention_logits,
    layer_norm_epsilon). Static choices (causality, dropout on/off) are
    attributes so the layer can be scanned and rematerialised without static
    call arguments. Returns (x, None) so it can be the body of nn.scan.
    """

    config: Any
    cross_attention: bool = False
    causal: bool = False
    deterministic: bool = True
    decode: bool = False  # KV-cache decoding (see MultiHeadAttention)

    @nn.compact
    def __call__(
        self,
        x: Array,
        self_bias: Optional[Array],
        self_mask: Optional[Array],
        encoded: Optional[Array] = None,
        cross_mask: Optional[Array] = None,
        decode_index: Optional[Array] = None,
    ) -> tuple[Array, None]:
        cfg = self.config
        dt = jnp.dtype(cfg.dtype)
        det = self.deterministic

        def norm(name):
            return RMSNorm(cfg.layer_norm_epsilon, dt, name=name)

        def attention(name, cross=False):
            return MultiHeadAttention(
                cfg.num_heads, cfg.d_kv, dt, cfg.dropout_rate, cfg.attention, cfg.float32_attention_logits,
                # The custom backward keeps the softmax weights, which remat
                # policies cannot see: only without rematerialisation.
                fast_backward=cfg.remat_policy == "none" and not self.decode,
                decode=self.decode, cross_attention=cross,
                name=name,
            )

        def residual_dropout(y):
            return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=det)

        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        h = norm("pre_self_attention_layer_norm")(x)
        h = attention("self_attention")(
            h, h, self_bias, self_mask, is_causal=self.causal, deterministic=det, decode_index=decode_index
        )
        x = x + residual_dropout(h)

        if self.cross_attention:
            h = norm("pre_cross_attention_layer_norm")(x)
            h = attention("encoder_decoder_attention", cross=True)(h, encoded, None, cross_mask, deterministic=det)
            x = x + residual_dropout(h)

        h = norm("pre_mlp_layer_norm")(x)
        h = GatedMlp(cfg.d_ff, cfg.dropout_rate, dt, name="mlp")(h, deterministic=det)
        x = x + residual_dropout(h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


def fold_mask_into_bias(
    bias: Optional[Array], mask: Optional[Array], is_causal: bool = False
) -> tuple[Optional[Array], Optional[Array]]:
    """Self-attention (bias, mask) for `einsum_attention`, prepared once per layer stack.

    The boolean mask (with the causal triangle when `is_causal`) becomes additive:
    0 where a key is visible, -0.7 * float32 max where it is not. When the bias
    already has the mask's shape or a larger one, the two are folded into one
    float32 bias, where(mask, bias, -0.7 max), and the mask is dropped. A
    batch-shared bias [1, h, q, k] with a per-example mask [b, 1, q, k] stays
    apart from the additive mask: neither pass then builds a [b, h, q, k]
    bias, and the gradient of the shared bias is summed over the batch inside
    each layer instead of summing one [b, h, q, k] tensor per layer.

    Same forward values as a select in every layer: a masked logit q.k + bias
    + (-0.7 * f32 max) rounds to -0.7 * f32 max exactly as the select gave it
    (|q.k + bias| is far below that constant's spacing), so the softmax
    weights, fully masked rows included (uniform weights), are equal.
    Gradients are equal too wherever a query row has at least one visible key
    (masked weights are exactly 0), which the model's masks guarantee (padding
    sees padding, causal rows see themselves); only a row with no visible key
    at all would now pass gradient to q and k.
    """
    if is_causal:
        q_len, k_len = (mask if mask is not None else bias).shape[-2:]
        tril = np.tril(np.ones((q_len, k_len), dtype=bool))[None, None]
        mask = tril if mask is None else jnp.logical_and(mask, tril)
    if mask is None:
        return bias, None
    if bias is not None:
        bias = bias.astype(jnp.promote_types(bias.dtype, jnp.float32))
        if jnp.broadcast_shapes(bias.shape, mask.shape) == bias.shape:
            return jnp.where(mask, bias, _large_negative(bias.dtype)), None
    return bias, jnp.where(mask, jnp.float32(0), _large_negative(jnp.float32))


def apply_layer_stack(
    config: Any,
    num_layers: int,
    x: Array,
    self_bias: Optional[Array],
    self_mask: Optional[Array],
    encoded: Optional[Array] = None,
    cross_mask: Optional[Array] = None,
    *,
    cross_attention: bool = False,
    causal: bool = False,
    deterministic: bool = True,
    decode: bool = False,
    decode_index: Optional[Array] = None,
) -> Array:
    """Runs `num_layers` TransformerLayers inside the calling compact module.

    Unscanned: submodules 'layers_0' ... 'layers_{n-1}'. Scanned
    (`config.scan_layers`): one submodule 'layers' whose params have a leading
    axis of size n named 'layers'. Either way each layer is wrapped in
    nn.remat when `config.remat_policy` is not 'none'. The bias and masks are
    shared by all layers (broadcast through the scan). With `decode`, each
    layer keeps its KV cache in the 'cache' collection (scanned: one stacked
    entry per name with the layer axis second, [batch, layers, ...], so that
    every cache leaf has the batch first as t5lite.decoding expects).
    """
    if config.attention == "xla" and (self_bias is not None or self_mask is not None):
        self_bias, self_mask = fold_mask_into_bias(self_bias, self_mask, causal)
        causal = False
    layer_cls = TransformerLayer
    if config.remat_policy != "none":
        layer_cls = nn.remat(
            layer_cls, policy=remat_policy(config.remat_policy), prevent_cse=not config.scan_layers
        )
    kwargs = dict(
        config=config, cross_attention=cross_attention, causal=causal, deterministic=deterministic, decode=decode
    )
    args = (self_bias, self_mask, encoded, cross_mask, decode_index)
    if config.scan_layers:
        scanned = nn.scan(
            layer_cls,
            variable_axes={"params": 0, "cache": 1},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(args),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scanned(**kwargs, name="layers")(x, *args)
        return x
    for i in range(num_layers):
        x, _ = layer_cls(**kwargs, name=f"layers_{i}")(x, *args)
    return x


def decode_self_attention_inputs(
    module: nn.Module,
    relpos: "RelativePositionBias",
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
    nothing.
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
    bias = relpos(q_len, max_len, q_pos[None], k_pos[None])
    return bias, mask

"""The Transformer layer and the layer stack of both model families.

By default everything follows the T5 v1.1 recipe: pre-norm residual blocks
with RMSNorm, gated-GELU feed-forward layers, bias-free multi-head attention
(t5lite.models.attention) whose 1/sqrt(d_kv) factor lives in the query
initialiser, and one relative position bias per stack
(t5lite.models.embeddings) computed once and shared by its layers. The
config's architecture fields (norm_type, mlp_activations, use_bias,
scale_attention_logits) turn the same layer into the original T5's or
GPT-2's (see t5lite.models.config.TransformerConfig).

Parameters are float32 and carry *logical* axis names (t5lite.models.params);
activations get `nn.with_logical_constraint` hints. The modules know nothing
about meshes, and nothing here imports gin, TensorFlow or seqio.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite.kernels import backend, xla_cpu
from t5lite.models import attention as attention_lib
from t5lite.models import config as config_lib
from t5lite.models import activations, moe, params
from t5lite.models import lora as lora_lib

Array = jax.Array
DType = Any


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no bias and no mean subtraction."""

  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = params.param(self, "scale", params.ones_init, (x.shape[-1],), ("embed",))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale).astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm (Ba et al. 2016, as in GPT-2 and BERT): (x - mean) * rsqrt(var + eps) * scale + bias.

  x [..., d] -> same shape in `dtype`, computed in float32 (biased variance,
  as torch.nn.LayerNorm). Params `scale` (init 1) and `bias` (init 0), axes ('embed',).
  """

  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = params.param(self, "scale", params.ones_init, (d,), ("embed",))
    bias = params.param(self, "bias", params.zeros_init, (d,), ("embed",))
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale + bias).astype(self.dtype)


def norm(config: Any, name: str) -> nn.Module:
  """The norm `config.norm_type` names ('rmsnorm' or 'layernorm'), called `name` (inside a compact method)."""
  cls = LayerNorm if config.norm_type == "layernorm" else RMSNorm
  return cls(config.layer_norm_epsilon, jnp.dtype(config.dtype), name=name)


class MlpBlock(nn.Module):
  """Feed-forward block wo(prod_i act_i(x @ wi_i + b_i)) + b_o (T5X's MlpBlock).

  x [..., d_model] -> [..., d_model] in `dtype`. One activation: kernel `wi`
  [d_model, d_ff]; several: `wi_0`, `wi_1`, ... (axes ('embed', 'mlp')); `wo`
  [d_ff, d_model] ('mlp', 'embed'). With `use_bias`, zero-initialised
  `wi_bias` / `wi_i_bias` [d_ff] ('mlp') and `wo_bias` [d_model] ('embed').
  The default is T5 v1.1's gated GELU, wo(gelu_tanh(x @ wi_0) * (x @ wi_1));
  ('relu',) is the original T5's, ('gelu',) GPT-2's (tanh GELU, 'gelu_new').
  With `lora`, the kernels it selects get low-rank adapters (t5lite.models.lora).
  """

  d_ff: int
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  activations: tuple[str, ...] = ("gelu", "linear")
  use_bias: bool = False
  lora: Optional[lora_lib.LoraConfig] = None

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    if not self.activations:
      raise ValueError(f"MlpBlock needs at least one activation from {config_lib.MLP_ACTIVATIONS}")
    d_model = x.shape[-1]
    dt = self.dtype
    x = x.astype(dt)
    names = ["wi"] if len(self.activations) == 1 else [f"wi_{i}" for i in range(len(self.activations))]
    h = None
    for name, act in zip(names, self.activations):
      wi = params.param(self, name, params.kernel_init(), (d_model, self.d_ff), ("embed", "mlp"))
      y = params.dense(x, wi.astype(dt))
      adapter = lora_lib.adapter(self, self.lora, name, wi.shape, ("embed", "mlp"), 1, deterministic)
      if adapter is not None:
        y = y + adapter(x, 1, dt)
      if self.use_bias:
        y = y + params.param(self, f"{name}_bias", params.zeros_init, (self.d_ff,), ("mlp",)).astype(dt)
      y = activations.activation(act, y)
      h = y if h is None else h * y
    wo = params.param(self, "wo", params.kernel_init(), (self.d_ff, d_model), ("mlp", "embed"))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    out = params.dense(h, wo.astype(dt))
    adapter = lora_lib.adapter(self, self.lora, "wo", wo.shape, ("mlp", "embed"), 1, deterministic)
    if adapter is not None:
      out = out + adapter(h, 1, dt)
    if self.use_bias:
      out = out + params.param(self, "wo_bias", params.zeros_init, (d_model,), ("embed",)).astype(dt)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))


# The default MlpBlock, T5 v1.1's gated GELU, under its earlier name.
GatedMlp = MlpBlock


# --------------------------------------------------------------------------
# Transformer layer and stack
# --------------------------------------------------------------------------


class TransformerLayer(nn.Module):
  """Residual layer: self-attention, optional cross-attention, MLP; each sublayer
  pre-norm x + f(norm(x)) or, with `config.norm_placement == 'post'` (BERT),
  norm(x + f(x)).

  `config` is a T5Config or DecoderOnlyConfig (duck-typed: num_heads, d_kv,
  d_ff, dropout_rate, dtype, attention, float32_attention_logits,
  layer_norm_epsilon, norm_type, mlp_activations, use_bias,
  scale_attention_logits). Static choices (causality, dropout on/off) are
  attributes so the layer can be scanned and rematerialised without static
  call arguments. With `moe` the MLP is a mixture of experts
  (t5lite.models.moe.MoeBlock; `token_valid` bool [batch, length] marks the
  tokens it routes). Returns (x, None) so it can be the body of nn.scan.
  """

  config: Any
  cross_attention: bool = False
  causal: bool = False
  deterministic: bool = True
  decode: bool = False  # KV-cache decoding (see MultiHeadAttention)
  moe: bool = False

  @nn.compact
  def __call__(
    self,
    x: Array,
    self_bias: Optional[Array],
    self_mask: Optional[Array],
    encoded: Optional[Array] = None,
    cross_mask: Optional[Array] = None,
    decode_index: Optional[Array] = None,
    token_valid: Optional[Array] = None,
  ) -> tuple[Array, None]:
    cfg = self.config
    dt = jnp.dtype(cfg.dtype)
    det = self.deterministic

    def attention(name, cross=False):
      return attention_lib.MultiHeadAttention(
        cfg.num_heads,
        cfg.d_kv,
        dt,
        cfg.dropout_rate,
        cfg.attention,
        cfg.float32_attention_logits,
        use_bias=cfg.use_bias,
        scale_logits=cfg.scale_attention_logits,
        # The XLA:CPU kernel's backward keeps the softmax weights, which
        # remat policies cannot see: only without rematerialisation.
        saves_weights_ok=cfg.remat_policy == "none" and not self.decode,
        decode=self.decode,
        cross_attention=cross,
        lora=cfg.lora,
        name=name,
      )

    def residual_dropout(y):
      return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=det)

    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    post = cfg.norm_placement == "post"

    def sublayer(name, x, fn):
      """Pre-norm x + f(norm(x)), or post-norm norm(x + f(x)); the norm is `{pre|post}_{name}_layer_norm`."""
      if post:
        return norm(cfg, f"post_{name}_layer_norm")(x + residual_dropout(fn(x)))
      return x + residual_dropout(fn(norm(cfg, f"pre_{name}_layer_norm")(x)))

    x = sublayer(
      "self_attention",
      x,
      lambda h: attention("self_attention")(
        h, h, self_bias, self_mask, is_causal=self.causal, deterministic=det, decode_index=decode_index
      ),
    )
    if self.cross_attention:
      x = sublayer(
        "cross_attention",
        x,
        lambda h: attention("encoder_decoder_attention", cross=True)(h, encoded, None, cross_mask, deterministic=det),
      )

    def mlp(h):
      if self.moe:
        return moe.MoeBlock(cfg, name="mlp")(h, token_valid, deterministic=det)
      block = MlpBlock(cfg.d_ff, cfg.dropout_rate, dt, cfg.mlp_activations, cfg.use_bias, lora=cfg.lora, name="mlp")
      return block(h, deterministic=det)

    x = sublayer("mlp", x, mlp)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


def _layer_class(config: Any) -> Any:
  """TransformerLayer, wrapped in nn.remat when `config.remat_policy` is not 'none'."""
  if config.remat_policy == "none":
    return TransformerLayer
  return nn.remat(
    TransformerLayer, policy=config_lib.remat_policy(config.remat_policy), prevent_cse=not config.scan_layers
  )


class LayerBlock(nn.Module):
  """`moe_layer_interval` consecutive TransformerLayers 'sublayer_0', 'sublayer_1', ... (sublayer j
  sparse as layer j of the stack is, `config_lib.is_moe_layer`): the unit a scanned stack with a mixture
  of experts every `moe_layer_interval` layers repeats. Same call and return as TransformerLayer."""

  config: Any
  cross_attention: bool = False
  causal: bool = False
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, *args: Any) -> tuple[Array, None]:
    for j in range(self.config.moe_layer_interval):
      x, _ = _layer_class(self.config)(
        config=self.config,
        cross_attention=self.cross_attention,
        causal=self.causal,
        deterministic=self.deterministic,
        decode=self.decode,
        moe=config_lib.is_moe_layer(self.config, j),
        name=f"sublayer_{j}",
      )(x, *args)
    return x, None


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
  token_valid: Optional[Array] = None,
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

  With `config.num_experts`, layer i has a mixture-of-experts MLP when
  `config_lib.is_moe_layer(config, i)`, routing the tokens `token_valid`
  (bool [batch, length]; None: all) marks; a scanned stack then scans
  `LayerBlock`s of `moe_layer_interval` layers ('layers/sublayer_j/...',
  num_layers / interval of them) unless every layer is sparse. Each MoE layer
  sows its statistics (t5lite.models.moe), stacked along the scan axis.
  """
  implementation = backend.resolve_attention(config.attention, config.dtype, where=f"{type(config).__name__}.attention")
  if implementation == "cpu_dot_product" and (self_bias is not None or self_mask is not None):
    self_bias, self_mask = xla_cpu.fold_mask_into_bias(self_bias, self_mask, causal)
    causal = False
  layer_cls = _layer_class(config)
  kwargs = dict(
    config=config, cross_attention=cross_attention, causal=causal, deterministic=deterministic, decode=decode
  )
  args = (self_bias, self_mask, encoded, cross_mask, decode_index, token_valid)
  if config.scan_layers:
    length = num_layers
    scan_cls = layer_cls
    if config.num_experts and config.moe_layer_interval > 1:
      scan_cls = LayerBlock
      length = num_layers // config.moe_layer_interval
    elif config.num_experts:
      kwargs["moe"] = True
    scanned = nn.scan(
      scan_cls,
      variable_axes={"params": 0, "cache": 1, "intermediates": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * len(args),
      length=length,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = scanned(**kwargs, name="layers")(x, *args)
    return x
  for i in range(num_layers):
    x, _ = layer_cls(**kwargs, moe=config_lib.is_moe_layer(config, i), name=f"layers_{i}")(x, *args)
  return x

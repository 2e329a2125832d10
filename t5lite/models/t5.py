"""T5 v1.1 encoder-decoder Transformer (Flax linen).

The architecture of "T5 v1.1": untied input embedding and output projection,
gated-GELU MLPs, RMSNorm pre-norm blocks, no biases, no dropout in
pre-training, and one relative position bias table per stack (bidirectional
buckets in the encoder, causal buckets in the decoder) shared by all layers
of that stack. Packed examples are supported through segment ids and
positions; decoder inputs arrive already shifted (seqio does it), so the model
never shifts.

Typical use::

    cfg = t5_config('small', dtype='bfloat16')
    model = T5Transformer(cfg)
    variables = model.init(rng, **example_inputs())          # boxed params
    logits = model.apply(nn.unbox(variables), enc, dec, enable_dropout=True,
                         rngs={'dropout': key})
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite.models import attention as attention_lib
from t5lite.models import config as config_lib
from t5lite.models import embeddings, layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 v1.1 model (defaults: the 'small' size).

  dtype: activation dtype ('float32', 'bfloat16', 'float16' or a jnp dtype;
    stored as its string name). Parameters are always float32.
  scan_layers: run each stack with nn.scan (params get a leading 'layers' axis).
  remat_policy: 'none', 'full', 'dots_saveable' or 'minimal' (see
    t5lite.models.config.remat_policy).
  attention: 'auto' (the fastest on this backend), 'dot_product' (plain einsum,
    float32 softmax), 'cudnn_flash_jax' (cuDNN fused attention, GPU) or
    'cpu_dot_product' (the XLA:CPU kernels); see t5lite.kernels.backend.
  position_bias_from_positions: False (as T5X): relative positions are
    differences of token indices, one [1, heads, q, k] bias for the batch.
    For packed batches whose `*_positions` count up by one within each
    segment (seqio's packing) this is the same bias on every pair the
    segment mask leaves visible. True: differences of the `*_positions`
    features, a [batch, heads, q, k] bias, for positions that do not
    (slower: a gather and a scatter over batch x heads x q x k entries
    each step, about 0.3 s of a 10 s T5 small step on one CPU core).
  """

  vocab_size: int = 32128
  d_model: int = 512
  num_heads: int = 6
  d_kv: int = 64
  d_ff: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  dropout_rate: float = 0.0
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dtype: Any = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"
  attention: str = "auto"
  logits_via_embedding: bool = False
  float32_attention_logits: bool = True
  layer_norm_epsilon: float = 1e-6
  position_bias_from_positions: bool = False

  def __post_init__(self):
    config_lib.validate_transformer_config(self, ("num_encoder_layers", "num_decoder_layers"))

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


# Architecture of the published T5 v1.1 checkpoints (vocab 32128).
T5_PRESETS: dict[str, dict[str, Any]] = {
  # Not a published size: a quick model for tests and smoke runs.
  "tiny": dict(
    vocab_size=32128,
    d_model=128,
    num_heads=4,
    d_kv=32,
    d_ff=512,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dropout_rate=0.0,
  ),
  "small": dict(
    vocab_size=32128,
    d_model=512,
    num_heads=6,
    d_kv=64,
    d_ff=1024,
    num_encoder_layers=8,
    num_decoder_layers=8,
    dropout_rate=0.0,
  ),
  "base": dict(
    vocab_size=32128,
    d_model=768,
    num_heads=12,
    d_kv=64,
    d_ff=2048,
    num_encoder_layers=12,
    num_decoder_layers=12,
    dropout_rate=0.0,
  ),
  "large": dict(
    vocab_size=32128,
    d_model=1024,
    num_heads=16,
    d_kv=64,
    d_ff=2816,
    num_encoder_layers=24,
    num_decoder_layers=24,
    dropout_rate=0.0,
  ),
  "xl": dict(
    vocab_size=32128,
    d_model=2048,
    num_heads=32,
    d_kv=64,
    d_ff=5120,
    num_encoder_layers=24,
    num_decoder_layers=24,
    dropout_rate=0.0,
  ),
  "xxl": dict(
    vocab_size=32128,
    d_model=4096,
    num_heads=64,
    d_kv=64,
    d_ff=10240,
    num_encoder_layers=24,
    num_decoder_layers=24,
    dropout_rate=0.0,
  ),
}


def t5_config(preset: str, **overrides: Any) -> T5Config:
  """T5Config of a named size with field overrides, e.g. t5_config('base', dtype='bfloat16')."""
  if preset not in T5_PRESETS:
    raise ValueError(f"unknown T5 preset {preset!r}; valid presets are {sorted(T5_PRESETS)}")
  return T5Config(**{**T5_PRESETS[preset], **overrides})


class Encoder(nn.Module):
  """Embedding dropout, bidirectional layer stack, final RMSNorm."""

  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(
    self,
    tokens: Array,
    segment_ids: Optional[Array] = None,
    positions: Optional[Array] = None,
    deterministic: bool = True,
  ) -> Array:
    cfg = self.config
    dt = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = self.shared_embedding(tokens)
    x = dropout(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    length = tokens.shape[-1]
    bias = embeddings.RelativePositionBias(
      cfg.num_heads,
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      bidirectional=True,
      name="relpos_bias",
    )(length, length, *embeddings.bias_positions(cfg, positions))
    mask = attention_lib.encoder_self_attention_mask(tokens, segment_ids)
    x = layers.apply_layer_stack(cfg, cfg.num_encoder_layers, x, bias, mask, causal=False, deterministic=deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="encoder_norm")(x)
    x = dropout(x, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Decoder(nn.Module):
  """Causal layer stack with cross-attention, final RMSNorm, output logits."""

  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(
    self,
    encoded: Array,
    encoder_tokens: Array,
    decoder_tokens: Array,
    encoder_segment_ids: Optional[Array] = None,
    decoder_segment_ids: Optional[Array] = None,
    decoder_positions: Optional[Array] = None,
    deterministic: bool = True,
    decode: bool = False,
    decode_index: Optional[Array] = None,
  ) -> Array:
    """Logits of `decoder_tokens`. With `decode`, the first call (full-length
    decoder tokens [b, max_decode_len] and the encoder output) creates the
    'cache' collection: zero self-attention caches, the encoder keys and
    values of every cross-attention, and the encoder padding. Later calls
    pass `encoded=None`, `encoder_tokens=None`, a chunk of decoder tokens and
    its first position `decode_index`."""
    cfg = self.config
    dt = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = self.shared_embedding(decoder_tokens)
    y = dropout(y, deterministic=deterministic)
    y = nn.with_logical_constraint(y, ("batch", "length", "embed"))
    length = decoder_tokens.shape[-1]
    relpos = embeddings.RelativePositionBias(
      cfg.num_heads,
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      bidirectional=False,
      name="relpos_bias",
    )
    if decode and self.has_variable("cache", "key_valid"):
      valid = jnp.ones(decoder_tokens.shape, bool)
      bias, self_mask = attention_lib.decode_self_attention_inputs(self, relpos, valid, decode_index)
      causal = False
      cross_mask = self.get_variable("cache", "encoder_valid")[:, None, None, :]
    else:
      if decode:
        if encoded is None or encoder_tokens is None:
          raise ValueError("the first decode call needs the encoder output and the encoder tokens")
        self.variable("cache", "key_valid", jnp.zeros, decoder_tokens.shape, bool)
        self.variable("cache", "encoder_valid", lambda: encoder_tokens > 0)
      bias = relpos(length, length, *embeddings.bias_positions(cfg, decoder_positions))
      self_mask, causal = attention_lib.decoder_self_attention_mask(decoder_segment_ids)
      cross_mask = attention_lib.encoder_decoder_attention_mask(
        encoder_tokens, encoder_segment_ids, decoder_segment_ids
      )
    y = layers.apply_layer_stack(
      cfg,
      cfg.num_decoder_layers,
      y,
      bias,
      self_mask,
      None if encoded is None else encoded.astype(dt),
      cross_mask,
      cross_attention=True,
      causal=causal,
      deterministic=deterministic,
      decode=decode,
      decode_index=decode_index,
    )
    y = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="decoder_norm")(y)
    y = dropout(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / jnp.sqrt(jnp.float32(cfg.d_model))
    else:
      logits = embeddings.OutputDense(cfg.vocab_size, dt, name="logits_dense")(y)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class T5Transformer(nn.Module):
  """T5 v1.1 encoder-decoder. Returns float32 logits [batch, target_len, vocab].

  Parameter tree: token_embedder/embedding, encoder/{relpos_bias, layers_i
  (or layers when scanned), encoder_norm}, decoder/{relpos_bias, layers_i,
  decoder_norm, logits_dense}. Dropout draws from the 'dropout' rng.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = embeddings.Embed(cfg.vocab_size, cfg.d_model, cfg.activation_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(
    self,
    encoder_input_tokens: Array,
    encoder_segment_ids: Optional[Array] = None,
    encoder_positions: Optional[Array] = None,
    enable_dropout: bool = False,
  ) -> Array:
    """Encoder output [batch, input_len, d_model] in the activation dtype."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions, not enable_dropout)

  def decode(
    self,
    encoded: Array,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    encoder_segment_ids: Optional[Array] = None,
    decoder_segment_ids: Optional[Array] = None,
    decoder_positions: Optional[Array] = None,
    enable_dropout: bool = False,
  ) -> Array:
    """Float32 logits for full (teacher-forced) decoder inputs.

    `encoder_input_tokens` only supplies the padding mask of `encoded`.
    """
    return self.decoder(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decoder_positions,
      not enable_dropout,
    )

  def __call__(
    self,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    encoder_segment_ids: Optional[Array] = None,
    decoder_segment_ids: Optional[Array] = None,
    encoder_positions: Optional[Array] = None,
    decoder_positions: Optional[Array] = None,
    enable_dropout: bool = False,
    decode: bool = False,
  ) -> Array:
    """Teacher-forced logits. With `decode=True` (apply with
    mutable=['cache'], decoder tokens of the maximum decode length) it also
    creates the decoding cache; then call `decode_step`."""
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)
    if decode:
      return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens, deterministic=True, decode=True)
    return self.decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decoder_positions,
      enable_dropout,
    )

  def decode_step(self, decoder_input_tokens: Array, decode_index: Array) -> Array:
    """Logits [b, q, vocab] of decoder tokens [b, q] at positions
    decode_index.. from the cache (apply with mutable=['cache'])."""
    return self.decoder(None, None, decoder_input_tokens, deterministic=True, decode=True, decode_index=decode_index)


def example_inputs(batch_size: int = 1, input_length: int = 8, target_length: int = 8) -> dict[str, Array]:
  """All-ones int32 inputs with the right shapes, e.g. for `model.init`."""
  return dict(
    encoder_input_tokens=jnp.ones((batch_size, input_length), jnp.int32),
    decoder_input_tokens=jnp.ones((batch_size, target_length), jnp.int32),
  )


def abstract_variables(config: T5Config, batch_size: int = 1, input_length: int = 8, target_length: int = 8) -> Any:
  """Boxed variables as ShapeDtypeStructs (no memory, no compute): feed to
  t5lite.models.params.count_params, .logical_axes_tree or nn.get_partition_spec."""
  model = T5Transformer(config)
  return jax.eval_shape(
    lambda rng: model.init(rng, **example_inputs(batch_size, input_length, target_length)),
    jax.random.key(0),
  )

"""Decoder-only (language model) Transformer built from the T5 v1.1 blocks.

Same layers as the T5 decoder minus cross-attention: RMSNorm pre-norm blocks,
gated-GELU MLP, bias-free attention with a causal relative position bias
shared by all layers, and an untied output projection. With seqio's PrefixLM
feature converter, `decoder_causal_attention` marks the prefix (inputs) part,
whose tokens then attend to each other bidirectionally while the rest stays
causal. Inputs arrive already shifted; the model never shifts.
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
class DecoderOnlyConfig:
  """Hyper-parameters of a decoder-only model (defaults: the 'small' size).

  Field meanings are those of t5.T5Config; `num_layers` is the depth and
  `allow_prefix_lm` controls whether `decoder_causal_attention` is accepted.
  """

  vocab_size: int = 32128
  d_model: int = 768
  num_heads: int = 12
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 12
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
  allow_prefix_lm: bool = True
  position_bias_from_positions: bool = False

  def __post_init__(self):
    config_lib.validate_transformer_config(self, ("num_layers",))

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


DECODER_ONLY_PRESETS: dict[str, dict[str, Any]] = {
  "tiny": dict(vocab_size=32128, d_model=128, num_heads=4, d_kv=32, d_ff=512, num_layers=4, dropout_rate=0.0),
  "small": dict(vocab_size=32128, d_model=768, num_heads=12, d_kv=64, d_ff=2048, num_layers=12, dropout_rate=0.0),
  "base": dict(vocab_size=32128, d_model=1024, num_heads=16, d_kv=64, d_ff=2816, num_layers=24, dropout_rate=0.0),
  "1b": dict(vocab_size=32128, d_model=2048, num_heads=32, d_kv=64, d_ff=5120, num_layers=18, dropout_rate=0.0),
}


def decoder_only_config(preset: str, **overrides: Any) -> DecoderOnlyConfig:
  """DecoderOnlyConfig of a named size with field overrides."""
  if preset not in DECODER_ONLY_PRESETS:
    raise ValueError(f"unknown decoder-only preset {preset!r}; valid presets are {sorted(DECODER_ONLY_PRESETS)}")
  return DecoderOnlyConfig(**{**DECODER_ONLY_PRESETS[preset], **overrides})


class DecoderOnlyTransformer(nn.Module):
  """Decoder-only LM. Returns float32 logits [batch, length, vocab].

  Parameter tree: token_embedder/embedding, decoder/{relpos_bias, layers_i
  (or layers when scanned), decoder_norm, logits_dense}.
  """

  config: DecoderOnlyConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = embeddings.Embed(cfg.vocab_size, cfg.d_model, cfg.activation_dtype)
    self.decoder = _DecoderStack(cfg, self.token_embedder)

  def __call__(
    self,
    decoder_input_tokens: Array,
    decoder_segment_ids: Optional[Array] = None,
    decoder_positions: Optional[Array] = None,
    decoder_causal_attention: Optional[Array] = None,
    enable_dropout: bool = False,
    decode: bool = False,
  ) -> Array:
    """Teacher-forced logits. With `decode=True` (apply with
    mutable=['cache'], tokens of the full cache length: prompt plus decode
    length) it creates the zero decoding cache; then call `decode_step`."""
    if decoder_causal_attention is not None and not self.config.allow_prefix_lm:
      raise ValueError(
        "decoder_causal_attention was given but DecoderOnlyConfig.allow_prefix_lm is False; "
        "set allow_prefix_lm=True to train a prefix LM or drop the feature"
      )
    return self.decoder(
      decoder_input_tokens,
      decoder_segment_ids,
      decoder_positions,
      decoder_causal_attention,
      not enable_dropout,
      decode=decode,
    )

  def decode_step(
    self,
    decoder_input_tokens: Array,
    decode_index: Array,
    valid: Optional[Array] = None,
    bidirectional: bool = False,
  ) -> Array:
    """Logits [b, q, vocab] of a chunk of tokens [b, q] written to cache slots
    decode_index.. (apply with mutable=['cache']). A prompt is one chunk
    (prefill): `valid` marks its real positions (False for left padding)
    and `bidirectional` lets a prefix-LM prompt see itself whole."""
    if valid is None:
      valid = jnp.ones(decoder_input_tokens.shape, bool)
    return self.decoder(
      decoder_input_tokens,
      None,
      None,
      None,
      True,
      decode=True,
      decode_index=decode_index,
      valid=valid,
      bidirectional_chunk=bidirectional,
    )


class _DecoderStack(nn.Module):
  config: DecoderOnlyConfig
  shared_embedding: nn.Module

  @nn.compact
  def __call__(
    self,
    tokens: Array,
    segment_ids: Optional[Array],
    positions: Optional[Array],
    causal_attention: Optional[Array],
    deterministic: bool,
    decode: bool = False,
    decode_index: Optional[Array] = None,
    valid: Optional[Array] = None,
    bidirectional_chunk: bool = False,
  ) -> Array:
    cfg = self.config
    dt = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = self.shared_embedding(tokens)
    y = dropout(y, deterministic=deterministic)
    y = nn.with_logical_constraint(y, ("batch", "length", "embed"))
    length = tokens.shape[-1]
    # Causal buckets, as in the T5 decoder (also for a bidirectional prefix,
    # where keys to the right of the query share bucket 0, like T5X).
    relpos = embeddings.RelativePositionBias(
      cfg.num_heads,
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      bidirectional=False,
      name="relpos_bias",
    )
    if decode and self.has_variable("cache", "key_valid"):
      bias, mask = attention_lib.decode_self_attention_inputs(self, relpos, valid, decode_index, bidirectional_chunk)
      causal = False
    else:
      if decode:
        self.variable("cache", "key_valid", jnp.zeros, tokens.shape, bool)
      bias = relpos(length, length, *embeddings.bias_positions(cfg, positions))
      mask, causal = attention_lib.decoder_self_attention_mask(segment_ids, causal_attention, length)
    y = layers.apply_layer_stack(
      cfg,
      cfg.num_layers,
      y,
      bias,
      mask,
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


def example_inputs(batch_size: int = 1, length: int = 8) -> dict[str, Array]:
  """All-ones int32 inputs with the right shapes, e.g. for `model.init`."""
  return dict(decoder_input_tokens=jnp.ones((batch_size, length), jnp.int32))


def abstract_variables(config: DecoderOnlyConfig, batch_size: int = 1, length: int = 8) -> Any:
  """Boxed variables as ShapeDtypeStructs (no memory, no compute)."""
  model = DecoderOnlyTransformer(config)
  return jax.eval_shape(lambda rng: model.init(rng, **example_inputs(batch_size, length)), jax.random.key(0))

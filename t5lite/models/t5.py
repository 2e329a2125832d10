"""T5 v1.1 encoder-decoder Transformer (Flax linen).

The architecture of "T5 v1.1": untied input embedding and output projection,
gated-GELU MLPs, RMSNorm pre-norm blocks, no biases, no dropout in
pre-training, and one relative position bias table per stack (bidirectional
buckets in the encoder, causal buckets in the decoder) shared by all layers
of that stack. The architecture fields of TransformerConfig also express the
original T5 (ReLU MLP `mlp_activations=('relu',)`, tied embeddings with the
d_model**-0.5 output scale: `logits_via_embedding=True`). Packed examples are supported through segment ids and
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
from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite.models import config as config_lib
from t5lite.models import embeddings, stacks

Array = jax.Array


def _t5_size(d_model: int, num_heads: int, d_ff: int, num_layers: int, d_kv: int = 64) -> dict[str, Any]:
  return dict(
    vocab_size=32128,
    d_model=d_model,
    num_heads=num_heads,
    d_kv=d_kv,
    d_ff=d_ff,
    num_encoder_layers=num_layers,
    num_decoder_layers=num_layers,
    dropout_rate=0.0,
  )


# Architecture of the published T5 v1.1 checkpoints (vocab 32128); 'tiny' is not
# a published size but a quick model for tests and smoke runs.
T5_PRESETS: dict[str, dict[str, Any]] = {
  "tiny": _t5_size(128, 4, 512, 2, d_kv=32),
  "small": _t5_size(512, 6, 1024, 8),
  "base": _t5_size(768, 12, 2048, 12),
  "large": _t5_size(1024, 16, 2816, 24),
  "xl": _t5_size(2048, 32, 5120, 24),
  "xxl": _t5_size(4096, 64, 10240, 24),
  # Switch Transformer (Fedus et al. 2021): a T5 v1.1 size with a mixture of experts in every other
  # layer of both stacks (top-1 routing, capacity 1.25 / 2.0, aux loss 0.01, router z-loss 0.001).
  # switch_tiny is for tests and the CPU quickstart.
  "switch_tiny": dict(_t5_size(128, 4, 512, 2, d_kv=32), num_experts=8),
  "switch_base_8": dict(_t5_size(768, 12, 2048, 12), num_experts=8),
  "switch_base_16": dict(_t5_size(768, 12, 2048, 12), num_experts=16),
}


@dataclasses.dataclass(frozen=True)
class T5Config(config_lib.TransformerConfig):
  """Hyper-parameters of a T5 v1.1 model (defaults: the 'small' size).

  The shared fields are t5lite.models.config.TransformerConfig's; T5 adds the
  depth of each stack.
  """

  num_encoder_layers: int = 8
  num_decoder_layers: int = 8

  LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("num_encoder_layers", "num_decoder_layers")
  PRESETS: ClassVar[dict[str, dict[str, Any]]] = T5_PRESETS
  FAMILY: ClassVar[str] = "T5"


# t5_config('base', dtype='bfloat16'): T5Config of a named size with field overrides.
t5_config = T5Config.from_preset


class T5Transformer(nn.Module):
  """T5 v1.1 encoder-decoder. Returns float32 logits [batch, target_len, vocab].

  Parameter tree: token_embedder/embedding, encoder/{relpos_bias, layers_i
  (or layers when scanned), encoder_norm}, decoder/{relpos_bias, layers_i,
  decoder_norm, logits_dense}; with absolute positions each stack has
  position_embedder instead of relpos_bias, and logits_dense is absent with
  tied logits; with `config.prompt_tuning`, encoder/soft_prompt [N, d_model]
  (t5lite.models.prompt_tuning), whose N positions lead the encoder output
  and which the decoder's cross-attention always sees. Dropout draws from
  the 'dropout' rng.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = embeddings.Embed(cfg.vocab_size, cfg.d_model, cfg.activation_dtype)
    self.encoder = stacks.Encoder(cfg, self.token_embedder, cfg.num_encoder_layers)
    self.decoder = stacks.Decoder(cfg, self.token_embedder, cfg.num_decoder_layers, cross_attention=True)

  def encode(
    self,
    encoder_input_tokens: Array,
    encoder_segment_ids: Optional[Array] = None,
    encoder_positions: Optional[Array] = None,
    enable_dropout: bool = False,
  ) -> Array:
    """Encoder output [batch, input_len, d_model] in the activation dtype
    ([batch, N + input_len, d_model] with a soft prompt of N vectors)."""
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

    `encoder_input_tokens` only supplies the padding mask of `encoded`
    (with prompt tuning, of its positions after the prompt's N).
    """
    return self.decoder(
      decoder_input_tokens,
      encoded,
      encoder_input_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decoder_positions,
      deterministic=not enable_dropout,
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
      return self.decoder(decoder_input_tokens, encoded, encoder_input_tokens, deterministic=True, decode=True)
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
    return self.decoder(decoder_input_tokens, deterministic=True, decode=True, decode_index=decode_index)


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

"""Decoder-only (language model) Transformer built from the T5 v1.1 blocks.

Same layers as the T5 decoder minus cross-attention: RMSNorm pre-norm blocks,
gated-GELU MLP, bias-free attention with a causal relative position bias
shared by all layers, and an untied output projection. With seqio's PrefixLM
feature converter, `decoder_causal_attention` marks the prefix (inputs) part,
whose tokens then attend to each other bidirectionally while the rest stays
causal. Inputs arrive already shifted; the model never shifts. The
architecture fields of TransformerConfig turn the same stack into GPT-2
(norm_type='layernorm', mlp_activations=('gelu',), use_bias=True,
position_embedding='absolute' with max_position_embeddings,
logits_via_embedding=True, scale_tied_logits=False,
scale_attention_logits=True).
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


DECODER_ONLY_PRESETS: dict[str, dict[str, Any]] = {
  "tiny": dict(vocab_size=32128, d_model=128, num_heads=4, d_kv=32, d_ff=512, num_layers=4, dropout_rate=0.0),
  "small": dict(vocab_size=32128, d_model=768, num_heads=12, d_kv=64, d_ff=2048, num_layers=12, dropout_rate=0.0),
  "base": dict(vocab_size=32128, d_model=1024, num_heads=16, d_kv=64, d_ff=2816, num_layers=24, dropout_rate=0.0),
  "1b": dict(vocab_size=32128, d_model=2048, num_heads=32, d_kv=64, d_ff=5120, num_layers=18, dropout_rate=0.0),
  # 'tiny' with 8 experts in every other layer (Switch routing): the decoder-only mixture of experts.
  "moe_tiny": dict(
    vocab_size=32128, d_model=128, num_heads=4, d_kv=32, d_ff=512, num_layers=4, dropout_rate=0.0, num_experts=8
  ),
}


@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig(config_lib.TransformerConfig):
  """Hyper-parameters of a decoder-only model (defaults: the 'small' size).

  The shared fields are t5lite.models.config.TransformerConfig's (with this
  family's default sizes); `num_layers` is the depth and `allow_prefix_lm`
  controls whether `decoder_causal_attention` is accepted.
  """

  d_model: int = 768
  num_heads: int = 12
  d_ff: int = 2048
  num_layers: int = 12
  allow_prefix_lm: bool = True

  LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("num_layers",)
  PRESETS: ClassVar[dict[str, dict[str, Any]]] = DECODER_ONLY_PRESETS
  FAMILY: ClassVar[str] = "decoder-only"


# decoder_only_config('tiny', num_layers=2): DecoderOnlyConfig of a named size with field overrides.
decoder_only_config = DecoderOnlyConfig.from_preset


class DecoderOnlyTransformer(nn.Module):
  """Decoder-only LM. Returns float32 logits [batch, length, vocab].

  Parameter tree: token_embedder/embedding, decoder/{relpos_bias, layers_i
  (or layers when scanned), decoder_norm, logits_dense}; with absolute
  positions decoder/position_embedder instead of relpos_bias, and no
  logits_dense with tied logits. With `config.prompt_tuning`,
  decoder/soft_prompt [N, d_model] (t5lite.models.prompt_tuning) runs
  before the tokens; the logits are still those of the tokens
  [batch, length, vocab]. Its KV cache then has N more slots, the prompt
  in the first N (written by the `decode_step` chunk with `prompt_chunk`).
  """

  config: DecoderOnlyConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = embeddings.Embed(cfg.vocab_size, cfg.d_model, cfg.activation_dtype)
    self.decoder = stacks.Decoder(cfg, self.token_embedder, cfg.num_layers)

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
      segment_ids=decoder_segment_ids,
      positions=decoder_positions,
      causal_attention=decoder_causal_attention,
      deterministic=not enable_dropout,
      decode=decode,
    )

  def decode_step(
    self,
    decoder_input_tokens: Array,
    decode_index: Array,
    valid: Optional[Array] = None,
    bidirectional: bool = False,
    prompt_chunk: bool = False,
  ) -> Array:
    """Logits [b, q, vocab] of a chunk of tokens [b, q] written to token
    slots decode_index.. (apply with mutable=['cache']). A prompt is one
    chunk (prefill): `valid` marks its real positions (False for left
    padding) and `bidirectional` lets a prefix-LM prompt see itself whole.
    With `config.prompt_tuning` the first chunk (decode_index 0) must set
    `prompt_chunk` (static): the soft prompt runs before it and fills the
    cache's first N slots; token slot t is cache slot N + t
    (stacks.Decoder)."""
    return self.decoder(
      decoder_input_tokens,
      deterministic=True,
      decode=True,
      decode_index=decode_index,
      valid=valid,
      bidirectional_chunk=bidirectional,
      prompt_chunk=prompt_chunk,
    )


def example_inputs(batch_size: int = 1, length: int = 8) -> dict[str, Array]:
  """All-ones int32 inputs with the right shapes, e.g. for `model.init`."""
  return dict(decoder_input_tokens=jnp.ones((batch_size, length), jnp.int32))


def abstract_variables(config: DecoderOnlyConfig, batch_size: int = 1, length: int = 8) -> Any:
  """Boxed variables as ShapeDtypeStructs (no memory, no compute)."""
  model = DecoderOnlyTransformer(config)
  return jax.eval_shape(lambda rng: model.init(rng, **example_inputs(batch_size, length)), jax.random.key(0))

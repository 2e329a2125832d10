"""Encoder-only (BERT-style) Transformer built from the shared blocks.

BERT (Devlin et al. 2019) is the shared encoder stack (t5lite.models.stacks.Encoder)
configured as BERT: LayerNorm after each residual addition and after the
embeddings (`norm_placement='post'`), exact-GELU MLP with biases, biased
attention with the 1/sqrt(d_kv) factor at run time, learned absolute positions
and token type (segment) embeddings. On top of it, one of two heads:

- 'mlm': BERT's masked-language-model head (Hugging Face `BertLMPredictionHead`):
  dense d_model -> d_model + bias, GELU (erf), LayerNorm, then the tied token
  embedding plus an output bias: logits [batch, length, vocab].
- 'classification' / 'regression': BERT's pooler (dense + tanh on the first,
  `[CLS]`, position) and a dense classifier to `num_classes` logits (1 output for
  regression), with dropout on the pooled vector (`BertForSequenceClassification`).

Parameter tree: token_embedder/embedding; encoder/{position_embedder,
token_type_embedder, embedding_norm, layers_i (or layers, scanned)}; mlm/{transform,
transform_norm, output_bias} for 'mlm'; pooler and classifier otherwise. The heads'
names are what fine-tuning swaps: an MLM checkpoint starts a classifier with fresh
pooler and classifier (t5lite.checkpointing.load_params `new_heads`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite import checks
from t5lite.models import activations, config as config_lib
from t5lite.models import embeddings, layers, params, stacks

Array = jax.Array

HEADS = ("mlm", "classification", "regression")
# Top-level parameter names of each head (what a checkpoint of another head lacks or has in excess).
HEAD_PARAMS = {"mlm": ("mlm",), "classification": ("pooler", "classifier"), "regression": ("pooler", "classifier")}


def _bert_size(d_model: int, num_heads: int, num_layers: int, vocab_size: int = 30522) -> dict[str, Any]:
  return dict(
    vocab_size=vocab_size,
    d_model=d_model,
    num_heads=num_heads,
    d_kv=d_model // num_heads,
    d_ff=4 * d_model,
    num_layers=num_layers,
  )


# BERT sizes as published (Devlin et al. 2019 base; Turc et al. 2019 'tiny' 2 layers x 128),
# with BERT's uncased WordPiece vocabulary size. Experiments set vocab_size to their vocabulary's.
ENCODER_ONLY_PRESETS: dict[str, dict[str, Any]] = {
  "bert_tiny": _bert_size(128, 2, 2),
  "bert_mini": _bert_size(256, 4, 4),
  "bert_small": _bert_size(512, 8, 4),
  "bert_base": _bert_size(768, 12, 12),
  "bert_large": _bert_size(1024, 16, 24),
}


@dataclasses.dataclass(frozen=True)
class EncoderOnlyConfig(config_lib.TransformerConfig):
  """Hyper-parameters of an encoder-only model (defaults: BERT base, 110M).

  The shared fields are t5lite.models.config.TransformerConfig's, with BERT's
  defaults (post-LayerNorm with epsilon 1e-12, exact GELU, biases, scaled
  attention logits, 512 learned positions, tied MLM logits without the
  d_model**-0.5 scale, dropout 0.1). This family adds:
  num_layers: the depth.
  type_vocab_size: rows of the token type (segment) table, >= 0 (0: none; BERT 2).
  sep_id: the [SEP] id, which splits a pair's token types when a batch has no
    `encoder_token_type_ids` (0 up to and including the first [SEP], 1 after).
  classifier_dropout_rate: dropout on the pooled vector (None: dropout_rate).
  initializer_range: the standard deviation of the token, position and token
    type embeddings at initialisation (BERT's 0.02; the kernels keep the shared
    fan-in truncated normal).
  """

  vocab_size: int = 30522
  d_model: int = 768
  num_heads: int = 12
  d_kv: int = 64
  d_ff: int = 3072
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-12
  mlp_activations: tuple[str, ...] = ("gelu_exact",)
  use_bias: bool = True
  norm_type: str = "layernorm"
  norm_placement: str = "post"
  position_embedding: str = "absolute"
  max_position_embeddings: int = 512
  scale_attention_logits: bool = True
  logits_via_embedding: bool = True
  scale_tied_logits: bool = False
  num_layers: int = 12
  type_vocab_size: int = 2
  sep_id: int = 3
  classifier_dropout_rate: Optional[float] = None
  initializer_range: float = 0.02

  LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("num_layers",)
  PRESETS: ClassVar[dict[str, dict[str, Any]]] = ENCODER_ONLY_PRESETS
  FAMILY: ClassVar[str] = "encoder-only"

  def __post_init__(self):
    """The shared checks, then: type_vocab_size an integer >= 0, sep_id in [0, vocab_size),
    classifier_dropout_rate None or in [0, 1), and absolute positions (the family has no
    relative bias). Raises ValueError naming the field."""
    super().__post_init__()
    cls = type(self).__name__
    object.__setattr__(
      self, "type_vocab_size", checks.check_int(f"{cls}.type_vocab_size", self.type_vocab_size, minimum=0)
    )
    sep = checks.check_int(f"{cls}.sep_id", self.sep_id, minimum=0, maximum=self.vocab_size - 1)
    object.__setattr__(self, "sep_id", sep)
    rate = checks.check_float(
      f"{cls}.classifier_dropout_rate",
      self.classifier_dropout_rate,
      minimum=0.0,
      maximum=1.0,
      max_open=True,
      allow_none=True,
      hint=" (None: dropout_rate)",
    )
    object.__setattr__(self, "classifier_dropout_rate", rate)
    std = checks.check_float(f"{cls}.initializer_range", self.initializer_range, minimum=0.0, min_open=True)
    object.__setattr__(self, "initializer_range", std)
    if self.position_embedding != "absolute":
      raise checks.SettingError(
        f"{cls}.position_embedding={self.position_embedding!r}: the encoder-only family uses learned absolute "
        "positions ('absolute' with max_position_embeddings)"
      )
    if self.prompt_tuning is not None:
      raise checks.SettingError(f"{cls}.prompt_tuning: prompt tuning is not available for the encoder-only family")


# encoder_only_config('bert_tiny', vocab_size=8000): EncoderOnlyConfig of a named size with field overrides.
encoder_only_config = EncoderOnlyConfig.from_preset


def token_types_from_inputs(tokens: Array, sep_id: int) -> Array:
  """BERT token types of [CLS] A [SEP] B [SEP] rows: int32 [b, L], 0 up to and including the
  first `sep_id` of a row, 1 after it (padding included: it is masked anyway)."""
  after = jnp.cumsum((tokens == sep_id).astype(jnp.int32), axis=-1) - (tokens == sep_id).astype(jnp.int32)
  return (after > 0).astype(jnp.int32)


class _Dense(nn.Module):
  """A biased dense layer: kernel [in, features] with axes `axes`, bias [features]."""

  features: int
  axes: tuple[str, str]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = params.param(self, "kernel", params.kernel_init(), (x.shape[-1], self.features), self.axes)
    bias = params.param(self, "bias", params.zeros_init, (self.features,), self.axes[1:])
    return params.dense(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class MlmHead(nn.Module):
  """BERT's MLM head: float32 logits [b, L, vocab] of hidden states [b, L, d_model]."""

  config: EncoderOnlyConfig
  embedder: nn.Module

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    h = _Dense(cfg.d_model, ("embed", "mlp"), cfg.activation_dtype, name="transform")(x)
    h = activations.activation(cfg.mlp_activations[0], h)
    h = layers.norm(cfg, "transform_norm")(nn.with_logical_constraint(h, ("batch", "length", "embed")))
    logits = self.embedder.attend(h)
    bias = params.param(self, "output_bias", params.zeros_init, (cfg.vocab_size,), ("vocab",))
    return nn.with_logical_constraint(logits + bias, ("batch", "length", "vocab"))


class EncoderOnlyTransformer(nn.Module):
  """BERT: the encoder and one head (`head` in HEADS; `num_classes` outputs for 'classification').

  Returns float32 logits: [batch, length, vocab] ('mlm'), [batch, num_classes]
  ('classification') or [batch] ('regression').
  """

  config: EncoderOnlyConfig
  head: str = "mlm"
  num_classes: int = 2

  def setup(self):
    cfg = self.config
    self.token_embedder = embeddings.Embed(cfg.vocab_size, cfg.d_model, cfg.activation_dtype, cfg.initializer_range)
    self.encoder = stacks.Encoder(cfg, self.token_embedder, cfg.num_layers)
    if self.head == "mlm":
      self.mlm = MlmHead(cfg, self.token_embedder)
    else:
      self.pooler = _Dense(cfg.d_model, ("embed", "mlp"), cfg.activation_dtype)
      outputs = self.num_classes if self.head == "classification" else 1
      self.classifier = _Dense(outputs, ("embed", "classes"), cfg.activation_dtype)
      rate = cfg.dropout_rate if cfg.classifier_dropout_rate is None else cfg.classifier_dropout_rate
      self.classifier_dropout = nn.Dropout(rate)

  def encode(
    self,
    encoder_input_tokens: Array,
    encoder_token_type_ids: Optional[Array] = None,
    encoder_segment_ids: Optional[Array] = None,
    encoder_positions: Optional[Array] = None,
    enable_dropout: bool = False,
  ) -> Array:
    """Hidden states [b, L, d_model] (activation dtype) of int32 tokens [b, L] (0 = padding).

    Token types default to `token_types_from_inputs` (the first [SEP] splits a pair);
    packed rows (segment ids, positions restarting at 0) attend within their example."""
    if encoder_token_type_ids is None and self.config.type_vocab_size:
      encoder_token_type_ids = token_types_from_inputs(encoder_input_tokens, self.config.sep_id)
    return self.encoder(
      encoder_input_tokens,
      encoder_segment_ids,
      encoder_positions,
      deterministic=not enable_dropout,
      token_types=encoder_token_type_ids,
    )

  def __call__(
    self,
    encoder_input_tokens: Array,
    encoder_token_type_ids: Optional[Array] = None,
    encoder_segment_ids: Optional[Array] = None,
    encoder_positions: Optional[Array] = None,
    enable_dropout: bool = False,
  ) -> Array:
    if self.head not in HEADS:
      raise ValueError(f"unknown encoder-only head {self.head!r}; valid heads are {HEADS}")
    x = self.encode(
      encoder_input_tokens, encoder_token_type_ids, encoder_segment_ids, encoder_positions, enable_dropout
    )
    if self.head == "mlm":
      return self.mlm(x)
    if encoder_segment_ids is not None:
      raise ValueError("a classification head reads one example per row: unpack the batch (pack=False)")
    pooled = jnp.tanh(self.pooler(x[:, 0]))
    pooled = self.classifier_dropout(pooled, deterministic=not enable_dropout)
    logits = self.classifier(pooled).astype(jnp.float32)
    return logits[:, 0] if self.head == "regression" else logits


def example_inputs(batch_size: int = 1, length: int = 8) -> dict[str, Array]:
  """All-ones int32 inputs with the right shapes, e.g. for `model.init`."""
  return dict(encoder_input_tokens=jnp.ones((batch_size, length), jnp.int32))

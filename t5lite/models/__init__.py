"""t5lite model layer: T5 v1.1 encoder-decoder and decoder-only Transformers.

Modules: `config` (the configuration base both families extend), `params`
(parameters: logical names, initialisers, creation from shapes), `embeddings`
(token embeddings, output projection, relative position bias), `attention`
(attention, masks, KV cache), `layers` (the Transformer layer and layer stack),
`stacks` (the encoder and decoder stacks: the one embed-to-logits path),
`t5` and `decoder_only` (the two model families), `model` (the wrappers the
trainer uses).
Backend-specific kernels live in t5lite.kernels. Importing this package needs
only jax, flax and numpy (no gin, TF or seqio).
"""

from t5lite.models import attention, config, decoder_only, embeddings, layers, params, stacks, t5
from t5lite.models.config import TransformerConfig
from t5lite.models.decoder_only import (
  DECODER_ONLY_PRESETS,
  DecoderOnlyConfig,
  DecoderOnlyTransformer,
  decoder_only_config,
)
from t5lite.models.embeddings import relative_position_bucket
from t5lite.models.params import count_params, logical_axes_tree
from t5lite.models.t5 import T5_PRESETS, T5Config, T5Transformer, t5_config

__all__ = [
  "DECODER_ONLY_PRESETS",
  "DecoderOnlyConfig",
  "DecoderOnlyTransformer",
  "T5Config",
  "T5Transformer",
  "T5_PRESETS",
  "TransformerConfig",
  "attention",
  "config",
  "count_params",
  "decoder_only",
  "decoder_only_config",
  "embeddings",
  "layers",
  "logical_axes_tree",
  "params",
  "relative_position_bucket",
  "stacks",
  "t5",
  "t5_config",
]

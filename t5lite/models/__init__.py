"""t5lite model layer: T5 v1.1 encoder-decoder and decoder-only Transformers.

Importing this package needs only jax, flax and numpy (no gin, TF or seqio).
"""

from t5lite.models import decoder_only, layers, t5
from t5lite.models.decoder_only import (
    DECODER_ONLY_PRESETS,
    DecoderOnlyConfig,
    DecoderOnlyTransformer,
    decoder_only_config,
)
from t5lite.models.layers import count_params, logical_axes_tree, relative_position_bucket
from t5lite.models.t5 import T5_PRESETS, T5Config, T5Transformer, t5_config

__all__ = [
    "DECODER_ONLY_PRESETS",
    "DecoderOnlyConfig",
    "DecoderOnlyTransformer",
    "T5Config",
    "T5Transformer",
    "T5_PRESETS",
    "count_params",
    "decoder_only",
    "decoder_only_config",
    "layers",
    "logical_axes_tree",
    "relative_position_bucket",
    "t5",
    "t5_config",
]

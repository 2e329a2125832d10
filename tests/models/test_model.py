"""Validation of t5lite/models/model.py's settings (BaseModel's loss settings; DecodeOptions
is tested with decoding in test_kv_cache.py)."""

import math

import pytest

from t5lite.models import decoder_only, model as model_lib, t5

TINY = dict(vocab_size=64, d_model=16, num_heads=2, d_kv=8, d_ff=32)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(z_loss=-1e-4), "z_loss=-0.0001 must be a finite number >= 0.0"),
    (dict(z_loss=math.nan), "z_loss=nan must be a finite number >= 0.0"),
    (dict(z_loss=True), "z_loss=True must be a finite number >= 0.0, not a bool"),
    (dict(label_smoothing=1.0), "label_smoothing=1.0 must be a finite number in [0.0, 1.0)"),
    (
      dict(label_smoothing="0.1"),
      "label_smoothing='0.1' must be a finite number in [0.0, 1.0), not a string (write the number without quotes)",
    ),
  ],
)
def test_loss_settings_are_checked(kwargs, message):
  for make in (
    lambda **kw: model_lib.EncoderDecoderModel(
      config=t5.T5Config(**TINY, num_encoder_layers=1, num_decoder_layers=1), **kw
    ),
    lambda **kw: model_lib.DecoderOnlyModel(config=decoder_only.DecoderOnlyConfig(**TINY, num_layers=1), **kw),
  ):
    with pytest.raises(ValueError) as e:
      make(**kwargs)
    assert str(e.value) == message


def test_boundary_loss_settings_are_accepted():
  model = model_lib.EncoderDecoderModel(
    config=t5.T5Config(**TINY, num_encoder_layers=1, num_decoder_layers=1), z_loss=0, label_smoothing=0.0
  )
  assert (model.z_loss, type(model.z_loss), model.label_smoothing) == (0.0, float, 0.0)


def test_models_name_their_feature_converter_class():
  import seqio  # the models themselves import without seqio

  enc_dec = model_lib.EncoderDecoderModel(config=t5.T5Config(**TINY, num_encoder_layers=1, num_decoder_layers=1))
  assert enc_dec.feature_converter_cls is seqio.EncDecFeatureConverter
  config = decoder_only.DecoderOnlyConfig(**TINY, num_layers=1)
  assert model_lib.DecoderOnlyModel(config=config).feature_converter_cls is seqio.LMFeatureConverter
  prefix = model_lib.DecoderOnlyModel(config=config, prefix_lm=True)
  assert prefix.feature_converter_cls is seqio.PrefixLMFeatureConverter


def test_configs_share_one_base_and_keep_their_defaults():
  from t5lite.models import config

  for cls in (t5.T5Config, decoder_only.DecoderOnlyConfig):
    assert issubclass(cls, config.TransformerConfig)
  assert (t5.T5Config().d_model, t5.T5Config().num_encoder_layers) == (512, 8)
  assert (decoder_only.DecoderOnlyConfig().d_model, decoder_only.DecoderOnlyConfig().num_layers) == (768, 12)
  assert t5.t5_config("tiny") == t5.t5_config("tiny") and hash(t5.t5_config("tiny")) == hash(t5.t5_config("tiny"))
  with pytest.raises(ValueError, match="DecoderOnlyConfig.num_layers=0 must be an integer >= 1"):
    decoder_only.DecoderOnlyConfig(num_layers=0)

"""Tests of t5lite.models.config: the shared config checks."""

import jax
import jax.numpy as jnp
import pytest

from t5lite.models import attention, config, decoder_only, t5
from t5lite.models import model as model_lib


def test_helpers_reject_bad_values():
  assert config.dtype_name(jnp.bfloat16) == "bfloat16"
  assert config.dtype_name("float32") == "float32"
  with pytest.raises(ValueError, match="int8"):
    config.dtype_name("int8")
  assert config.remat_policy("none") is None
  assert config.remat_policy("minimal") is jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  with pytest.raises(ValueError, match="'sometimes'.*'full'"):
    config.remat_policy("sometimes")
  x = jnp.zeros((1, 2, 8))
  with pytest.raises(ValueError, match="'flash'"):
    jax.eval_shape(attention.MultiHeadAttention(2, 4, implementation="flash").init, jax.random.key(0), x, x)


def test_attention_names_checked_against_the_backend():
  # An earlier release's value gets what to write instead.
  with pytest.raises(ValueError, match="'xla' is no longer.*'dot_product'.*or 'auto'"):
    t5.t5_config("tiny", attention="xla")
  with pytest.raises(
    ValueError,
    match=r"T5Config.attention: unknown attention implementation 'flash'; valid values "
    r"are \('auto', 'dot_product', 'cudnn_flash_jax', 'cpu_dot_product'\)",
  ):
    t5.t5_config("tiny", attention="flash")
  # cuDNN attention on this CPU-only process: the config (which may come from a GPU run's
  # config.gin) is built, and the model refuses it when traced, naming what runs here.
  cfg = decoder_only.decoder_only_config("tiny", attention="cudnn_flash_jax", dtype="bfloat16")
  with pytest.raises(
    ValueError,
    match=r"DecoderOnlyConfig.attention='cudnn_flash_jax' runs on GPU only, and this "
    r"process computes on CPU; valid here: \('auto', 'dot_product', "
    r"'cpu_dot_product'\)",
  ):
    model_lib.DecoderOnlyModel(config=cfg).abstract_params({"decoder_input_tokens": (2, 8)})
  for name in ("auto", "dot_product", "cpu_dot_product"):
    assert t5.t5_config("tiny", attention=name).attention == name

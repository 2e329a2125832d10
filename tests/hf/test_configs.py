"""t5lite.hf.configs: config.json <-> t5lite configs, and what is refused."""

import pytest

from t5lite.hf import configs
from t5lite.models import decoder_only, t5

T5_JSON = dict(
  architectures=["T5ForConditionalGeneration"],
  model_type="t5",
  vocab_size=64,
  d_model=16,
  d_kv=4,
  d_ff=24,
  num_layers=2,
  num_decoder_layers=1,
  num_heads=2,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=24,
  dropout_rate=0.1,
  layer_norm_epsilon=1e-5,
)


@pytest.mark.parametrize(
  "proj, expected",
  [
    ("gated-gelu", ("gelu", "linear")),  # transformers' historical meaning: the tanh GELU
    ("gated-gelu_new", ("gelu", "linear")),
    ("gated-silu", ("silu", "linear")),
    ("relu", ("relu",)),
    ("gelu", ("gelu_exact",)),  # plain 'gelu' is transformers' erf GELU
  ],
)
def test_feed_forward_proj(proj, expected):
  assert configs.t5_mlp_activations(proj) == expected


def test_t5_fields_and_output_scaling():
  cfg = configs.to_t5lite(dict(T5_JSON, feed_forward_proj="gated-gelu", tie_word_embeddings=False), tied_output=False)
  assert isinstance(cfg, t5.T5Config)
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.relative_attention_max_distance) == (2, 1, 24)
  assert (cfg.dropout_rate, cfg.layer_norm_epsilon, cfg.logits_via_embedding) == (0.1, 1e-5, False)
  # transformers 5 writes tie_word_embeddings=True for every T5 and keeps the scaling in scale_decoder_outputs.
  v5_v11 = dict(T5_JSON, tie_word_embeddings=True, scale_decoder_outputs=False)
  assert not configs.t5_scales_tied_output(v5_v11)
  assert configs.t5_scales_tied_output(dict(T5_JSON, feed_forward_proj="relu"))  # original T5: no key, tied
  assert not configs.t5_scales_tied_output(dict(T5_JSON, model_type="mt5", tie_word_embeddings=True))
  tied = configs.to_t5lite(dict(T5_JSON, feed_forward_proj="relu"), tied_output=True)
  assert (tied.logits_via_embedding, tied.scale_tied_logits, tied.mlp_activations) == (True, True, ("relu",))
  with pytest.raises(configs.UnsupportedModelError, match="untied lm_head.weight with the decoder output scaled"):
    configs.to_t5lite(dict(T5_JSON, feed_forward_proj="relu"), tied_output=False)
  # Overrides set runtime fields on top.
  bf16 = configs.to_t5lite(dict(T5_JSON, tie_word_embeddings=False), tied_output=False, overrides={"dtype": "bfloat16"})
  assert bf16.dtype == "bfloat16"


def test_t5_export_config_reads_back_the_same():
  for hf in (
    dict(T5_JSON, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    dict(T5_JSON, feed_forward_proj="relu"),
    dict(T5_JSON, feed_forward_proj="gated-silu", tie_word_embeddings=False),
  ):
    tied = hf.get("tie_word_embeddings", True)
    cfg = configs.to_t5lite(hf, tied_output=tied)
    back = configs.from_t5lite(cfg)
    assert back["scale_decoder_outputs"] == tied and back["tie_word_embeddings"] == tied
    assert configs.to_t5lite(back, tied_output=tied) == cfg


def test_gpt2_fields():
  hf = dict(
    architectures=["GPT2LMHeadModel"],
    model_type="gpt2",
    vocab_size=64,
    n_embd=24,
    n_head=3,
    n_layer=2,
    n_positions=40,
    activation_function="gelu_new",
  )
  cfg = configs.to_t5lite(hf, tied_output=True)
  assert isinstance(cfg, decoder_only.DecoderOnlyConfig)
  assert (cfg.d_kv, cfg.d_ff, cfg.max_position_embeddings, cfg.layer_norm_epsilon) == (8, 96, 40, 1e-5)
  assert cfg.scale_attention_logits and not cfg.scale_tied_logits and cfg.use_bias
  assert configs.to_t5lite(configs.from_t5lite(cfg), tied_output=True) == cfg
  with pytest.raises(configs.UnsupportedModelError, match="scale_attn_by_inverse_layer_idx"):
    configs.to_t5lite(dict(hf, scale_attn_by_inverse_layer_idx=True), tied_output=True)
  with pytest.raises(configs.UnsupportedModelError, match="n_embd=25 is not divisible by n_head=3"):
    configs.to_t5lite(dict(hf, n_embd=25), tied_output=True)
  with pytest.raises(configs.UnsupportedModelError, match="activation 'tanh' is not supported"):
    configs.to_t5lite(dict(hf, activation_function="tanh"), tied_output=True)


def test_unknown_architecture_names_what_is_supported():
  with pytest.raises(
    configs.UnsupportedModelError, match=r"\['LlamaForCausalLM'\].*'llama'.*T5ForConditionalGeneration"
  ):
    configs.family({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
  assert configs.family({"model_type": "mt5"}) == "t5"  # no architectures: the model_type decides
  # The published original T5 configs (t5-small ... t5-11b) still name the class T5WithLMHeadModel.
  assert configs.family({"architectures": ["T5WithLMHeadModel"], "model_type": "t5"}) == "t5"


def test_exact_gated_gelu_is_not_exported_as_the_tanh_one():
  cfg = t5.t5_config("tiny", mlp_activations=("gelu_exact", "linear"))
  with pytest.raises(configs.UnsupportedModelError, match="'gated-gelu' is the tanh GELU"):
    configs.from_t5lite(cfg)


def test_a_mixture_of_experts_is_not_exported():
  with pytest.raises(configs.UnsupportedModelError, match=r"num_experts=8 \(needs 0\)"):
    configs.from_t5lite(t5.t5_config("switch_tiny"))
  with pytest.raises(configs.UnsupportedModelError, match=r"num_experts=8 \(needs 0\)"):
    configs.check_exportable(decoder_only.decoder_only_config("moe_tiny"))

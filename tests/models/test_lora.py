"""LoRA adapters in the model (t5lite/models/lora.py, peft.py; the attention and MLP blocks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite.models import decoder_only, lora, model as model_lib, peft, t5

TINY = dict(vocab_size=64, d_model=32, num_heads=2, d_kv=16, d_ff=48, num_encoder_layers=2, num_decoder_layers=2)
LENGTHS = {"inputs": 8, "targets": 6}


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = lambda n: jnp.asarray(rng.integers(1, 64, (2, n)), jnp.int32)  # noqa: E731
  return {"encoder_input_tokens": tokens(8), "decoder_input_tokens": tokens(6)}


def _models(scan=False, **lora_kwargs):
  base = model_lib.EncoderDecoderModel(config=t5.T5Config(**TINY, scan_layers=scan))
  cfg = lora.LoraConfig(**{"rank": 4, "alpha": 3.0, **lora_kwargs})
  return base, model_lib.EncoderDecoderModel(config=t5.T5Config(**TINY, scan_layers=scan, lora=cfg))


def _perturbed(params, scale=0.05):
  """`params` with every adapter matrix moved by noise (B away from zero)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(peft.trainable(params))
  keys = jax.random.split(jax.random.key(1), len(leaves))
  moved = [x + scale * jax.random.normal(k, x.shape) for (_, x), k in zip(leaves, keys)]
  return peft.combine(peft.frozen(params), jax.tree_util.tree_unflatten(treedef, moved))


@pytest.mark.parametrize("scan", [False, True])
def test_b_zero_is_the_base_exactly_and_merging_matches_within_1e5(scan):
  base, adapted = _models(scan, targets="all", dropout_rate=0.2)
  shapes = adapted.input_shapes(2, LENGTHS)
  params = adapted.init_params(jax.random.key(0), shapes)
  base_params = base.init_params(jax.random.key(0), shapes)
  # The base parameters of the adapted model are drawn as the base model's; A is random, B zero.
  assert jax.tree.structure(peft.frozen(params)) == jax.tree.structure(base_params)
  for a, b in zip(jax.tree.leaves(peft.frozen(params)), jax.tree.leaves(base_params)):
    np.testing.assert_array_equal(a, b)
  flat = {"/".join(str(k.key) for k in p): x for p, x in jax.tree_util.tree_leaves_with_path(peft.trainable(params))}
  assert all(float(jnp.abs(x).max()) == 0.0 for k, x in flat.items() if k.endswith("_lora_b"))
  assert all(float(jnp.abs(x).max()) > 0.0 for k, x in flat.items() if k.endswith("_lora_a"))
  batch = _batch()
  adapted_logits, base_logits = jax.jit(adapted.logits), jax.jit(base.logits)
  reference = base_logits(base_params, batch)
  np.testing.assert_array_equal(adapted_logits(params, batch), reference)
  moved = _perturbed(params)
  out = adapted_logits(moved, batch)
  assert float(jnp.abs(out - reference).max()) > 0.1
  merged = lora.merge(moved, adapted.config.lora)
  assert jax.tree.structure(merged) == jax.tree.structure(base_params)
  np.testing.assert_allclose(base_logits(merged, batch), out, atol=1e-5, rtol=1e-5)


def test_adapter_shapes_axes_and_scale():
  base, adapted = _models(targets="attention_qv", rank=3, alpha=6.0)
  shapes = adapted.input_shapes(2, LENGTHS)
  axes = adapted.param_logical_axes(shapes)
  attn = axes["encoder"]["layers_0"]["self_attention"]
  assert attn["query_lora_a"] == ("embed", "lora_rank") and attn["query_lora_b"] == ("lora_rank", "heads", "kv")
  assert "key_lora_a" not in attn and "out_lora_a" not in attn
  params = adapted.init_params(jax.random.key(0), shapes)
  a = params["encoder"]["layers_0"]["self_attention"]["value_lora_a"]
  assert a.shape == (32, 3) and float(jnp.abs(a).max()) <= 32**-0.5  # U(+-1/sqrt(fan_in))
  # Doubling alpha doubles the adapters' effect on a layer's output (scale alpha / r).
  moved = _perturbed(params)
  _, twice = _models(targets="attention_qv", rank=3, alpha=12.0)
  base_params = peft.frozen(params)
  delta = lambda m: (
    lora.merge(moved, m.config.lora)["decoder"]["layers_1"]["self_attention"]["query"]
    - (  # noqa: E731
      base_params["decoder"]["layers_1"]["self_attention"]["query"]
    )
  )
  np.testing.assert_allclose(delta(twice), 2 * delta(adapted), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("position_embedding", ["relative", "absolute"])
def test_decoder_only_b_zero_is_the_base_exactly_and_merging_matches_within_1e5(position_embedding):
  sizes = dict(vocab_size=64, d_model=32, num_heads=2, d_kv=16, d_ff=48, num_layers=2)
  sizes.update(
    position_embedding=position_embedding, max_position_embeddings=16 if position_embedding == "absolute" else 0
  )
  base = model_lib.DecoderOnlyModel(config=decoder_only.DecoderOnlyConfig(**sizes))
  cfg = lora.LoraConfig(rank=3, alpha=5.0, targets="all")
  adapted = model_lib.DecoderOnlyModel(config=decoder_only.DecoderOnlyConfig(**sizes, lora=cfg))
  shapes = adapted.input_shapes(2, {"targets": 8})
  params = adapted.init_params(jax.random.key(0), shapes)
  base_params = base.init_params(jax.random.key(0), shapes)
  for a, b in zip(jax.tree.leaves(peft.frozen(params)), jax.tree.leaves(base_params)):
    np.testing.assert_array_equal(a, b)
  tokens = jnp.asarray(np.random.default_rng(2).integers(1, 64, (2, 8)), jnp.int32)
  batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens}
  reference = base.logits(base_params, batch)
  np.testing.assert_array_equal(adapted.logits(params, batch), reference)
  moved = _perturbed(params)
  out = adapted.logits(moved, batch)
  assert float(jnp.abs(out - reference).max()) > 0.1
  np.testing.assert_allclose(base.logits(lora.merge(moved, cfg), batch), out, atol=1e-5, rtol=1e-5)


def test_targets_select_by_preset_name_and_path():
  cfg = lora.LoraConfig(targets=("wo", "decoder/.*/encoder_decoder_attention/(key|value)$"))
  assert cfg.selects(("encoder", "layers_1", "mlp", "wo"))
  assert cfg.selects(("decoder", "layers_0", "encoder_decoder_attention", "value"))
  assert not cfg.selects(("decoder", "layers_0", "self_attention", "value"))
  assert not cfg.selects(("encoder", "layers_1", "mlp", "wi_0"))
  mlp = lora.LoraConfig(targets="mlp")
  assert mlp.selects(("decoder", "layers", "mlp", "wi_1")) and not mlp.selects(("decoder", "layers", "mlp", "router"))
  # A decoder-only model takes the same adapters.
  cfg = decoder_only.DecoderOnlyConfig(
    vocab_size=64, d_model=32, num_heads=2, d_kv=16, d_ff=48, num_layers=2, lora=lora.LoraConfig(rank=2, targets="mlp")
  )
  model = model_lib.DecoderOnlyModel(config=cfg)
  trained = peft.paths(peft.trainable(model.param_logical_axes(model.input_shapes(2, {"targets": 8}))))
  assert sorted("/".join(p) for p in trained) == sorted(
    f"decoder/layers_{i}/mlp/{k}_lora_{m}" for i in range(2) for k in ("wi_0", "wi_1", "wo") for m in "ab"
  )


def test_bad_settings_name_what_would_be_valid():
  _, nothing = _models(targets="decoder/.*/no_such_kernel")
  with pytest.raises(ValueError, match=r"selects no kernel .*encoder/layers_\*/self_attention/query.*presets: \["):
    nothing.abstract_params(nothing.input_shapes(2, LENGTHS))
  _, too_big = _models(rank=33, targets="query")
  with pytest.raises(ValueError, match=r"rank=33 is larger than kernel .*/query \(32, 2, 16\).* rank <= 32"):
    too_big.abstract_params(too_big.input_shapes(2, LENGTHS))
  with pytest.raises(ValueError, match=r"rank=0 must be an integer >= 1"):
    lora.LoraConfig(rank=0)
  with pytest.raises(ValueError, match=r"alpha=0.0 must be"):
    lora.LoraConfig(alpha=0.0)
  with pytest.raises(ValueError, match=r"not a valid regular expression"):
    lora.LoraConfig(targets="query(")
  with pytest.raises(TypeError, match=r"must be None or a LoraConfig"):
    t5.T5Config(**TINY, lora={"rank": 4})

"""Tests for t5lite/models/moe.py: routing by hand, capacity, the block against the dense MLP,
padding, scanning, decoding, and the configuration's refusals."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite import checkpointing, checks
from t5lite.models import config as config_lib
from t5lite.models import decoder_only, moe, stacks, t5
from t5lite.models import model as model_lib
from t5lite.models.model import DecodeOptions


def _logits(probs, shifts):
  """Router logits whose softmax is `probs` [S, E] and whose logsumexp is `shifts` [S]."""
  probs = np.asarray(probs, np.float64)
  return jnp.asarray((np.log(probs) + np.asarray(shifts)[:, None])[None], jnp.float32)


def test_expert_capacity():
  assert moe.expert_capacity(8, 4, 1, 1.25, 1) == 3  # ceil(2.5)
  assert moe.expert_capacity(8, 4, 2, 1.25, 1) == 5  # ceil(5.0): k counts
  assert moe.expert_capacity(8, 4, 1, 1.25, 4) == 4  # the minimum
  assert moe.expert_capacity(8, 2, 1, 4.0, 1) == 8  # never more than the group's tokens
  assert moe.expert_capacity(1, 8, 1, 2.0, 4) == 1  # a decoding step: one token, never dropped


def test_top1_routing_by_hand():
  # Tokens 0, 1, 2 choose expert 0 and token 3 expert 1; capacity 2 drops token 2.
  probs = [[0.7, 0.3], [0.6, 0.4], [0.8, 0.2], [0.1, 0.9]]
  r = moe.route(_logits(probs, [1.0, -2.0, 0.5, 0.0]), None, 1, 2)
  expected_dispatch = np.zeros((1, 4, 2, 2))
  expected_dispatch[0, 0, 0, 0] = expected_dispatch[0, 1, 0, 1] = expected_dispatch[0, 3, 1, 0] = 1
  np.testing.assert_array_equal(r["dispatch"], expected_dispatch)
  expected_combine = expected_dispatch * np.array([0.7, 0.6, 0.0, 0.9])[None, :, None, None]
  np.testing.assert_allclose(r["combine"], expected_combine, rtol=1e-6)
  # f = (3/4, 1/4), P = (0.55, 0.45): 2 * (0.75 * 0.55 + 0.25 * 0.45) = 1.05.
  np.testing.assert_allclose(r["aux_loss"], [1.05], rtol=1e-6)
  # logsumexp = the shifts: (1 + 4 + 0.25 + 0) / 4.
  np.testing.assert_allclose(r["z_loss"], [1.3125], rtol=1e-5)
  np.testing.assert_array_equal(r["dropped"], [1.0])
  np.testing.assert_array_equal(r["tokens"], [4.0])
  np.testing.assert_array_equal(r["expert_counts"], [3.0, 1.0])
  entropy = -sum(p * np.log(p) for row in probs for p in row)
  np.testing.assert_allclose(r["entropy"], [entropy], rtol=1e-5)


def test_padding_is_not_routed_nor_counted():
  probs = [[0.7, 0.3], [0.6, 0.4], [0.8, 0.2], [0.1, 0.9]]
  valid = jnp.asarray([[True, True, True, False]])
  r = moe.route(_logits(probs, [1.0, -2.0, 0.5, 3.0]), valid, 1, 3)
  assert float(jnp.sum(r["dispatch"][0, 3])) == 0.0
  np.testing.assert_array_equal(r["tokens"], [3.0])
  # f = (1, 0), P_0 = (0.7 + 0.6 + 0.8) / 3: 2 * 0.7 = 1.4; z = (1 + 4 + 0.25) / 3.
  np.testing.assert_allclose(r["aux_loss"], [1.4], rtol=1e-6)
  np.testing.assert_allclose(r["z_loss"], [1.75], rtol=1e-5)
  np.testing.assert_array_equal(r["expert_counts"], [3.0, 0.0])
  np.testing.assert_array_equal(r["dropped"], [0.0])


def test_top2_second_choices_queue_behind_every_first_choice():
  # Choices: token 0 -> (e0, e1), token 1 -> (e0, e2), token 2 -> (e2, e1); capacity 1.
  # First choices first: t0 takes e0, t1 is dropped from e0, t2 takes e2; then second
  # choices: t0 takes e1, t1's e2 and t2's e1 are full. (Token-major order would give
  # e2 to t1's second choice and drop t2's first.)
  probs = [[0.5, 0.3, 0.2], [0.6, 0.1, 0.3], [0.1, 0.2, 0.7]]
  r = moe.route(_logits(probs, [0.0, 0.0, 0.0]), None, 2, 1)
  d = np.asarray(r["dispatch"])[0, :, :, 0]
  np.testing.assert_array_equal(d, [[1, 1, 0], [0, 0, 0], [0, 0, 1]])
  c = np.asarray(r["combine"])[0, :, :, 0]
  np.testing.assert_allclose(c, [[0.625, 0.375, 0], [0, 0, 0], [0, 0, 0.7 / 0.9]], rtol=1e-6)
  np.testing.assert_array_equal(r["dropped"], [3.0])
  np.testing.assert_array_equal(r["expert_counts"], [2.0, 2.0, 2.0])
  # Top-2 load balancing counts a token for both its experts: f = (2/3, 2/3, 2/3).
  mean_p = np.mean(np.asarray(probs), axis=0)
  np.testing.assert_allclose(r["aux_loss"], [3 * np.sum(2 / 3 * mean_p)], rtol=1e-6)


TINY = dict(t5.T5_PRESETS["tiny"], vocab_size=64)


def _batch(rng, batch=3, li=12, lt=7, vocab=64):
  tgt = rng.integers(2, vocab, (batch, lt))
  tgt[0, 5:] = 0  # padding at the end of one row
  return {
    "encoder_input_tokens": rng.integers(2, vocab, (batch, li)),
    "decoder_input_tokens": np.concatenate([np.zeros((batch, 1), np.int64), tgt[:, :-1]], 1),
    "decoder_target_tokens": tgt,
    "decoder_loss_weights": (tgt > 0).astype(np.float32),
  }


@pytest.mark.parametrize("activations", [("gelu", "linear"), ("relu",)])
def test_one_expert_top1_equals_the_dense_model(activations):
  dense = model_lib.EncoderDecoderModel(config=t5.T5Config(**TINY, mlp_activations=activations, use_bias=True))
  sparse = model_lib.EncoderDecoderModel(
    config=t5.T5Config(**TINY, mlp_activations=activations, use_bias=True, num_experts=1, moe_layer_interval=1)
  )
  shapes = dense.input_shapes(3, {"inputs": 12, "targets": 7})
  p_dense = dense.init_params(jax.random.key(0), shapes)
  p_sparse = flax.traverse_util.flatten_dict(sparse.init_params(jax.random.key(1), shapes), sep="/")
  for key, value in flax.traverse_util.flatten_dict(p_dense, sep="/").items():
    if "/mlp/" in key:
      # The dense biases are zero at init: make them count.
      value = value + 0.1 if key.endswith("_bias") else value
      p_sparse[key] = value[None]
    else:
      p_sparse[key] = value
  p_dense = flax.traverse_util.unflatten_dict(
    {
      k: (v + 0.1 if "/mlp/" in k and k.endswith("_bias") else v)
      for k, v in flax.traverse_util.flatten_dict(p_dense, sep="/").items()
    },
    sep="/",
  )
  p_sparse = flax.traverse_util.unflatten_dict(p_sparse, sep="/")
  batch = _batch(np.random.default_rng(0))
  # Padding (row 0's last decoder position) is not routed: its MLP output is 0, where the dense
  # model computes one. Every real position must agree.
  real = np.asarray(stacks.decoder_tokens_valid(jnp.asarray(batch["decoder_input_tokens"])))
  assert real.sum() == 20
  want = np.asarray(dense.logits(p_dense, batch))[real]
  np.testing.assert_allclose(np.asarray(sparse.logits(p_sparse, batch))[real], want, rtol=1e-5, atol=1e-5)
  # Training mode (train capacity factor; dropout 0) too.
  got, stats = sparse.logits_and_moe_stats(p_sparse, batch, jax.random.key(3))
  np.testing.assert_allclose(np.asarray(got)[real], want, rtol=1e-5, atol=1e-5)
  assert float(stats["dropped"]) == 0.0 and float(stats["layers"]) == 4.0
  # Padding is not routed: 3 rows x 12 encoder tokens + (7 + 7 + 6) decoder tokens, per layer pair.
  assert float(stats["tokens"]) == 2 * (36 + 20)


def test_moe_layers_every_other_layer_and_param_axes():
  cfg = t5.t5_config("switch_tiny", vocab_size=64, num_encoder_layers=4)
  assert [config_lib.is_moe_layer(cfg, i) for i in range(4)] == [False, True, False, True]
  model = model_lib.EncoderDecoderModel(config=cfg)
  axes = flax.traverse_util.flatten_dict(model.param_logical_axes(model.input_shapes(1, {"inputs": 8, "targets": 8})))
  assert ("encoder", "layers_0", "mlp", "router") not in axes
  assert axes[("encoder", "layers_3", "mlp", "router")] == ("embed", "unmodeled")
  assert axes[("encoder", "layers_3", "mlp", "wi_0")] == ("expert", "embed", "mlp")
  assert axes[("decoder", "layers_1", "mlp", "wo")] == ("expert", "mlp", "embed")


def test_expert_kernels_are_initialised_per_expert():
  cfg = t5.t5_config("switch_tiny", vocab_size=64)
  model = model_lib.EncoderDecoderModel(config=cfg)
  p = model.init_params(jax.random.key(0), model.input_shapes(1, {"inputs": 8, "targets": 8}))
  wi = np.asarray(p["encoder"]["layers_1"]["mlp"]["wi_0"])
  # Fan-in d_model (128), not num_experts * d_model: std ~ 1/sqrt(128) (truncated normal).
  assert 0.7 / np.sqrt(128) < wi.std() < 1.1 / np.sqrt(128)
  assert not np.allclose(wi[0], wi[1])


def test_scanned_stack_equals_unrolled():
  """Scanned blocks of two layers ('layers/sublayer_j') start from the unrolled values and compute
  the same logits, statistics and KV-cache decoding."""
  outs, decoded = [], []
  for scan in (False, True):
    cfg = t5.t5_config("switch_tiny", vocab_size=64, scan_layers=scan, num_encoder_layers=4, num_decoder_layers=4)
    model = model_lib.EncoderDecoderModel(config=cfg)
    p = model.init_params(jax.random.key(0), model.input_shapes(3, {"inputs": 12, "targets": 7}))
    outs.append(model.logits_and_moe_stats(p, _batch(np.random.default_rng(1)), jax.random.key(2)))
    inputs = np.array([[5, 9, 11, 3, 7, 0], [4, 8, 2, 6, 13, 21]])
    decoded.append(model.predict_batch(p, inputs, DecodeOptions(max_decode_len=4, eos_id=-1))[:2])
  np.testing.assert_array_equal(decoded[1][0], decoded[0][0])
  np.testing.assert_allclose(decoded[1][1], decoded[0][1], rtol=1e-5)
  np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
  for k in ("aux_loss", "z_loss", "dropped", "tokens", "layers"):
    np.testing.assert_allclose(outs[1][1][k], outs[0][1][k], rtol=1e-5)
  assert outs[1][1]["expert_counts"].shape == outs[0][1]["expert_counts"].shape == (4, 8)


def test_loss_adds_the_auxiliary_losses_and_train_metrics():
  cfg = t5.t5_config("switch_tiny", vocab_size=64, aux_loss_factor=0.5, router_z_loss_factor=0.25)
  model = model_lib.EncoderDecoderModel(config=cfg)
  p = model.init_params(jax.random.key(0), model.input_shapes(3, {"inputs": 12, "targets": 7}))
  batch = _batch(np.random.default_rng(0))
  weights = batch["decoder_loss_weights"]
  plain, m = model.loss_fn(p, batch, None, weights)
  total, _ = model.loss_fn(p, batch, None, weights, aux_scale=jnp.float32(2.0))
  assert float(plain) == pytest.approx(float(m["loss_sum"]))
  # The metric sums hold the aux losses averaged over the 2 MoE layers, summed over the 3 rows.
  _, stats = model.logits_and_moe_stats(p, batch)
  assert float(stats["layers"]) == 2.0
  assert float(m["moe_aux_loss"]) == pytest.approx(float(stats["aux_loss"]) / 2, rel=1e-6)
  assert float(m["moe_groups"]) == 3.0
  extra = 2.0 * (0.5 * float(m["moe_aux_loss"]) + 0.25 * float(m["moe_z_loss"]))
  assert float(total) == pytest.approx(float(plain) + extra, rel=1e-6)
  summary = model.train_metrics(m)
  assert float(summary["moe/aux_loss"]) == pytest.approx(float(stats["aux_loss"]) / (2 * 3), rel=1e-6)
  counts = np.asarray(m["moe_expert_counts"])
  assert counts.shape == (2, 8)
  load = counts / counts.sum(-1, keepdims=True)
  assert float(summary["moe/expert_load_max"]) == pytest.approx(load.max())
  assert float(summary["moe/expert_load_min"]) == pytest.approx(load.min())
  assert float(summary["moe/dropped_fraction"]) == pytest.approx(float(m["moe_dropped"]) / counts.sum())
  assert 0 < float(summary["moe/router_entropy"]) <= np.log(8) + 1e-6
  assert model_lib.EncoderDecoderModel(config=t5.T5Config(**TINY)).train_metrics({"loss_sum": 1.0}) == {}


def test_metrics_and_gradients_do_not_depend_on_microbatches():
  """The aux losses enter the gradient and the metrics as batch means, whatever the number
  of microbatches (each row is its own routing group)."""
  from t5lite import trainer  # pylint: disable=g-import-not-at-top

  model = model_lib.EncoderDecoderModel(config=t5.t5_config("switch_tiny", vocab_size=64, aux_loss_factor=0.5))
  p = model.init_params(jax.random.key(0), model.input_shapes(4, {"inputs": 12, "targets": 7}))
  batch = {k: jnp.asarray(v) for k, v in _batch(np.random.default_rng(0), batch=4).items()}
  results = [trainer.compute_gradients(model, p, batch, jax.random.key(1), n) for n in (1, 2, 4)]
  want = {k: float(v) for k, v in model.train_metrics(results[0][1]).items()}
  assert want["moe/aux_loss"] > 0.5
  for grads, metrics in results[1:]:
    got = {k: float(v) for k, v in model.train_metrics(metrics).items()}
    assert got == pytest.approx(want, rel=1e-5)
    router = ("encoder", "layers_1", "mlp", "router")
    g1 = flax.traverse_util.flatten_dict(results[0][0])[router]
    np.testing.assert_allclose(flax.traverse_util.flatten_dict(grads)[router], g1, rtol=1e-4, atol=1e-7)


def test_jitter_and_expert_dropout_only_in_training():
  cfg = t5.t5_config("switch_tiny", vocab_size=64, router_jitter_noise=0.5, expert_dropout_rate=0.5)
  model = model_lib.EncoderDecoderModel(config=cfg)
  p = model.init_params(jax.random.key(0), model.input_shapes(3, {"inputs": 12, "targets": 7}))
  batch = _batch(np.random.default_rng(0))
  np.testing.assert_array_equal(model.logits(p, batch), model.logits(p, batch))
  a = model.logits(p, batch, jax.random.key(1))
  b = model.logits(p, batch, jax.random.key(2))
  assert not np.allclose(a, b)


def test_flops_count_active_experts():
  dense = model_lib.EncoderDecoderModel(config=t5.T5Config(**TINY))
  switch = model_lib.EncoderDecoderModel(config=t5.t5_config("switch_tiny", vocab_size=64))
  top2 = model_lib.EncoderDecoderModel(config=t5.t5_config("switch_tiny", vocab_size=64, num_selected_experts=2))
  lengths = {"inputs": 16, "targets": 8}
  router = 2 * 3 * 2 * 128 * 8 * (16 + 8)  # one router per stack: 3 x 2 x [128, 8] per token
  assert switch.flops_per_step(2, lengths) == pytest.approx(dense.flops_per_step(2, lengths) + router)
  mlp = 2 * 3 * 2 * 3 * 128 * 512 * (16 + 8)  # a second expert: 3 kernels [128, 512] per token
  assert top2.flops_per_step(2, lengths) == pytest.approx(switch.flops_per_step(2, lengths) + mlp)


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_kv_cache_decoding_matches_teacher_forcing(family):
  # Capacity never binds (eval factor 8): the cached steps see what the full pass saw.
  if family == "t5":
    cfg = t5.t5_config("switch_tiny", vocab_size=64, eval_capacity_factor=8.0)
    model = model_lib.EncoderDecoderModel(config=cfg)
    shapes = model.input_shapes(2, {"inputs": 10, "targets": 6})
  else:
    cfg = decoder_only.decoder_only_config("moe_tiny", vocab_size=64, eval_capacity_factor=8.0)
    model = model_lib.DecoderOnlyModel(config=cfg)
    shapes = model.input_shapes(2, {"targets": 16})
  p = model.init_params(jax.random.key(0), shapes)
  inputs = np.array([[5, 9, 11, 3, 7, 0, 0, 0, 0, 0], [4, 8, 2, 6, 13, 21, 17, 30, 12, 19]])
  tokens, scores, _ = model.predict_batch(p, inputs, DecodeOptions(max_decode_len=6, eos_id=-1))
  tokens = np.asarray(tokens)
  if family == "t5":
    batch = {"encoder_input_tokens": inputs, "decoder_input_tokens": np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]}
    logits = np.asarray(model.logits(p, batch))
  else:
    rows = []
    for r in range(2):
      prompt = inputs[r][inputs[r] > 0]
      seq = np.concatenate([[0], prompt, tokens[r][:-1]])
      full = np.asarray(model.logits(p, {"decoder_input_tokens": seq[None]}))[0]
      rows.append(full[len(prompt) :])
    logits = np.stack(rows)
  np.testing.assert_array_equal(tokens, logits.argmax(-1))
  log_probs = jax.nn.log_softmax(logits, -1)
  want = np.take_along_axis(np.asarray(log_probs), tokens[..., None], -1)[..., 0].sum(-1)
  np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-4)


def test_bad_moe_settings_are_refused():
  with pytest.raises(
    checks.SettingError, match=r"num_selected_experts=3 \(top-k routing\) is larger than num_experts=2"
  ):
    t5.T5Config(**TINY, num_experts=2, num_selected_experts=3)
  with pytest.raises(ValueError, match="train_capacity_factor"):
    t5.T5Config(**TINY, num_experts=2, train_capacity_factor=0.0)
  with pytest.raises(ValueError, match="eval_capacity_factor"):
    t5.T5Config(**TINY, num_experts=2, eval_capacity_factor=-1.0)
  with pytest.raises(ValueError, match="num_experts"):
    t5.T5Config(**TINY, num_experts=-1)
  with pytest.raises(ValueError, match="router_jitter_noise"):
    t5.T5Config(**TINY, num_experts=2, router_jitter_noise=1.0)
  with pytest.raises(checks.SettingError, match=r"num_encoder_layers=3 is not a multiple of moe_layer_interval=2"):
    t5.T5Config(**dict(TINY, num_encoder_layers=3), num_experts=2, scan_layers=True)
  # Unscanned, an odd depth is fine: layer 1 is the only sparse one.
  assert t5.T5Config(**dict(TINY, num_encoder_layers=3), num_experts=2).num_encoder_layers == 3


def test_dense_and_moe_checkpoints_are_told_apart():
  dense = model_lib.EncoderDecoderModel(config=t5.T5Config(**TINY))
  sparse = model_lib.EncoderDecoderModel(config=t5.t5_config("switch_tiny", vocab_size=64))
  shapes = dense.input_shapes(1, {"inputs": 8, "targets": 8})
  saved = checkpointing.param_shapes(flax.core.meta.unbox(sparse.abstract_params(shapes)))
  wanted = checkpointing.param_shapes(flax.core.meta.unbox(dense.abstract_params(shapes)))
  assert "encoder/layers_1/mlp/router" in saved
  text = checkpointing.describe_mismatch(saved, wanted)
  assert text.startswith(
    "the checkpoint is a mixture of experts with num_experts=8 and this model is dense (num_experts=0): "
    "set num_experts=8"
  )
  text = checkpointing.describe_mismatch(wanted, saved)
  assert text.startswith(
    "the checkpoint is dense (num_experts=0) and this model is a mixture of experts with num_experts=8: "
    "set num_experts=0 to use it"
  )
  every = model_lib.EncoderDecoderModel(config=t5.t5_config("switch_tiny", vocab_size=64, moe_layer_interval=1))
  other = checkpointing.param_shapes(flax.core.meta.unbox(every.abstract_params(shapes)))
  assert checkpointing.describe_mismatch(saved, other).startswith(
    "the checkpoint's mixture-of-experts layers are decoder/layers_1, encoder/layers_1 and this model's are "
    "decoder/layers_0, decoder/layers_1, encoder/layers_0, encoder/layers_1: set moe_layer_interval"
  )

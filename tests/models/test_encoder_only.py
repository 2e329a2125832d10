"""The encoder-only (BERT) model: attention pattern, padding and packing, heads, configuration errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite.models import encoder_model, encoder_only, layers

CFG = encoder_only.encoder_only_config(
  "bert_tiny", vocab_size=64, num_layers=2, d_model=32, num_heads=2, d_kv=16, d_ff=64, dropout_rate=0.0, sep_id=3
)


def _model(head="mlm", **overrides):
  cfg = encoder_only.EncoderOnlyConfig(**{**CFG.__dict__, **overrides}) if overrides else CFG
  m = encoder_model.EncoderOnlyModel(config=cfg, head=head, num_classes=3)
  return m, m.init_params(jax.random.key(0), m.input_shapes(1, {"inputs": 12}))


def _hidden(m, params, tokens, **kw):
  return m.module.apply(
    {"params": params}, jnp.asarray(tokens), method=encoder_only.EncoderOnlyTransformer.encode, **kw
  )


ROW = [2, 10, 11, 12, 3, 20, 21, 3, 0, 0, 0, 0]  # [CLS] a b c [SEP] d e [SEP] pad...


def test_attention_is_bidirectional():
  m, p = _model()
  a = _hidden(m, p, [ROW])
  changed = list(ROW)
  changed[6] = 30  # a later token
  b = _hidden(m, p, [changed])
  # Every earlier position sees the change (a causal model would leave positions 0..5 alone).
  assert np.all(np.max(np.abs(np.asarray(a - b))[0, :6], axis=-1) > 1e-4)


def test_padding_is_ignored():
  m, p = _model()
  short = _hidden(m, p, [ROW[:8]])
  long = _hidden(m, p, [ROW + [0] * 4])
  np.testing.assert_allclose(np.asarray(long)[0, :8], np.asarray(short)[0], rtol=1e-5, atol=1e-5)


def test_packed_rows_equal_separate_examples():
  m, p = _model()
  first, second = [2, 10, 11, 3], [2, 20, 21, 22, 3]
  packed = np.array([first + second + [0, 0, 0]])
  segments = np.array([[1] * 4 + [2] * 5 + [0] * 3])
  positions = np.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 0, 0]])
  types = np.zeros_like(packed)
  out = np.asarray(
    _hidden(m, p, packed, encoder_token_type_ids=types, encoder_segment_ids=segments, encoder_positions=positions)
  )
  np.testing.assert_allclose(out[0, :4], np.asarray(_hidden(m, p, [first]))[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[0, 4:9], np.asarray(_hidden(m, p, [second]))[0], rtol=1e-5, atol=1e-5)


def test_token_types_come_from_the_first_separator():
  types = encoder_only.token_types_from_inputs(jnp.asarray([ROW, [2, 5, 3, 6, 7, 8, 3, 9, 3, 0, 0, 0]]), 3)
  assert np.asarray(types).tolist() == [
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
  ]
  m, p = _model()
  derived = _hidden(m, p, [ROW])
  given = _hidden(m, p, [ROW], encoder_token_type_ids=jnp.asarray([[0] * 5 + [1] * 7]))
  zeros = _hidden(m, p, [ROW], encoder_token_type_ids=jnp.zeros((1, 12), jnp.int32))
  np.testing.assert_array_equal(np.asarray(derived), np.asarray(given))
  assert float(jnp.max(jnp.abs(derived - zeros))) > 1e-3  # the token type table is used


def test_post_norm_layer_is_norm_of_the_residual_sum():
  """One post-LN layer equals LN(h + MLP(h)) with h = LN(x + Attn(x)), recomputed from its own sublayers."""
  cfg = CFG
  layer = layers.TransformerLayer(cfg)
  x = jax.random.normal(jax.random.key(1), (1, 5, cfg.d_model))
  variables = layer.init(jax.random.key(2), x, None, None)
  p = variables["params"]
  assert sorted(p) == ["mlp", "post_mlp_layer_norm", "post_self_attention_layer_norm", "self_attention"]
  out, _ = layer.apply(variables, x, None, None)
  attn = layers.attention_lib.MultiHeadAttention(
    cfg.num_heads, cfg.d_kv, jnp.float32, 0.0, cfg.attention, True, use_bias=True, scale_logits=True
  )
  norm = layers.LayerNorm(cfg.layer_norm_epsilon)
  mlp = layers.MlpBlock(cfg.d_ff, 0.0, jnp.float32, cfg.mlp_activations, True)
  h = norm.apply({"params": p["post_self_attention_layer_norm"]}, x + attn.apply({"params": p["self_attention"]}, x, x))
  want = norm.apply({"params": p["post_mlp_layer_norm"]}, h + mlp.apply({"params": p["mlp"]}, h))
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_heads_shapes_and_tied_mlm_logits():
  m, p = _model("mlm")
  logits = m.logits(p, {"encoder_input_tokens": jnp.asarray([ROW])})
  assert logits.shape == (1, 12, 64) and logits.dtype == jnp.float32
  assert sorted(p) == ["encoder", "mlm", "token_embedder"]
  # The MLM decoder is the token embedding: changing the embedding of id 40 moves only its logit
  # (and the output bias of 40 adds to it exactly).
  p2 = jax.tree.map(lambda x: x, p)
  p2["mlm"]["output_bias"] = p["mlm"]["output_bias"].at[40].add(2.5)
  d = np.asarray(m.logits(p2, {"encoder_input_tokens": jnp.asarray([ROW])}) - logits)
  np.testing.assert_allclose(d[..., 40], 2.5, rtol=1e-6)
  assert np.abs(np.delete(d, 40, axis=-1)).max() == 0.0
  c, pc = _model("classification")
  assert sorted(pc) == ["classifier", "encoder", "pooler", "token_embedder"]
  assert c.logits(pc, {"encoder_input_tokens": jnp.asarray([ROW, ROW])}).shape == (2, 3)
  r, pr = _model("regression")
  assert r.logits(pr, {"encoder_input_tokens": jnp.asarray([ROW, ROW])}).shape == (2,)


def test_bert_base_has_the_published_size():
  m = encoder_model.EncoderOnlyModel(config=encoder_only.encoder_only_config("bert_base"), head="mlm")
  n = sum(x.size for x in jax.tree.leaves(m.abstract_params(m.input_shapes(1, {"inputs": 8}))))
  assert n == 109_514_298  # Hugging Face BertForMaskedLM('bert-base-uncased')
  c = encoder_model.EncoderOnlyModel(config=encoder_only.encoder_only_config("bert_base"), head="classification")
  n = sum(x.size for x in jax.tree.leaves(c.abstract_params(c.input_shapes(1, {"inputs": 8}))))
  assert n == 109_483_778  # BertForSequenceClassification with 2 labels


def _mlm_batch():
  tokens = np.array([ROW, [2, 4, 11, 4, 3, 0, 0, 0, 0, 0, 0, 0]])
  targets = np.zeros_like(tokens)
  targets[0, 2], targets[1, 1], targets[1, 3] = 11, 10, 12
  return {
    "encoder_input_tokens": tokens,
    "encoder_token_type_ids": np.zeros_like(tokens),
    "encoder_target_tokens": targets,
    "encoder_loss_weights": (targets > 0).astype(np.int32),
  }


def test_mlm_loss_counts_only_the_selected_tokens():
  m, p = _model("mlm")
  batch = {k: jnp.asarray(v) for k, v in _mlm_batch().items()}
  scale, denom = m.loss_scale(batch)
  assert float(denom) == 3.0
  loss, metrics = m.loss_fn(p, batch, None, scale)
  logits = m.logits(p, batch)
  logp = jax.nn.log_softmax(logits, -1)
  lse = jax.nn.logsumexp(logits, -1)
  z = 1e-4 * (lse[0, 2] ** 2 + lse[1, 1] ** 2 + lse[1, 3] ** 2)  # T5's z-loss, part of the loss
  want = -(logp[0, 2, 11] + logp[1, 1, 10] + logp[1, 3, 12]) + z
  assert float(metrics["loss_sum"]) == pytest.approx(float(want), rel=1e-5)
  assert float(metrics["z_loss_sum"]) == pytest.approx(float(z), rel=1e-4)
  assert float(metrics["target_tokens"]) == 3.0
  np.testing.assert_allclose(
    np.asarray(m.score_batch(p, batch)), [logp[0, 2, 11], logp[1, 1, 10] + logp[1, 3, 12]], rtol=1e-5
  )


def test_classification_and_regression_losses():
  c, p = _model("classification")
  batch = {
    "encoder_input_tokens": jnp.asarray([ROW, ROW[:5] + [0] * 7, ROW]),
    "classifier_labels": jnp.asarray([2, 0, 1]),
    "classifier_weights": jnp.asarray([1, 1, 0]),
  }
  scale, denom = c.loss_scale(batch)
  assert float(denom) == 2.0
  _, m = c.loss_fn(p, batch, None, scale)
  logits = c.logits(p, batch)
  logp = jax.nn.log_softmax(logits, -1)
  z = 1e-4 * (jax.nn.logsumexp(logits[0]) ** 2 + jax.nn.logsumexp(logits[1]) ** 2)
  assert float(m["loss_sum"]) == pytest.approx(-float(logp[0, 2] + logp[1, 0]) + float(z), rel=1e-5)
  assert float(m["target_tokens"]) == 2.0
  tokens, scores, extra = c.predict_batch(p, batch["encoder_input_tokens"], None)
  assert tokens.shape == (3, 1) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(tokens[:, 0]), np.argmax(np.asarray(logp), -1))
  r, pr = _model("regression")
  batch = dict(batch, classifier_labels=jnp.asarray([0.25, -1.5, 3.0]))
  scale, _ = r.loss_scale(batch)
  _, m = r.loss_fn(pr, batch, None, scale)
  pred = np.asarray(r.logits(pr, batch))
  assert float(m["loss_sum"]) == pytest.approx(float((pred[0] - 0.25) ** 2 + (pred[1] + 1.5) ** 2), rel=1e-5)


def test_mlm_prediction_fills_every_real_position():
  m, p = _model("mlm")
  tokens, scores, _ = m.predict_batch(p, jnp.asarray([ROW]), None)
  logits = np.asarray(m.logits(p, {"encoder_input_tokens": jnp.asarray([ROW])}))
  want = np.where(np.asarray(ROW) > 0, logits.argmax(-1)[0], 0)
  np.testing.assert_array_equal(np.asarray(tokens)[0], want)


def test_sequence_longer_than_the_position_table_is_refused():
  m = encoder_model.EncoderOnlyModel(
    config=encoder_only.EncoderOnlyConfig(**{**CFG.__dict__, "max_position_embeddings": 16})
  )
  with pytest.raises(
    ValueError, match=r"inputs'\]=17 is longer than the learned position table .*max_position_embeddings=16"
  ):
    m.input_shapes(1, {"inputs": 17})
  p = m.init_params(jax.random.key(0), m.input_shapes(1, {"inputs": 16}))
  with pytest.raises(ValueError, match="17 positions does not fit .*max_position_embeddings=16"):
    m.logits(p, {"encoder_input_tokens": jnp.ones((1, 17), jnp.int32)})


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"position_embedding": "relative"}, "learned absolute positions"),
    ({"type_vocab_size": -1}, "type_vocab_size"),
    ({"sep_id": 64}, "sep_id"),
    ({"norm_placement": "middle"}, "norm_placement='middle' is not one of the valid options"),
    ({"initializer_range": 0.0}, "initializer_range"),
  ],
)
def test_bad_config_is_refused(overrides, match):
  with pytest.raises(ValueError, match=match):
    encoder_only.EncoderOnlyConfig(**{**CFG.__dict__, **overrides})


def test_bad_head_is_refused():
  with pytest.raises(ValueError, match="head='ner' is not one of"):
    encoder_model.EncoderOnlyModel(config=CFG, head="ner")
  with pytest.raises(ValueError, match="num_classes"):
    encoder_model.EncoderOnlyModel(config=CFG, head="classification", num_classes=1)

"""KV-cache decoding of the models: cached logits equal a full recompute.

Enc-dec: the encoder runs once, each decode step feeds one token and must give
the logits that a teacher-forced forward pass over the whole prefix gives.
Decoder-only: prompts of different lengths are prefilled together (left
padding inside the cache) and continued token by token; each step must equal
the full forward pass over [BOS, prompt, continuation] of that row alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite import decoding
from t5lite.models import decoder_only, model as model_lib, t5

V = 64


def _t5(scan):
  m = model_lib.EncoderDecoderModel(config=t5.t5_config("tiny", vocab_size=V, scan_layers=scan))
  return m, m.init_params(jax.random.key(0), m.input_shapes(1, {"inputs": 8, "targets": 8}))


def _dec(scan, prefix_lm):
  m = model_lib.DecoderOnlyModel(
    config=decoder_only.decoder_only_config("tiny", vocab_size=V, scan_layers=scan), prefix_lm=prefix_lm
  )
  lengths = {"inputs": 4, "targets": 4} if prefix_lm else {"targets": 8}
  return m, m.init_params(jax.random.key(1), m.input_shapes(1, lengths))


@pytest.mark.parametrize("scan", [False, True])
def test_encoder_decoder_cache_equals_recompute(scan):
  m, params = _t5(scan)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, V, (3, 7)).astype(np.int32)
  enc[1, 4:] = 0  # padding in the encoder input
  length = 6
  dec = rng.integers(2, V, (3, length)).astype(np.int32)
  dec[:, 0] = 0
  full = m.module.apply({"params": params}, enc, dec)
  cache = m.init_decode_cache(params, jnp.asarray(enc), length)
  # Every cache leaf has the batch first (t5lite.decoding expands/reorders it).
  assert all(x.shape[0] == 3 for x in jax.tree.leaves(cache))
  step_fn = jax.jit(m.tokens_to_logits(params))
  for i in range(length):
    logits, cache = step_fn(jnp.asarray(dec[:, i : i + 1]), cache, jnp.int32(i))
    np.testing.assert_allclose(logits, full[:, i], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("scan,prefix_lm", [(False, False), (False, True), (True, False)])
def test_decoder_only_prefill_and_cache_equal_recompute(scan, prefix_lm):
  m, params = _dec(scan, prefix_lm)
  prompts = np.array([[5, 6, 7, 0], [9, 0, 0, 0], [3, 4, 5, 6], [0, 0, 0, 0]], np.int32)
  cont = np.random.default_rng(1).integers(2, V, (4, 5)).astype(np.int32)
  cache, start, offset = m.prefill(params, jnp.asarray(prompts), 5)
  assert offset == 4
  np.testing.assert_array_equal(start, [7, 9, 6, 0])  # last prompt token (0: no prompt)
  step_fn = jax.jit(m.tokens_to_logits(params, offset))
  got = []
  for j in range(5):
    tok = start[:, None] if j == 0 else jnp.asarray(cont[:, j - 1 : j])
    logits, cache = step_fn(tok, cache, jnp.int32(j))
    got.append(np.asarray(logits))
  for r in range(4):
    p = prompts[r][prompts[r] > 0]
    seq = np.concatenate([p, cont[r]])
    inputs = np.concatenate([[0], seq[:-1]])[None].astype(np.int32)
    causal = (np.arange(inputs.shape[1]) <= len(p))[None].astype(np.int32) if prefix_lm else None
    full = m.module.apply({"params": params}, inputs, decoder_causal_attention=causal)[0]
    for j in range(5):
      np.testing.assert_allclose(got[j][r], full[len(p) + j], atol=2e-5, rtol=1e-5)


def _greedy_by_recompute(m, params, enc, length):
  """Greedy decoding that runs the whole decoder over the prefix every step."""
  dec = np.zeros((enc.shape[0], length), np.int32)
  out = np.zeros((enc.shape[0], length), np.int32)
  for i in range(length):
    logits = m.module.apply({"params": params}, enc, dec)
    out[:, i] = np.argmax(np.asarray(logits[:, i]), axis=-1)
    if i + 1 < length:
      dec[:, i + 1] = out[:, i]
  return out


def test_predict_batch_greedy_equals_recompute_and_beam_one_equals_greedy():
  m, params = _t5(False)
  enc = np.random.default_rng(2).integers(2, V, (2, 7)).astype(np.int32)
  greedy = model_lib.DecodeOptions("greedy", max_decode_len=6, eos_id=-1)  # no EOS: all 6 steps
  tokens, scores, _ = jax.jit(m.predict_batch, static_argnums=2)(params, jnp.asarray(enc), greedy)
  np.testing.assert_array_equal(tokens, _greedy_by_recompute(m, params, enc, 6))
  beam1 = model_lib.DecodeOptions("beam", max_decode_len=6, beam_size=1, alpha=0.0, eos_id=-1)
  b_tokens, b_scores, extra = m.predict_batch(params, jnp.asarray(enc), beam1)
  np.testing.assert_array_equal(b_tokens, tokens)
  np.testing.assert_allclose(b_scores, scores, rtol=1e-5)
  assert extra["beam_tokens"].shape == (2, 1, 6)
  beam4 = model_lib.DecodeOptions("beam", max_decode_len=6, beam_size=4, alpha=0.0, eos_id=-1)
  _, s4, _ = m.predict_batch(params, jnp.asarray(enc), beam4)
  assert np.all(np.asarray(s4) >= np.asarray(scores) - 1e-5)  # a wider beam never scores worse


def test_score_batch_is_the_sum_of_target_log_probs():
  m, params = _t5(False)
  rng = np.random.default_rng(3)
  enc = rng.integers(2, V, (2, 7)).astype(np.int32)
  tgt = rng.integers(2, V, (2, 5)).astype(np.int32)
  weights = np.ones((2, 5), np.int32)
  weights[1, 3:] = 0
  batch = {
    "encoder_input_tokens": enc,
    "decoder_target_tokens": tgt,
    "decoder_loss_weights": weights,
    "decoder_input_tokens": np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], 1),
  }
  got = m.score_batch(params, batch)
  logp = jax.nn.log_softmax(m.module.apply({"params": params}, enc, batch["decoder_input_tokens"]))
  want = [sum(float(logp[r, i, tgt[r, i]]) for i in range(5) if weights[r, i]) for r in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_decoder_only_sampling_with_a_fixed_seed_is_reproducible():
  m, params = _dec(False, False)
  prompts = jnp.asarray([[5, 6, 0], [7, 8, 9]], jnp.int32)
  opts = model_lib.DecodeOptions("sample", max_decode_len=5, temperature=1.0, top_k=10, eos_id=-1)
  fn = jax.jit(m.predict_batch, static_argnums=2)
  a = fn(params, prompts, opts, jax.random.key(7))[0]
  b = fn(params, prompts, opts, jax.random.key(7))[0]
  c = fn(params, prompts, opts, jax.random.key(8))[0]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  greedy = fn(params, prompts, model_lib.DecodeOptions("greedy", max_decode_len=5, eos_id=-1))[0]
  topk1 = fn(
    params, prompts, model_lib.DecodeOptions("sample", max_decode_len=5, top_k=1, eos_id=-1), jax.random.key(3)
  )[0]
  np.testing.assert_array_equal(topk1, greedy)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(method="beam", beam_size=0), "beam_size=0 must be an integer >= 1"),
    (dict(method="sample", top_p=1.5), r"top_p=1.5 must be a finite number in \(0.0, 1.0\]"),
    (dict(method="sample", top_p=0.0), r"top_p=0.0 must be a finite number in \(0.0, 1.0\]"),
    (dict(method="sample", temperature=-1.0), "temperature=-1.0 must be a finite number >= 0.0"),
    (dict(method="nucleus"), "unknown decoding method 'nucleus'"),
    (dict(max_decode_len=0), "max_decode_len=0 must be an integer >= 1"),
    # Types, NaN and infinity (validation of the fields each method uses).
    (dict(max_decode_len=8.0), "max_decode_len=8.0 must be an integer >= 1, not a float"),
    (dict(max_decode_len=True), "max_decode_len=True must be an integer >= 1, not a bool"),
    (dict(method="beam", beam_size="4"), "beam_size='4' must be an integer >= 1, not a string"),
    (dict(method="beam", alpha=float("nan")), r"alpha=nan must be a finite number >= 0.0 \(the GNMT"),
    (dict(method="sample", temperature=float("inf")), "temperature=inf must be a finite number >= 0.0"),
    (dict(method="sample", top_k=2.5), "top_k=2.5 must be an integer >= 0"),
    (dict(eos_id=-2), r"eos_id=-2 must be an integer >= -1 \(-1: no EOS\)"),
  ],
)
def test_bad_decode_options_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    model_lib.DecodeOptions(**kwargs)


def test_per_row_start_ids():
  def echo(tokens, cache, step):  # predicts the input token back, then EOS
    logits = jax.nn.one_hot(jnp.where(step == 0, tokens[:, 0], 1), 8) * 10.0
    return logits, cache

  tokens, _ = decoding.greedy_decode(echo, {}, 3, 4, start_id=jnp.asarray([5, 6, 7]))
  np.testing.assert_array_equal(tokens[:, :2], [[5, 1], [6, 1], [7, 1]])
  with pytest.raises(ValueError, match=r"start_id must be an int or an array of shape \[3\]"):
    decoding.greedy_decode(echo, {}, 3, 4, start_id=jnp.asarray([5, 6]))


def test_beam_search_folds_beams_onto_one_copy_of_the_encoder_cache():
  """predict_batch keeps the encoder keys/values out of the beam state; the
  result equals beam search over a cache where they are expanded per beam."""
  m, params = _t5(False)
  enc = np.random.default_rng(4).integers(2, V, (3, 7)).astype(np.int32)
  enc[2, 3:] = 0
  opts = model_lib.DecodeOptions("beam", max_decode_len=5, beam_size=3, alpha=0.6)
  tokens, scores, extra = m.predict_batch(params, jnp.asarray(enc), opts)
  dynamic, static = m.split_cache(m.init_decode_cache(params, jnp.asarray(enc), 5))
  assert "encoder_valid" in static["decoder"] and "encoder_valid" not in dynamic["decoder"]
  full = m.init_decode_cache(params, jnp.asarray(enc), 5)
  ref_tokens, ref_scores = decoding.beam_search(m.tokens_to_logits(params), full, 3, 5, beam_size=3, alpha=0.6)
  np.testing.assert_array_equal(extra["beam_tokens"], ref_tokens)
  np.testing.assert_allclose(extra["beam_scores"], ref_scores, rtol=1e-5, atol=1e-5)

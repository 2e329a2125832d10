"""Prompt tuning (t5lite.models.prompt_tuning): the soft prompt in both model families.

The strongest check: a soft prompt equal to the embeddings of tokens t_1..t_N
makes the prompted model on x compute what the base model computes on
[t_1..t_N, x] (encoder-decoder: same decoder logits; decoder-only: the base
logits from position N on), with relative or absolute positions. Then:
padding and packing invariance, KV-cache decoding (both families; the
decoder-only cache with left-padded prompts), FLOPs, the parameter tree,
the masks by hand, the bad-input errors and the initial values.
"""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite.models import decoder_only, model as model_lib, params as params_lib, t5
from t5lite.models import prompt_tuning as prompt_lib

V = 64
N = 3
SIZES = dict(vocab_size=V, d_model=32, num_heads=2, d_kv=16, d_ff=64)
ABSOLUTE = dict(
  position_embedding="absolute",
  max_position_embeddings=24,
  norm_type="layernorm",
  mlp_activations=("gelu",),
  use_bias=True,
  logits_via_embedding=True,
  scale_tied_logits=False,
  scale_attention_logits=True,
)
PROMPT = prompt_lib.PromptTuningConfig(length=N)


def _t5(prompt=PROMPT, **kw):
  cfg = t5.T5Config(**SIZES, num_encoder_layers=2, num_decoder_layers=2, prompt_tuning=prompt, **kw)
  m = model_lib.EncoderDecoderModel(config=cfg)
  return m, m.init_params(jax.random.key(0), m.input_shapes(1, {"inputs": 8, "targets": 8}))


def _dec(prompt=PROMPT, prefix_lm=False, **kw):
  cfg = decoder_only.DecoderOnlyConfig(**SIZES, num_layers=2, prompt_tuning=prompt, **kw)
  m = model_lib.DecoderOnlyModel(config=cfg, prefix_lm=prefix_lm)
  lengths = {"inputs": 4, "targets": 4} if prefix_lm else {"targets": 8}
  return m, m.init_params(jax.random.key(0), m.input_shapes(1, lengths))


def _flat(tree):
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def _prompt_from_tokens(params, stack, ids):
  """(params with the soft prompt set to the embedding rows of `ids`, base params without it)."""
  flat = _flat(params)
  flat[f"{stack}/soft_prompt"] = flat["token_embedder/embedding"][np.asarray(ids)]
  base = {k: v for k, v in flat.items() if k != f"{stack}/soft_prompt"}
  unflat = lambda f: flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in f.items()})  # noqa: E731
  return unflat(flat), unflat(base)


def _base_module(m):
  """The same architecture without prompt tuning."""
  return type(m.module)(dataclasses.replace(m.config, prompt_tuning=None))


TOKENS = np.array([7, 11, 13], np.int32)  # t_1..t_N


# --------------------------------------------------------------------------
# (c) equivalence to the base model on [t_1..t_N, x]
# --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [{}, ABSOLUTE], ids=["relative", "absolute"])
def test_encoder_decoder_prompt_equals_base_model_on_prompt_tokens(arch):
  m, params = _t5(**arch)
  with_prompt, base_params = _prompt_from_tokens(params, "encoder", TOKENS)
  base = _base_module(m)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, V, (3, 7)).astype(np.int32)
  enc[1, 4:] = 0  # padding
  dec = rng.integers(2, V, (3, 5)).astype(np.int32)
  dec[:, 0] = 0
  enc_ext = np.concatenate([np.broadcast_to(TOKENS, (3, N)), enc], axis=1)
  got = m.module.apply({"params": with_prompt}, enc, dec)
  want = base.apply({"params": base_params}, enc_ext, dec)
  assert got.shape == (3, 5, V)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  # The encoder output keeps the prompt's N positions first.
  encoded = m.module.apply({"params": with_prompt}, enc, method=t5.T5Transformer.encode)
  base_encoded = base.apply({"params": base_params}, enc_ext, method=t5.T5Transformer.encode)
  assert encoded.shape == (3, N + 7, 32)
  np.testing.assert_allclose(encoded, base_encoded, atol=2e-5, rtol=1e-5)
  # A different prompt changes the output (the prompt is used at all).
  other, _ = _prompt_from_tokens(params, "encoder", TOKENS + 1)
  assert np.abs(np.asarray(m.module.apply({"params": other}, enc, dec) - got)).max() > 1e-3


@pytest.mark.parametrize(
  "arch,prefix_lm", [({}, False), (ABSOLUTE, False), ({}, True)], ids=["relative", "absolute", "prefix_lm"]
)
def test_decoder_only_prompt_equals_base_model_on_prompt_tokens(arch, prefix_lm):
  m, params = _dec(prefix_lm=prefix_lm, **arch)
  with_prompt, base_params = _prompt_from_tokens(params, "decoder", TOKENS)
  base = _base_module(m)
  rng = np.random.default_rng(1)
  x = rng.integers(2, V, (2, 8)).astype(np.int32)
  x[1, 6:] = 0
  x_ext = np.concatenate([np.broadcast_to(TOKENS, (2, N)), x], axis=1)
  causal = causal_ext = None
  if prefix_lm:
    causal = (np.arange(8) < 4)[None].repeat(2, 0).astype(np.int32)
    causal_ext = np.concatenate([np.zeros((2, N), np.int32), causal], axis=1)  # the prompt is not in the prefix
  got = m.module.apply({"params": with_prompt}, x, decoder_causal_attention=causal)
  want = base.apply({"params": base_params}, x_ext, decoder_causal_attention=causal_ext)
  assert got.shape == (2, 8, V)  # logits of the real positions only
  np.testing.assert_allclose(got, want[:, N:], atol=2e-5, rtol=1e-5)


# --------------------------------------------------------------------------
# (b) padding and packing invariance
# --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [{}, ABSOLUTE], ids=["relative", "absolute"])
def test_encoder_decoder_padding_and_packing_invariance(arch):
  m, params = _t5(**arch)
  apply = lambda *a, **k: np.asarray(m.module.apply({"params": params}, *a, **k))  # noqa: E731
  a_in, a_tg = np.array([5, 6, 7, 8], np.int32), np.array([0, 9, 10], np.int32)
  b_in, b_tg = np.array([12, 13, 14], np.int32), np.array([0, 15, 16, 17], np.int32)
  # Padding: more padding leaves the real positions unchanged (unpacked).
  short = apply(a_in[None], a_tg[None])
  padded = apply(np.pad(a_in, (0, 5))[None], np.pad(a_tg, (0, 4))[None])
  np.testing.assert_allclose(padded[0, :3], short[0], atol=2e-5, rtol=1e-5)

  # Packing: both examples in one row equal each alone (segment ids and positions, as seqio packs).
  def feats(parts, length):
    toks = np.concatenate(parts + [np.zeros(length - sum(map(len, parts)), np.int32)])
    seg = np.concatenate([np.full(len(p), i + 1) for i, p in enumerate(parts)])
    seg = np.pad(seg, (0, length - len(seg))).astype(np.int32)
    pos = np.concatenate([np.arange(len(p)) for p in parts])
    pos = np.pad(pos, (0, length - len(pos))).astype(np.int32)
    return toks[None], seg[None], pos[None]

  ein, eseg, epos = feats([a_in, b_in], 9)
  din, dseg, dpos = feats([a_tg, b_tg], 9)
  packed = apply(ein, din, eseg, dseg, epos, dpos)
  alone = []
  for x, y in ((a_in, a_tg), (b_in, b_tg)):
    e, es, ep = feats([x], 9)
    d, ds, dp = feats([y], 9)
    alone.append(apply(e, d, es, ds, ep, dp)[0, : len(y)])
  np.testing.assert_allclose(packed[0, :3], alone[0], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[0, 3:7], alone[1], atol=2e-5, rtol=1e-5)
  assert np.abs(alone[0][0] - alone[1][0]).max() > 1e-3  # different examples differ


@pytest.mark.parametrize("arch", [{}, ABSOLUTE], ids=["relative", "absolute"])
def test_decoder_only_packing_equals_unpacked(arch):
  m, params = _dec(**arch)
  apply = lambda *a, **k: np.asarray(m.module.apply({"params": params}, *a, **k))  # noqa: E731
  a, b = np.array([0, 5, 6, 7], np.int32), np.array([0, 9, 10, 11, 12], np.int32)
  row = np.concatenate([a, b, [0, 0]])[None].astype(np.int32)
  seg = np.array([[1] * 4 + [2] * 5 + [0, 0]], np.int32)
  pos = np.array([list(range(4)) + list(range(5)) + [0, 0]], np.int32)
  packed = apply(row, seg, pos)
  np.testing.assert_allclose(packed[0, :4], apply(a[None])[0], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[0, 4:9], apply(b[None])[0], atol=2e-5, rtol=1e-5)
  # Trailing padding does not change the real positions either.
  np.testing.assert_allclose(apply(np.pad(a, (0, 6))[None])[0, :4], apply(a[None])[0], atol=2e-5, rtol=1e-5)


# --------------------------------------------------------------------------
# (d) decoding
# --------------------------------------------------------------------------


def test_encoder_decoder_decoding_with_prompt_equals_teacher_forcing():
  m, params = _t5()
  rng = np.random.default_rng(2)
  enc = rng.integers(2, V, (2, 7)).astype(np.int32)
  enc[1, 5:] = 0
  length = 6
  # Each cached step equals the teacher-forced logits.
  dec = rng.integers(2, V, (2, length)).astype(np.int32)
  dec[:, 0] = 0
  full = m.module.apply({"params": params}, enc, dec)
  cache = m.init_decode_cache(params, jnp.asarray(enc), length)
  assert cache["decoder"]["encoder_valid"].shape == (2, N + 7)
  np.testing.assert_array_equal(cache["decoder"]["encoder_valid"][1], [True] * (N + 5) + [False] * 2)
  step_fn = jax.jit(m.tokens_to_logits(params))
  for i in range(length):
    logits, cache = step_fn(jnp.asarray(dec[:, i : i + 1]), cache, jnp.int32(i))
    np.testing.assert_allclose(logits, full[:, i], atol=2e-5, rtol=1e-5)
  # Greedy decoding gives the teacher-forced argmax of its own output.
  greedy = model_lib.DecodeOptions("greedy", max_decode_len=length, eos_id=-1)
  tokens = np.asarray(jax.jit(m.predict_batch, static_argnums=2)(params, jnp.asarray(enc), greedy)[0])
  shifted = np.concatenate([np.zeros((2, 1), np.int32), tokens[:, :-1]], axis=1)
  argmax = np.argmax(np.asarray(m.module.apply({"params": params}, enc, shifted)), axis=-1)
  np.testing.assert_array_equal(tokens, argmax)


DECODE_CASES = [({}, False), (ABSOLUTE, False), ({}, True), (ABSOLUTE, True)]
DECODE_IDS = ["relative", "absolute", "relative_prefix_lm", "absolute_prefix_lm"]
# Prompts of different lengths (left padding inside the cache) and prompts of one length (none).
PADDED = np.array([[5, 6, 7, 0], [9, 0, 0, 0], [3, 4, 5, 6], [0, 0, 0, 0]], np.int32)
UNPADDED = np.array([[5, 6, 7, 8], [3, 4, 5, 6]], np.int32)


def _teacher_forced(m, params, prompt, cont):
  """Logits [len(cont), V] of one row alone, by teacher forcing `model.logits` on [BOS, prompt, cont[:-1]]:
  row j is the prediction after prompt and cont[:j] (the soft prompt before it all, as in training)."""
  inputs = np.concatenate([[0], prompt, cont[:-1]])[None].astype(np.int32)
  batch = {"decoder_input_tokens": jnp.asarray(inputs)}
  if m.prefix_lm:  # BOS and the prompt are the prefix, as seqio's PrefixLM marks them
    batch["decoder_causal_attention"] = jnp.asarray((np.arange(inputs.shape[1]) <= len(prompt))[None], jnp.int32)
  return np.asarray(m.logits(params, batch))[0, len(prompt) :]


@pytest.mark.parametrize("prompts", [PADDED, UNPADDED], ids=["left_padded", "unpadded"])
@pytest.mark.parametrize("arch,prefix_lm", DECODE_CASES, ids=DECODE_IDS)
def test_decoder_only_cache_decoding_with_prompt_equals_teacher_forcing(arch, prefix_lm, prompts):
  m, params = _dec(prefix_lm=prefix_lm, **arch)
  b, p = prompts.shape
  steps = 5
  cont = np.random.default_rng(3).integers(2, V, (b, steps)).astype(np.int32)
  cache, start, offset = m.prefill(params, jnp.asarray(prompts), steps)
  assert offset == p  # decode_index still counts tokens
  # N prompt slots first (valid), then the chunk's P + 1 slots (left padding invalid), then the decode slots.
  key_valid = np.asarray(cache["decoder"]["key_valid"])
  assert key_valid.shape == (b, N + p + steps)
  lengths = (prompts > 0).sum(axis=1)
  for r in range(b):
    want = [True] * N + [False] * (p - lengths[r]) + [True] * (lengths[r] + 1) + [False] * (steps - 1)
    np.testing.assert_array_equal(key_valid[r], want)
  step_fn = jax.jit(m.tokens_to_logits(params, offset))
  got = []
  for j in range(steps):
    tok = start[:, None] if j == 0 else jnp.asarray(cont[:, j - 1 : j])
    logits, cache = step_fn(tok, cache, jnp.int32(j))
    got.append(np.asarray(logits))
  got = np.stack(got, axis=1)  # [b, steps, V]
  for r in range(b):
    want = _teacher_forced(m, params, prompts[r][prompts[r] > 0], cont[r])
    np.testing.assert_allclose(got[r], want, atol=1e-5, rtol=1e-5, err_msg=f"row {r}")
  # Another soft prompt gives other logits: the prompt is decoded with, not dropped.
  other = jax.tree.map(lambda x: x, params)
  other["decoder"]["soft_prompt"] = params["decoder"]["soft_prompt"][::-1]  # (a constant shift would be normed away)
  assert np.abs(_teacher_forced(m, other, prompts[0][prompts[0] > 0], cont[0]) - got[0]).max() > 1e-3


@pytest.mark.parametrize("arch,prefix_lm", DECODE_CASES, ids=DECODE_IDS)
def test_decoder_only_greedy_decoding_with_prompt_equals_teacher_forced_argmax(arch, prefix_lm):
  m, params = _dec(prefix_lm=prefix_lm, **arch)
  steps = 6
  greedy = model_lib.DecodeOptions("greedy", max_decode_len=steps, eos_id=-1)
  for prompts in (PADDED, UNPADDED):
    tokens = np.asarray(jax.jit(m.predict_batch, static_argnums=2)(params, jnp.asarray(prompts), greedy)[0])
    assert tokens.shape == (prompts.shape[0], steps)
    for r in range(prompts.shape[0]):
      # Token j is the argmax after the prompt and tokens[:j] on the growing sequence.
      want = np.argmax(_teacher_forced(m, params, prompts[r][prompts[r] > 0], tokens[r]), axis=-1)
      np.testing.assert_array_equal(tokens[r], want, err_msg=f"row {r}")


def test_flops_count_the_prompt_positions():
  m, _ = _dec()
  base = model_lib.DecoderOnlyModel(config=dataclasses.replace(m.config, prompt_tuning=None))
  assert m.flops_per_step(2, {"targets": 8}) == base.flops_per_step(2, {"targets": 8 + N})
  m, _ = _t5()
  base = model_lib.EncoderDecoderModel(config=dataclasses.replace(m.config, prompt_tuning=None))
  assert m.flops_per_step(2, {"inputs": 8, "targets": 5}) == base.flops_per_step(2, {"inputs": 8 + N, "targets": 5})


# --------------------------------------------------------------------------
# (a) the parameter
# --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_soft_prompt_parameter_only_when_configured(family):
  make, stack = (_t5, "encoder") if family == "t5" else (_dec, "decoder")
  m, params = make()
  bm, base = make(prompt=None)
  shapes = lambda mm: mm.input_shapes(1, {"inputs": 8, "targets": 8} if family == "t5" else {"targets": 8})  # noqa: E731
  flat, base_flat = _flat(params), _flat(base)
  assert set(flat) - set(base_flat) == {f"{stack}/soft_prompt"}
  assert set(base_flat) <= set(flat)
  assert flat[f"{stack}/soft_prompt"].shape == (N, 32)
  assert flat[f"{stack}/soft_prompt"].dtype == jnp.float32
  assert float(jnp.std(flat[f"{stack}/soft_prompt"])) > 0.3  # drawn, not zeros
  for k, v in base_flat.items():  # the base parameters are drawn exactly as without a prompt
    np.testing.assert_array_equal(flat[k], v, err_msg=k)
  axes = _flat(params_lib.logical_axes_tree(m.abstract_params(shapes(m))))
  assert tuple(axes[f"{stack}/soft_prompt"]) == ("prompt", "embed")
  assert not any("soft_prompt" in k for k in _flat(params_lib.logical_axes_tree(bm.abstract_params(shapes(bm)))))


# --------------------------------------------------------------------------
# The masks and positions by hand
# --------------------------------------------------------------------------


def test_encoder_mask_by_hand():
  n = 2
  tokens = np.array([[4, 5, 0]], np.int32)
  # Unpacked: the prompt sees itself and the real tokens; real tokens see the prompt and each other;
  # the padding query sees only padding.
  want = np.array(
    [
      [1, 1, 1, 1, 0],
      [1, 1, 1, 1, 0],
      [1, 1, 1, 1, 0],
      [1, 1, 1, 1, 0],
      [0, 0, 0, 0, 1],
    ],
    bool,
  )
  np.testing.assert_array_equal(prompt_lib.encoder_mask(jnp.asarray(tokens), None, n)[0, 0], want)
  # Packed: the prompt sees only the prompt; each segment sees the prompt and itself.
  tokens = np.array([[4, 5, 6, 0]], np.int32)
  seg = np.array([[1, 1, 2, 0]], np.int32)
  want = np.array(
    [
      [1, 1, 0, 0, 0, 0],
      [1, 1, 0, 0, 0, 0],
      [1, 1, 1, 1, 0, 0],
      [1, 1, 1, 1, 0, 0],
      [1, 1, 0, 0, 1, 0],
      [0, 0, 0, 0, 0, 1],
    ],
    bool,
  )
  np.testing.assert_array_equal(prompt_lib.encoder_mask(jnp.asarray(tokens), jnp.asarray(seg), n)[0, 0], want)


def test_decoder_mask_cross_columns_and_positions_by_hand():
  n = 2
  assert prompt_lib.decoder_mask(None, None, n, 3) == (None, True)
  mask, causal = prompt_lib.decoder_mask(jnp.asarray([[1, 2, 2]]), None, n, 3)
  assert causal  # the kernel adds the triangle
  want = np.array(
    [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 1], [1, 1, 0, 1, 1]],
    bool,
  )
  np.testing.assert_array_equal(mask[0, 0], want)
  cross = prompt_lib.with_prompt_columns(jnp.asarray([[[[True, False]]]]), n)
  np.testing.assert_array_equal(cross[0, 0, 0], [True, True, True, False])
  np.testing.assert_array_equal(
    prompt_lib.segment_positions(jnp.asarray([[1, 1, 1, 2, 2, 0, 0]])), [[0, 1, 2, 0, 1, 0, 1]]
  )
  np.testing.assert_array_equal(prompt_lib.absolute_positions(n, jnp.asarray([[0, 1, 0]]), 3), [[0, 1, 2, 3, 2]])
  np.testing.assert_array_equal(prompt_lib.absolute_positions(n, None, 3), [[0, 1, 2, 3, 4]])


# --------------------------------------------------------------------------
# (e) bad input
# --------------------------------------------------------------------------


def test_prompt_longer_than_the_position_table_allows_is_refused():
  m, params = _dec(**ABSOLUTE)  # 24 positions, prompt 3
  m.module.apply({"params": params}, jnp.ones((1, 21), jnp.int32))  # 3 + 21 = 24 fits
  with pytest.raises(ValueError, match=r"soft prompt longer than the input length allows.*length=3.*22 tokens.*=24"):
    m.module.apply({"params": params}, jnp.ones((1, 22), jnp.int32))
  m, params = _t5(**ABSOLUTE)
  with pytest.raises(ValueError, match=r"soft prompt longer than the input length allows.*length=3.*23 tokens"):
    m.module.apply({"params": params}, jnp.ones((1, 23), jnp.int32), jnp.ones((1, 4), jnp.int32))


def test_encoder_output_without_the_prompt_is_refused():
  m, params = _t5()
  enc, dec = jnp.ones((1, 5), jnp.int32), jnp.ones((1, 4), jnp.int32)
  encoded = m.module.apply({"params": params}, enc, method=t5.T5Transformer.encode)
  with pytest.raises(ValueError, match=r"encoder output has 5 positions but the soft prompt \(3\)"):
    m.module.apply({"params": params}, encoded[:, N:], enc, dec, method=t5.T5Transformer.decode)


# --------------------------------------------------------------------------
# (f) initial values
# --------------------------------------------------------------------------


def _row_ids_embedding(vocab, d=4):
  """Row i is all i, so the chosen ids can be read off the prompt."""
  return jnp.broadcast_to(jnp.arange(vocab, dtype=jnp.float32)[:, None], (vocab, d))


def test_initial_prompt_vocab_draws_rows_from_the_clipped_range():
  cfg = prompt_lib.PromptTuningConfig(length=400, init="vocab", vocab_start=10, vocab_end=5000)
  out = prompt_lib.initial_prompt(cfg, _row_ids_embedding(40), jax.random.key(0))
  assert out.shape == (400, 4) and out.dtype == jnp.float32
  ids = np.asarray(out[:, 0]).astype(int)
  np.testing.assert_array_equal(out, np.repeat(ids[:, None], 4, axis=1))
  assert set(ids) == set(range(10, 40))  # every id of [10, min(5000, 40)) drawn, nothing else
  other = prompt_lib.initial_prompt(cfg, _row_ids_embedding(40), jax.random.key(1))
  assert not np.array_equal(other, out)
  narrow = prompt_lib.PromptTuningConfig(length=50, vocab_start=3, vocab_end=5)
  assert set(np.asarray(prompt_lib.initial_prompt(narrow, _row_ids_embedding(40), jax.random.key(0))[:, 0])) == {3, 4}
  with pytest.raises(ValueError, match="vocab_start=45 leaves no ids"):
    prompt_lib.initial_prompt(
      prompt_lib.PromptTuningConfig(length=2, vocab_start=45), _row_ids_embedding(40), jax.random.key(0)
    )


def test_initial_prompt_text_cycles_the_text_ids():
  cfg = prompt_lib.PromptTuningConfig(length=7, init="text", init_text="reverse it")
  out = prompt_lib.initial_prompt(cfg, _row_ids_embedding(40), jax.random.key(0), text_ids=[5, 17, 9])
  np.testing.assert_array_equal(out[:, 0], [5, 17, 9, 5, 17, 9, 5])
  short = prompt_lib.PromptTuningConfig(length=2, init="text", init_text="reverse it")
  np.testing.assert_array_equal(
    prompt_lib.initial_prompt(short, _row_ids_embedding(40), None, text_ids=(5, 17, 9))[:, 0], [5, 17]
  )
  for bad in (None, []):
    with pytest.raises(ValueError, match="needs the text's token ids"):
      prompt_lib.initial_prompt(cfg, _row_ids_embedding(40), None, text_ids=bad)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    prompt_lib.initial_prompt(cfg, _row_ids_embedding(40), None, text_ids=[3, 40])

"""Tests for t5lite/decoding.py on tiny hand-built models.

Vocabulary used throughout: 0 = pad/start, 1 = EOS, 2 = A, 3 = B, 4 = C.

Most tests use `row_model`, whose next-token log-probabilities are a table
indexed by the decoder input (the previous token); every row carries its own
table in the cache, so one batch can hold several hand-built models and the
decoders must thread (and, for beam search, expand and reorder) that cache.
The decoders are jitted once at module level with their configuration static,
so that tests sharing a shape and configuration share a compilation.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite import decoding

PAD, EOS, A, B, C = 0, 1, 2, 3, 4
V = 5
L = 6  # max_decode_len of the table-model tests

GREEDY = jax.jit(decoding.greedy_decode, static_argnums=(0, 2, 3))
SAMPLE = jax.jit(
  decoding.temperature_sample, static_argnums=(0, 3, 4), static_argnames=("temperature", "top_k", "top_p")
)
BEAM = jax.jit(decoding.beam_search, static_argnums=(0, 2, 3), static_argnames=("beam_size", "alpha"))

CALLS = []  # (decoder input tokens, step) of every row_model call, in order


def row_model(tokens, cache, step):
  assert tokens.ndim == 2 and tokens.shape[1] == 1 and tokens.dtype == jnp.int32
  jax.debug.callback(lambda t, s: CALLS.append((np.asarray(t)[:, 0].tolist(), int(s))), tokens, step)
  rows = jnp.arange(tokens.shape[0])
  return cache["table"][rows, tokens[:, 0]], cache


def calls():
  jax.effects_barrier()
  out = list(CALLS)
  CALLS.clear()
  return out


def log_table(rows):
  """{previous token: [p_0..p_4]} -> float32[V, V] of log-probs (missing rows uniform)."""
  table = np.full((V, V), 1.0 / V)
  for prev, probs in rows.items():
    probs = np.asarray(probs, np.float64)
    assert abs(probs.sum() - 1.0) < 1e-9, probs
    table[prev] = probs
  with np.errstate(divide="ignore"):
    return np.log(table).astype(np.float32)


def tables(*tabs):
  """A cache for row_model: row i follows table tabs[i]."""
  CALLS.clear()
  return {"table": jnp.asarray(np.stack(tabs))}


def lp(length, alpha):
  return ((5.0 + length) / 6.0) ** alpha


# First step: A .58, B .39. After A everything is <= 0.3 (EOS and A tie at 0.3;
# greedy takes the lower id, EOS). After B, C has 0.9; after C, EOS has 0.9.
GREEDY_TRAP = log_table(
  {
    PAD: [0.01, 0.01, 0.58, 0.39, 0.01],
    A: [0.1, 0.3, 0.3, 0.1, 0.2],
    B: [0.025, 0.025, 0.025, 0.025, 0.9],
    C: [0.025, 0.9, 0.025, 0.025, 0.025],
  }
)

# Short: EOS at once (.5). Long: A B C EOS = .47 * .96**3 = .4158 < .5, but over
# 4 tokens instead of 1.
SHORT_VS_LONG = log_table(
  {
    PAD: [0.01, 0.5, 0.47, 0.01, 0.01],
    A: [0.01, 0.01, 0.01, 0.96, 0.01],
    B: [0.01, 0.01, 0.01, 0.01, 0.96],
    C: [0.01, 0.96, 0.01, 0.01, 0.01],
  }
)

# Greedy: A (.5) then A A ... (.32 each), far below the EOS it passed over at
# step 0 (.4). A search that finished every EOS among its 2*beam candidates
# would return [EOS] with beam 1.
PASSED_OVER_EOS = log_table({PAD: [0.05, 0.4, 0.5, 0.03, 0.02], A: [0.02, 0.02, 0.32, 0.32, 0.32]})

# Every row the same: A and B share most of the mass.
# Sorted: A .45, B .45 (mass before it .45), C .06 (.90), EOS .03 (.96), pad .01.
SHARED_MASS = log_table({t: [0.01, 0.03, 0.45, 0.45, 0.06] for t in range(V)})


# ----------------------------------------------------------------------------- helpers


def test_length_penalty_values():
  np.testing.assert_allclose(decoding.length_penalty(3, 0.6), (8 / 6) ** 0.6, rtol=1e-6)
  np.testing.assert_allclose(decoding.length_penalty(jnp.array([1, 7]), 1.0), [1.0, 2.0], rtol=1e-6)
  assert float(decoding.length_penalty(11, 0.0)) == 1.0


def test_expand_and_gather_beams():
  tree = {"x": jnp.arange(6).reshape(2, 3), "index": jnp.int32(7)}
  expanded = decoding.expand_to_beams(tree, 2)
  np.testing.assert_array_equal(expanded["x"], [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])
  assert int(expanded["index"]) == 7
  # Element 0 takes its beams in the order [1, 0], element 1 takes beam 1 twice.
  tree = {"x": jnp.arange(4) * 10, "index": jnp.int32(7)}
  gathered = decoding.gather_beams(tree, jnp.array([[1, 0], [1, 1]]), batch_size=2, beam_size=2)
  np.testing.assert_array_equal(gathered["x"], [10, 0, 30, 30])
  assert int(gathered["index"]) == 7
  # Fewer beams out than in.
  np.testing.assert_array_equal(decoding.gather_beams(jnp.arange(4), jnp.array([[1], [0]]), 2, 2), [1, 2])
  with pytest.raises(ValueError, match="leading dim 3.*2 \\* 2"):
    decoding.gather_beams(jnp.zeros((3, 1)), jnp.zeros((2, 2), jnp.int32), 2, 2)


# ----------------------------------------------------------------------------- greedy


def test_greedy_conventions_start_token_and_early_stop():
  tokens, scores = GREEDY(row_model, tables(GREEDY_TRAP), 1, L)
  np.testing.assert_array_equal(tokens, [[A, EOS, 0, 0, 0, 0]])
  np.testing.assert_allclose(scores, [math.log(0.58 * 0.3)], rtol=1e-6)
  # Step 0 is fed the start id; step 1 the first output (A); then EOS stops the loop.
  assert calls() == [([0], 0), ([A], 1)]


def test_eos_padding_and_scores_stop_accumulating():
  # Row 0 says A then EOS and afterwards (fed pad) would strongly say C: those
  # log-probs must not count. Row 1 never says EOS.
  ends = log_table({PAD: [0.05, 0.05, 0.8, 0.05, 0.05], A: [0.0, 0.7, 0.1, 0.1, 0.1]})
  ends[PAD] = np.log([0.05, 0.05, 0.8, 0.05, 0.05])
  never = log_table({PAD: [0.1, 0.0, 0.1, 0.7, 0.1], B: [0.1, 0.0, 0.1, 0.1, 0.7], C: [0.1, 0.0, 0.1, 0.7, 0.1]})
  tokens, scores = GREEDY(row_model, tables(ends, never), 2, L)
  np.testing.assert_array_equal(tokens, [[A, EOS, 0, 0, 0, 0], [B, C, B, C, B, C]])
  np.testing.assert_allclose(scores, [math.log(0.8 * 0.7), 6 * math.log(0.7)], rtol=1e-5)
  log = calls()
  assert [s for _, s in log] == [0, 1, 2, 3, 4, 5]
  # Row 0's inputs are its outputs shifted right: start, A, EOS, then pad.
  assert [t[0] for t, _ in log] == [0, A, EOS, 0, 0, 0]


# ----------------------------------------------------------------------------- sampling


def test_temperature_zero_top_k_one_and_tiny_top_p_equal_greedy():
  want_tokens, want_scores = GREEDY(row_model, tables(GREEDY_TRAP), 1, L)
  rng = jax.random.PRNGKey(3)
  for kwargs in (dict(temperature=0.0), dict(temperature=1.0, top_k=1), dict(temperature=2.0, top_p=1e-6)):
    tokens, scores = SAMPLE(row_model, tables(GREEDY_TRAP), rng, 1, L, **kwargs)
    np.testing.assert_array_equal(tokens, want_tokens, err_msg=str(kwargs))
    np.testing.assert_array_equal(scores, want_scores, err_msg=str(kwargs))


def test_sampling_is_reproducible_and_seed_dependent():
  cache = tables(*[SHARED_MASS] * 8)
  t1, s1 = SAMPLE(row_model, cache, jax.random.PRNGKey(0), 8, L)
  t2, s2 = SAMPLE(row_model, cache, jax.random.PRNGKey(0), 8, L)
  t3, _ = SAMPLE(row_model, cache, jax.random.PRNGKey(1), 8, L)
  np.testing.assert_array_equal(t1, t2)
  np.testing.assert_array_equal(s1, s2)
  assert not np.array_equal(t1, t3)
  # Scores are the model's log-probs of the emitted tokens, EOS included, pads not.
  for row, score in zip(np.asarray(t1), np.asarray(s1)):
    n = len(row) if EOS not in row else list(row).index(EOS) + 1
    assert (row[n:] == 0).all()
    np.testing.assert_allclose(score, SHARED_MASS[0, row[:n]].sum(), rtol=1e-5)


def test_top_k_top_p_filter_keeps_the_right_tokens():
  log_probs = jnp.asarray(SHARED_MASS[:1])  # A .45, B .45, C .06, EOS .03, pad .01
  for top_k, top_p, kept in (
    (0, 1.0, {PAD, EOS, A, B, C}),
    (2, 1.0, {A, B}),
    (1, 1.0, {A}),
    (9, 1.0, {PAD, EOS, A, B, C}),
    (0, 0.44, {A}),
    (0, 0.46, {A, B}),
    (0, 0.8, {A, B}),
    (0, 0.95, {A, B, C}),
    (0, 0.97, {EOS, A, B, C}),
    (0, 1e-6, {A}),
    (2, 0.95, {A, B}),
    (4, 0.8, {A, B}),
  ):
    filtered = np.asarray(decoding._filter_top_k_top_p(log_probs, top_k, top_p))[0]
    assert set(np.flatnonzero(np.isfinite(filtered)).tolist()) == kept, (top_k, top_p)
    np.testing.assert_array_equal(filtered[sorted(kept)], SHARED_MASS[0, sorted(kept)])


@pytest.mark.parametrize("kwargs,kept", [(dict(top_p=0.8), {A, B}), (dict(top_k=3, top_p=0.95), {A, B, C})])
def test_sampling_never_leaves_the_nucleus(kwargs, kept):
  # 128 rows x 8 steps = 1024 draws: none may fall outside `kept`, and every kept
  # token shows up (C has 6% of the mass once EOS and pad are cut).
  tokens, _ = SAMPLE(row_model, tables(*[SHARED_MASS] * 128), jax.random.PRNGKey(42), 128, 8, **kwargs)
  assert set(np.asarray(tokens).ravel().tolist()) == kept


def test_bad_arguments_raise():
  cache, rng = tables(SHARED_MASS), jax.random.PRNGKey(0)
  sample = functools.partial(decoding.temperature_sample, row_model, cache, rng, 1, 3)
  with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0.*got -0.5"):
    sample(temperature=-0.5)
  with pytest.raises(ValueError, match=r"top_k must be an integer >= 0.*got -1"):
    sample(top_k=-1)
  for top_p in (0.0, 1.5, -0.1, float("nan")):
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\].*got"):
      sample(top_p=top_p)
  with pytest.raises(ValueError, match="max_decode_len must be a positive integer, got 0"):
    decoding.greedy_decode(row_model, cache, 1, 0)
  with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
    decoding.greedy_decode(row_model, cache, 0, 3)
  with pytest.raises(ValueError, match="beam_size must be a positive integer, got 0"):
    decoding.beam_search(row_model, cache, 1, 3, beam_size=0)
  with pytest.raises(ValueError, match=r"logits of shape \[2, vocab\], got \(2, 1, 5\)"):
    decoding.greedy_decode(lambda t, c, s: (jnp.zeros((2, 1, V)), c), {}, 2, 3)


# ----------------------------------------------------------------------------- beam search


def test_beam_search_finds_what_greedy_misses():
  tokens, scores = BEAM(row_model, tables(GREEDY_TRAP), 1, L, beam_size=2, alpha=0.0)
  # By hand: step 0 keeps A (.58), B (.39). Step 1: BC .351, A-EOS .174 (finished),
  # AA .174. Step 2: BC-EOS .3159 finished; alive AA-x <= .0522 < .174: stop.
  np.testing.assert_array_equal(tokens, [[[B, C, EOS, 0, 0, 0], [A, EOS, 0, 0, 0, 0]]])
  np.testing.assert_allclose(scores, [[math.log(0.39 * 0.9 * 0.9), math.log(0.58 * 0.3)]], rtol=1e-6)
  assert [s for _, s in calls()] == [0, 1, 2]  # stopped early, well before max_decode_len

  tokens, scores = BEAM(row_model, tables(GREEDY_TRAP), 1, L, beam_size=2, alpha=0.6)
  np.testing.assert_array_equal(tokens, [[[B, C, EOS, 0, 0, 0], [A, EOS, 0, 0, 0, 0]]])
  np.testing.assert_allclose(
    scores, [[math.log(0.39 * 0.9 * 0.9) / (8 / 6) ** 0.6, math.log(0.58 * 0.3) / (7 / 6) ** 0.6]], rtol=1e-6
  )


def test_length_penalty_changes_the_winner():
  short, long = math.log(0.5), math.log(0.47 * 0.96**3)
  assert short > long and short / lp(1, 1.0) < long / lp(4, 1.0)
  tokens, scores = BEAM(row_model, tables(SHORT_VS_LONG), 1, L, beam_size=2, alpha=0.0)
  np.testing.assert_array_equal(tokens[0], [[EOS, 0, 0, 0, 0, 0], [A, B, C, EOS, 0, 0]])
  np.testing.assert_allclose(scores[0], [short, long], rtol=1e-5)
  tokens, scores = BEAM(row_model, tables(SHORT_VS_LONG), 1, L, beam_size=2, alpha=1.0)
  np.testing.assert_array_equal(tokens[0], [[A, B, C, EOS, 0, 0], [EOS, 0, 0, 0, 0, 0]])
  np.testing.assert_allclose(scores[0], [long / 1.5, short / 1.0], rtol=1e-5)


def test_beam_one_equals_greedy():
  cache = tables(PASSED_OVER_EOS, GREEDY_TRAP, SHORT_VS_LONG)
  g_tokens, g_scores = GREEDY(row_model, cache, 3, L)
  b_tokens, b_scores = BEAM(row_model, cache, 3, L, beam_size=1, alpha=0.0)
  np.testing.assert_array_equal(g_tokens, [[A] * L, [A, EOS] + [0] * 4, [EOS] + [0] * 5])
  np.testing.assert_array_equal(b_tokens[:, 0], g_tokens)
  np.testing.assert_array_equal(b_scores[:, 0], g_scores)


def test_beam_with_fewer_finished_than_beams_fills_from_alive():
  # No EOS ever: both beams run to max_decode_len and count with lp(L).
  no_eos = log_table({t: [0.1, 0.0, 0.6, 0.3, 0.0] for t in range(V)})
  tokens, scores = BEAM(row_model, tables(no_eos), 1, L, beam_size=2, alpha=0.6)
  np.testing.assert_array_equal(tokens[0], [[A] * L, [A] * (L - 1) + [B]])
  np.testing.assert_allclose(
    scores[0], [L * math.log(0.6) / lp(L, 0.6), ((L - 1) * math.log(0.6) + math.log(0.3)) / lp(L, 0.6)], rtol=1e-5
  )


# A model whose distribution depends on history kept in its cache: the first
# output token and the previous input come from the cache, the current input
# from `tokens`, and each batch element has its own "kind". If beam search
# reordered the cache wrongly, the history would belong to another hypothesis
# and the scores would not match the emitted tokens.
HIST_LEN = 5
NONE = V  # context index for "no such position yet"
HIST_TABLE = np.log(np.random.default_rng(0).dirichlet(np.full(V, 0.6), size=(2, V + 1, V + 1, V))).astype(np.float32)


def history_model(tokens, cache, step):
  table = jnp.asarray(HIST_TABLE)
  hist = cache["hist"].at[:, step].set(tokens[:, 0])  # inputs at positions 0..step
  first = jnp.where(step >= 1, hist[:, jnp.minimum(step, 1)], NONE)
  prev = jnp.where(step >= 1, hist[:, jnp.maximum(step - 1, 0)], NONE)
  logits = table[cache["kind"], first, prev, tokens[:, 0]]
  return logits, {"hist": hist, "kind": cache["kind"], "calls": cache["calls"] + 1}


def history_cache(batch):
  return {
    "hist": jnp.zeros((batch, HIST_LEN), jnp.int32),
    "kind": jnp.arange(batch, dtype=jnp.int32) % 2,
    "calls": jnp.int32(0),
  }  # a scalar leaf: left alone by expand/gather


def reference_log_prob(kind, outputs):
  """Log-prob and length of `outputs` (up to and including EOS), from the tokens alone."""
  inputs = [0] + list(outputs)
  total = 0.0
  for i, y in enumerate(outputs):
    first = inputs[1] if i >= 1 else NONE
    prev = inputs[i - 1] if i >= 1 else NONE
    total += float(HIST_TABLE[kind, first, prev, inputs[i], y])
    if y == EOS:
      return total, i + 1
  return total, len(outputs)


def check_beams_match_reference(tokens, scores, alpha):
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  for b in range(tokens.shape[0]):
    assert (np.diff(scores[b]) <= 0).all(), scores[b]
    assert len({tuple(t) for t in tokens[b]}) == tokens.shape[1]
    for k in range(tokens.shape[1]):
      log_prob, n = reference_log_prob(b % 2, tokens[b, k])
      assert (tokens[b, k, n:] == 0).all()
      np.testing.assert_allclose(scores[b, k], log_prob / lp(n, alpha), rtol=1e-5, err_msg=f"{b},{k}")


def test_beam_search_reorders_the_cache():
  tokens, scores = BEAM(history_model, history_cache(2), 2, HIST_LEN, beam_size=3, alpha=0.6)
  check_beams_match_reference(tokens, scores, 0.6)
  g_tokens, g_scores = GREEDY(history_model, history_cache(2), 2, HIST_LEN)
  b_tokens, b_scores = BEAM(history_model, history_cache(2), 2, HIST_LEN, beam_size=1, alpha=0.0)
  np.testing.assert_array_equal(b_tokens[:, 0], g_tokens)
  np.testing.assert_array_equal(b_scores[:, 0], g_scores)
  assert (tokens[:, 0, :] != g_tokens).any()  # the search matters on this model


def test_cache_check_catches_a_missing_reorder(monkeypatch):
  # The same check fails when the cache is never reordered: the test has teeth.
  # (Eager call: the jitted BEAM would reuse its compilation and not see the patch.)
  monkeypatch.setattr(decoding, "gather_beams", lambda tree, indices, batch, beams: tree)
  tokens, scores = decoding.beam_search(history_model, history_cache(2), 2, HIST_LEN, beam_size=3, alpha=0.6)
  with pytest.raises(AssertionError):
    check_beams_match_reference(tokens, scores, 0.6)


# ----------------------------------------------------------------------------- jit vs eager


def test_jitted_equals_eager():
  # (Beam search runs eagerly in test_cache_check_catches_a_missing_reorder.)
  cache = tables(GREEDY_TRAP, SHORT_VS_LONG)
  for jitted, eager in zip(GREEDY(row_model, cache, 2, L), decoding.greedy_decode(row_model, cache, 2, L)):
    np.testing.assert_array_equal(jitted, eager)

  rng = jax.random.key(5)  # a typed key works too
  cache = tables(*[SHARED_MASS] * 4)
  kwargs = dict(temperature=0.7, top_k=3, top_p=0.9)
  jitted = SAMPLE(row_model, cache, rng, 4, L, **kwargs)
  eager = decoding.temperature_sample(row_model, cache, rng, 4, L, **kwargs)
  np.testing.assert_array_equal(jitted[0], eager[0])
  np.testing.assert_allclose(jitted[1], eager[1], rtol=1e-6)

  CALLS.clear()

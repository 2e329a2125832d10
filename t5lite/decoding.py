"""Autoregressive decoding: greedy, temperature/top-k/top-p sampling, beam search.

Everything here is model agnostic: a decoder is seen only through a
`tokens_to_logits` callable and an opaque cache pytree. All functions are pure
and jittable; configuration arguments (sizes, ids, temperature, top_k, top_p,
beam_size, alpha) are plain Python values that must be static under `jax.jit`
(e.g. `jax.jit(greedy_decode, static_argnums=(0, 2, 3))`, or a
`functools.partial` of everything but the cache and rng). The loops are
`lax.while_loop`s that stop as soon as every sequence is finished.

The model interface
-------------------

    tokens_to_logits(tokens, cache, step) -> (logits, new_cache)

    tokens:    int32[rows, 1]. The decoder *input* at position `step`.
    cache:     any pytree (see below).
    step:      int32 scalar (traced), the decoder position being processed,
               0, 1, 2, ... .
    logits:    float[rows, vocab] (cast to float32 here). Unnormalized is fine:
               decoding applies log_softmax itself.
    new_cache: the updated cache, with the same tree structure, shapes and
               dtypes as `cache` (a `lax.while_loop` requirement).

  `rows` is `batch_size` for greedy decoding and sampling and
  `batch_size * beam_size` for beam search.

Positions (the T5X convention). With outputs y_0, y_1, ..., the decoder inputs
are shifted right by one: position 0 gets `start_id` (0 by default, T5's
BOS/pad id; an int32[batch_size] array gives each row its own, as a
decoder-only model needs after prefilling prompts whose last token starts the
continuation), position i > 0 gets y_{i-1}. So:

  - the first call has step == 0 and tokens == start_id for every row, and its
    logits are the distribution of the first output token y_0;
  - the call at step i receives y_{i-1} and its logits predict y_i.

Returned token arrays hold the outputs y_0 ... y_{max_decode_len-1}, *not* the
start token: `tokens[..., i]` was predicted by the call at step i. A sequence
ends at the first `eos_id`, which is included in the output; every position
after it is 0 (pad). A sequence that never produces EOS fills all
`max_decode_len` positions. At most `max_decode_len` calls are made.

Rows that have already finished (greedy/sampling) keep being passed through
the model, because the batch moves together: following the same convention,
the step after a row's EOS is fed that EOS and later steps are fed 0, and the
logits of a finished row are ignored. Under beam search every row is always an
alive hypothesis (or, early on, an empty slot with log-probability -inf) and is
fed its own last token.

The cache. Any pytree whose leaves either have the row dimension first
(shape [rows, ...]) or are scalars (ndim 0, e.g. a shared cache index); scalar
leaves are passed through untouched by the beam helpers. Greedy decoding and
sampling take a cache with `batch_size` rows. `beam_search` also takes a cache
with `batch_size` rows and expands it itself to `batch_size * beam_size` rows
with `expand_to_beams` (row b*beam_size + k is beam k of batch element b); after
every step it reorders the rows with `gather_beams` so that row b*beam_size + k
always holds the history of the hypothesis currently in beam slot k. A model
therefore writes position `step` of its cache on each call and reads positions
< step as the prefix of the same hypothesis. All rows advance in lockstep, so a
scalar step counter in the cache stays valid. Whatever `tokens_to_logits`
closes over (e.g. encoder outputs for cross-attention) is *not* expanded: for
beam search put per-example data in the cache, or expand it yourself with
`expand_to_beams` to batch_size * beam_size rows.

Scores. Greedy decoding and sampling return, per row, the sum of the model's
log-probabilities (log_softmax of the logits, before any temperature or top-k /
top-p filtering) of the emitted tokens, EOS included, nothing after it. Beam
search returns log-probability / length_penalty(length) with the GNMT penalty
((5 + length) / 6) ** alpha, where length counts the emitted tokens including
EOS.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
from jax import lax

PyTree = Any
TokensToLogits = Callable[[jax.Array, PyTree, jax.Array], Tuple[jax.Array, PyTree]]

PAD_ID = 0  # what fills the positions after EOS
NEG_INF = -jnp.inf


# -----------------------------------------------------------------------------
# Helpers.
# -----------------------------------------------------------------------------


def length_penalty(length, alpha: float) -> jax.Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha, as float32.

  `length` may be a Python number or an array (broadcast elementwise);
  alpha = 0 gives exactly 1.
  """
  length = jnp.asarray(length, jnp.float32)
  return ((5.0 + length) / 6.0) ** alpha


def expand_to_beams(tree: PyTree, beam_size: int) -> PyTree:
  """Repeat every row of every leaf `beam_size` times: [n, ...] -> [n*beam_size, ...].

  Row b*beam_size + k of the result is a copy of row b. Leaves with ndim 0 are
  returned unchanged.
  """
  beam_size = _check_positive_int("beam_size", beam_size)

  def expand(x):
    x = jnp.asarray(x)
    if x.ndim == 0:
      return x
    return jnp.repeat(x, beam_size, axis=0)

  return jax.tree_util.tree_map(expand, tree)


def gather_beams(tree: PyTree, indices, batch_size: int, beam_size: int) -> PyTree:
  """Reorder the beam rows of every leaf.

  Every leaf with ndim >= 1 must have leading dim batch_size * beam_size,
  laid out as by `expand_to_beams` (row b*beam_size + k is beam k of batch
  element b). `indices` is int[batch_size, new_beams] with values in
  [0, beam_size); row b*new_beams + j of the result is row
  b*beam_size + indices[b, j] of the input. Leaves with ndim 0 are returned
  unchanged.
  """
  indices = jnp.asarray(indices, jnp.int32)
  if indices.ndim != 2 or indices.shape[0] != batch_size:
    raise ValueError(f"gather_beams: indices must have shape [batch_size={batch_size}, new_beams], got {indices.shape}")
  rows = (jnp.arange(batch_size, dtype=jnp.int32)[:, None] * beam_size + indices).reshape(-1)

  def gather(x):
    x = jnp.asarray(x)
    if x.ndim == 0:
      return x
    if x.shape[0] != batch_size * beam_size:
      raise ValueError(
        f"gather_beams: a leaf has leading dim {x.shape[0]} (shape {x.shape}); "
        f"expected batch_size * beam_size = {batch_size} * {beam_size}"
      )
    return x[rows]

  return jax.tree_util.tree_map(gather, tree)


def _take_beams(x: jax.Array, indices: jax.Array) -> jax.Array:
  """x[b, indices[b, j], ...] for x of shape [batch, beams, ...]."""
  batch = jnp.arange(x.shape[0], dtype=jnp.int32)[:, None]
  return x[batch, indices]


def _check_positive_int(name: str, value) -> int:
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def _start_tokens(start_id, batch_size: int) -> jax.Array:
  """start_id as int32[batch_size]: one id for all rows, or one per row (e.g.
  the last prompt token of each row after a decoder-only prefill)."""
  start = jnp.asarray(start_id, jnp.int32)
  if start.ndim == 0:
    return jnp.full((batch_size,), start, jnp.int32)
  if start.shape != (batch_size,):
    raise ValueError(f"start_id must be an int or an array of shape [{batch_size}], got shape {start.shape}")
  return start


def _call_model(tokens_to_logits, tokens, cache, step, rows):
  logits, new_cache = tokens_to_logits(tokens, cache, step)
  logits = jnp.asarray(logits)
  if logits.ndim != 2 or logits.shape[0] != rows:
    raise ValueError(f"tokens_to_logits must return logits of shape [{rows}, vocab], got {logits.shape}")
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), new_cache


# -----------------------------------------------------------------------------
# Greedy decoding and sampling.
# -----------------------------------------------------------------------------


def _decode_loop(tokens_to_logits, cache, batch_size, max_decode_len, eos_id, start_id, choose):
  """The loop shared by greedy decoding and sampling.

  `choose(log_probs float32[batch, vocab], step) -> int[batch]` picks the next
  tokens.
  """

  def cond(state):
    step, _, _, _, done, _ = state
    return (step < max_decode_len) & ~jnp.all(done)

  def body(state):
    step, seqs, cache, last, done, scores = state
    log_probs, cache = _call_model(tokens_to_logits, last[:, None], cache, step, batch_size)
    nxt = jnp.where(done, PAD_ID, choose(log_probs, step).astype(jnp.int32))
    token_log_prob = jnp.take_along_axis(log_probs, nxt[:, None], axis=-1)[:, 0]
    scores = scores + jnp.where(done, 0.0, token_log_prob)
    seqs = lax.dynamic_update_slice(seqs, nxt[:, None], (jnp.int32(0), step))
    done = done | (nxt == eos_id)
    return step + 1, seqs, cache, nxt, done, scores

  init = (
    jnp.int32(0),
    jnp.full((batch_size, max_decode_len), PAD_ID, jnp.int32),
    cache,
    _start_tokens(start_id, batch_size),
    jnp.zeros((batch_size,), jnp.bool_),
    jnp.zeros((batch_size,), jnp.float32),
  )
  _, seqs, _, _, _, scores = lax.while_loop(cond, body, init)
  return seqs, scores


def greedy_decode(
  tokens_to_logits: TokensToLogits,
  cache: PyTree,
  batch_size: int,
  max_decode_len: int,
  eos_id: int = 1,
  start_id: int = 0,
) -> Tuple[jax.Array, jax.Array]:
  """Pick the most likely token at every step.

  Returns (tokens int32[batch_size, max_decode_len], scores float32[batch_size]):
  see the module docstring for the conventions. Ties go to the lowest token id.
  """
  batch_size = _check_positive_int("batch_size", batch_size)
  max_decode_len = _check_positive_int("max_decode_len", max_decode_len)
  return _decode_loop(
    tokens_to_logits,
    cache,
    batch_size,
    max_decode_len,
    eos_id,
    start_id,
    lambda log_probs, step: jnp.argmax(log_probs, axis=-1),
  )


def _filter_top_k_top_p(log_probs: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Set every token outside the top-k / nucleus to -inf.

  The nucleus is the shortest prefix of the tokens sorted by probability (ties:
  lower id first) whose total probability is >= top_p, i.e. a token is kept when
  the mass of the tokens ranked before it is < top_p. The most likely token is
  always kept. With both filters, a token must pass both.
  """
  batch, vocab = log_probs.shape
  k = vocab if top_k == 0 else min(top_k, vocab)
  if k == vocab and top_p >= 1.0:
    return log_probs
  rows = jnp.arange(batch, dtype=jnp.int32)[:, None]
  if top_p >= 1.0:
    _, order = lax.top_k(log_probs, k)
    keep = jnp.zeros((batch, vocab), jnp.bool_).at[rows, order].set(True)
  else:
    sorted_log_probs, order = lax.top_k(log_probs, vocab)
    probs = jnp.exp(sorted_log_probs)
    mass_before = jnp.concatenate([jnp.zeros((batch, 1), probs.dtype), jnp.cumsum(probs, axis=-1)[:, :-1]], axis=-1)
    rank = jnp.arange(vocab)[None, :]
    keep_sorted = (rank == 0) | ((rank < k) & (mass_before < top_p))
    keep = jnp.zeros((batch, vocab), jnp.bool_).at[rows, order].set(keep_sorted)
  return jnp.where(keep, log_probs, NEG_INF)


def temperature_sample(
  tokens_to_logits: TokensToLogits,
  cache: PyTree,
  rng: jax.Array,
  batch_size: int,
  max_decode_len: int,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  eos_id: int = 1,
  start_id: int = 0,
) -> Tuple[jax.Array, jax.Array]:
  """Sample every token from the model's distribution.

  The model distribution is first restricted to its `top_k` most likely tokens
  (0: no limit) and to the top-p nucleus (1.0: no limit; see
  `_filter_top_k_top_p`), both computed on the untempered distribution, and the
  survivors are then sampled from softmax(log_probs / temperature).

  temperature == 0 is greedy decoding (exactly `greedy_decode`; rng, top_k and
  top_p are then unused). top_k == 1, or a top_p small enough that only the top
  token survives, also reproduce greedy decoding. The step-i key is
  `jax.random.fold_in(rng, i)`, so a fixed rng gives the same result every time,
  with or without jit. `rng` may be a raw uint32 key or a typed key.

  Returns (tokens int32[batch_size, max_decode_len], scores float32[batch_size])
  as in `greedy_decode`; scores are log-probabilities under the unfiltered,
  untempered model distribution.
  """
  batch_size = _check_positive_int("batch_size", batch_size)
  max_decode_len = _check_positive_int("max_decode_len", max_decode_len)
  if not temperature >= 0.0 or math.isinf(temperature):
    raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
  if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0:
    raise ValueError(f"top_k must be an integer >= 0 (0 means no top-k filtering), got {top_k!r}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1] (1 means no nucleus filtering), got {top_p!r}")
  if temperature == 0.0:
    return greedy_decode(tokens_to_logits, cache, batch_size, max_decode_len, eos_id, start_id)
  top_k, top_p, temperature = int(top_k), float(top_p), float(temperature)

  def choose(log_probs, step):
    filtered = _filter_top_k_top_p(log_probs, top_k, top_p)
    return jax.random.categorical(jax.random.fold_in(rng, step), filtered / temperature, axis=-1)

  return _decode_loop(tokens_to_logits, cache, batch_size, max_decode_len, eos_id, start_id, choose)


# -----------------------------------------------------------------------------
# Beam search.
# -----------------------------------------------------------------------------


def beam_search(
  tokens_to_logits: TokensToLogits,
  cache: PyTree,
  batch_size: int,
  max_decode_len: int,
  beam_size: int = 4,
  alpha: float = 0.6,
  eos_id: int = 1,
  start_id: int = 0,
) -> Tuple[jax.Array, jax.Array]:
  """Beam search with separate alive and finished hypotheses.

  `cache` has `batch_size` rows; it is expanded to batch_size * beam_size rows
  and reordered after every step (see the module docstring).

  Per step, for each batch element:
    1. every alive hypothesis is extended by every token, and the 2*beam_size
       best extensions by total log-probability are kept (at most beam_size of
       them end in EOS, one per parent, so at least beam_size do not);
    2. the beam_size best extensions that do not end in EOS become the new
       alive set (ranked by raw log-probability);
    3. extensions ending in EOS that rank among the first beam_size of the
       2*beam_size candidates are finished, scored log-probability /
       length_penalty(length); the finished set keeps the beam_size best.
       (Only EOS extensions that would have been in the beam count, as in
       fairseq. Taking every EOS among the 2*beam_size candidates, as
       tensor2tensor/T5X do, can finish a hypothesis that was never in the
       beam, which makes beam_size=1 differ from greedy decoding.)
  The loop stops early for a batch element once its finished set is full and
  no alive hypothesis can beat the worst finished one, even with the most
  favourable length penalty still reachable; and for everything at
  max_decode_len. Then, where fewer than beam_size hypotheses finished, the
  best alive ones fill the remaining slots, scored with the penalty of their
  length (no EOS).

  beam_size=1 with alpha=0 reproduces `greedy_decode` exactly (tokens and
  scores). With alpha > 0 the search may keep going past greedy's EOS to
  look for a longer hypothesis with a better penalized score.

  Returns tokens int32[batch_size, beam_size, max_decode_len] and scores
  float32[batch_size, beam_size], best first. Slots that hold no hypothesis at
  all (possible only when the vocabulary is smaller than the beam can fill)
  have score -inf and all-pad tokens.
  """
  batch_size = _check_positive_int("batch_size", batch_size)
  max_decode_len = _check_positive_int("max_decode_len", max_decode_len)
  beam_size = _check_positive_int("beam_size", beam_size)
  alpha = float(alpha)
  if not math.isfinite(alpha):
    raise ValueError(f"alpha must be a finite number, got {alpha!r}")
  bsz, beams, length = batch_size, beam_size, max_decode_len
  rows = bsz * beams

  def is_done(step, alive_log_probs, finished_scores, finished_flags):
    # An alive hypothesis only loses log-probability from here on; its best
    # possible score uses the largest penalty among the lengths it can still reach.
    best_penalty = jnp.maximum(length_penalty(step + 1, alpha), length_penalty(length, alpha))
    best_alive = jnp.max(alive_log_probs, axis=1) / best_penalty
    worst_finished = jnp.min(jnp.where(finished_flags, finished_scores, jnp.inf), axis=1)
    worst_finished = jnp.where(jnp.all(finished_flags, axis=1), worst_finished, NEG_INF)
    return best_alive <= worst_finished

  def cond(state):
    step, _, _, alive_log_probs, _, _, finished_scores, finished_flags = state
    return (step < length) & ~jnp.all(is_done(step, alive_log_probs, finished_scores, finished_flags))

  def body(state):
    (step, alive_seqs, alive_last, alive_log_probs, alive_cache, finished_seqs, finished_scores, finished_flags) = state
    log_probs, new_cache = _call_model(tokens_to_logits, alive_last.reshape(rows, 1), alive_cache, step, rows)
    vocab = log_probs.shape[-1]
    candidates = (alive_log_probs[:, :, None] + log_probs.reshape(bsz, beams, vocab)).reshape(bsz, beams * vocab)
    n_cand = min(2 * beams, beams * vocab)
    cand_log_probs, cand_index = lax.top_k(candidates, n_cand)  # sorted, best first
    cand_parent = cand_index // vocab
    cand_token = (cand_index % vocab).astype(jnp.int32)
    cand_seqs = _take_beams(alive_seqs, cand_parent)
    cand_seqs = lax.dynamic_update_slice(cand_seqs, cand_token[:, :, None], (jnp.int32(0), jnp.int32(0), step))
    cand_eos = cand_token == eos_id

    # The new alive set: best non-EOS extensions.
    alive_log_probs, pick = lax.top_k(jnp.where(cand_eos, NEG_INF, cand_log_probs), beams)
    alive_seqs = _take_beams(cand_seqs, pick)
    alive_last = _take_beams(cand_token, pick)
    alive_cache = gather_beams(new_cache, _take_beams(cand_parent, pick), bsz, beams)

    # The new finished set: old finished plus EOS extensions that made the beam.
    in_beam = jnp.arange(n_cand)[None, :] < beams
    new_flags = cand_eos & in_beam & jnp.isfinite(cand_log_probs)
    new_scores = jnp.where(new_flags, cand_log_probs / length_penalty(step + 1, alpha), NEG_INF)
    all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
    all_flags = jnp.concatenate([finished_flags, new_flags], axis=1)
    all_seqs = jnp.concatenate([finished_seqs, cand_seqs], axis=1)
    finished_scores, pick = lax.top_k(jnp.where(all_flags, all_scores, NEG_INF), beams)
    finished_flags = _take_beams(all_flags, pick)
    finished_seqs = _take_beams(all_seqs, pick)
    return (
      step + 1,
      alive_seqs,
      alive_last,
      alive_log_probs,
      alive_cache,
      finished_seqs,
      finished_scores,
      finished_flags,
    )

  # All beams of an element start identical: only beam 0 is live, so that the
  # first step does not produce beam_size copies of the same extension.
  first_alive = jnp.concatenate(
    [jnp.zeros((bsz, 1), jnp.float32), jnp.full((bsz, beams - 1), NEG_INF, jnp.float32)], axis=1
  )
  init = (
    jnp.int32(0),
    jnp.full((bsz, beams, length), PAD_ID, jnp.int32),
    jnp.broadcast_to(_start_tokens(start_id, bsz)[:, None], (bsz, beams)),
    first_alive,
    expand_to_beams(cache, beams),
    jnp.full((bsz, beams, length), PAD_ID, jnp.int32),
    jnp.full((bsz, beams), NEG_INF, jnp.float32),
    jnp.zeros((bsz, beams), jnp.bool_),
  )
  (step, alive_seqs, _, alive_log_probs, _, finished_seqs, finished_scores, finished_flags) = lax.while_loop(
    cond, body, init
  )

  # Finished hypotheses sit first in their set (finite scores sort above -inf);
  # slots past them are filled with the best alive hypotheses, then all re-sorted.
  n_finished = jnp.sum(finished_flags, axis=1, dtype=jnp.int32)
  slot = jnp.arange(beams, dtype=jnp.int32)[None, :]
  from_alive = slot >= n_finished[:, None]
  alive_pick = jnp.clip(slot - n_finished[:, None], 0, beams - 1)
  alive_scores = alive_log_probs / length_penalty(step, alpha)
  scores = jnp.where(from_alive, _take_beams(alive_scores, alive_pick), finished_scores)
  seqs = jnp.where(from_alive[:, :, None], _take_beams(alive_seqs, alive_pick), finished_seqs)
  scores, order = lax.top_k(scores, beams)
  seqs = _take_beams(seqs, order)
  seqs = jnp.where(jnp.isfinite(scores)[:, :, None], seqs, PAD_ID)
  return seqs, scores

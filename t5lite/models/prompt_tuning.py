"""Prompt tuning: a learned soft prompt prepended to a stack's input embeddings (Lester et al. 2021).

The parameter `soft_prompt` [length, d_model] (axes 'prompt', 'embed') of the
encoder (encoder-decoder models) or of the decoder (decoder-only models) is
prepended to the embedded tokens; masks, positions and the relative position
bias are extended over it so that the rest of the model is unchanged. Which
parameters train, and how runs save and load them, is t5lite.models.peft's.

In a stack the prompt takes positions 0..N-1 and each token its position
plus N (learned absolute positions and relative distances alike), so the
tokens keep their distances to each other. Unpacked, an encoder's prompt
is part of the input as in the paper (it attends to the real tokens and
they to it); packed, each segment sees the prompt as if alone in the row
and the prompt's queries see only the prompt (one prompt serves every
segment, so it may not look at any of them). A decoder-only prompt is
causal: packed and unpacked give the same outputs. The encoder output
keeps the prompt's N positions, which every decoder query may attend to.
Decoder-only KV-cache decoding keeps the prompt in the cache's first N
slots, written with the prefill chunk (`decode_inputs`); a row's tokens
are at N + their index among its real tokens, left padding skipped, as in
training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5lite import checks
from t5lite.models import attention as attention_lib
from t5lite.models import params

Array = jax.Array

PARAM_NAME = "soft_prompt"
INITS = ("vocab", "text")


@dataclasses.dataclass(frozen=True)
class PromptTuningConfig:
  """The soft prompt: its length and how it starts.

  length: N, the number of soft tokens (Lester et al. 2021 use 20 to 100), >= 1.
  init: 'vocab' (each vector the embedding of a token drawn uniformly from ids
    [vocab_start, vocab_end), Lester et al.'s "sampled vocab": SentencePiece
    ids are roughly in frequency order) or 'text' (the embeddings of
    `init_text`'s tokens, repeated to N vectors).
  init_text: the words of the 'text' init (e.g. the task's name), tokenised
    with the task's vocabulary when the run starts.
  vocab_start, vocab_end: the id range of the 'vocab' init (end exclusive;
    clipped to the vocabulary size).
  """

  length: int = 20
  init: str = "vocab"
  init_text: Optional[str] = None
  vocab_start: int = 3
  vocab_end: int = 5000

  def __post_init__(self):
    object.__setattr__(self, "length", checks.check_int("PromptTuningConfig.length", self.length, minimum=1))
    if self.init not in INITS:
      raise checks.SettingError(f"PromptTuningConfig.init={self.init!r} is not one of the valid options {INITS}")
    if self.init == "text" and (not isinstance(self.init_text, str) or not self.init_text.strip()):
      raise checks.SettingError(
        f"PromptTuningConfig.init='text' needs init_text, the words whose embeddings start the prompt "
        f"(got {self.init_text!r})"
      )
    start = checks.check_int("PromptTuningConfig.vocab_start", self.vocab_start, minimum=0)
    end = checks.check_int(
      "PromptTuningConfig.vocab_end", self.vocab_end, minimum=start + 1, hint=f" (> vocab_start={start})"
    )
    object.__setattr__(self, "vocab_start", start)
    object.__setattr__(self, "vocab_end", end)


# --------------------------------------------------------------------------
# The prompt inside a stack: parameter, embeddings, positions, masks
# --------------------------------------------------------------------------


def prompt_length(config: Any) -> int:
  """N, the soft prompt's length under `config` (a TransformerConfig); 0 without prompt tuning."""
  return 0 if config.prompt_tuning is None else config.prompt_tuning.length


def soft_prompt(module: nn.Module, config: Any) -> Optional[Array]:
  """The float32 parameter 'soft_prompt' [N, d_model], axes ('prompt', 'embed'), of the calling compact module,
  or None (and no parameter) when `config.prompt_tuning` is None.

  Drawn like the token embedding (params.embedding_init); a run replaces it
  with `initial_prompt` before training.
  """
  n = prompt_length(config)
  if not n:
    return None
  return params.param(module, PARAM_NAME, params.embedding_init, (n, config.d_model), ("prompt", "embed"))


def prepend(prompt: Array, x: Array) -> Array:
  """[N, d] prompt before embedded tokens [b, L, d] -> [b, N + L, d] in x's dtype."""
  lead = jnp.broadcast_to(prompt.astype(x.dtype)[None], (x.shape[0],) + prompt.shape)
  return jnp.concatenate([lead, x], axis=1)


def check_fits(config: Any, length: int) -> None:
  """Refuses a prompt that pushes a sequence of `length` tokens past the learned position table.

  Only learned absolute positions have a limit (T5's relative buckets have none).

  Raises:
    ValueError: prompt length N + `length` > config.max_position_embeddings
      (names N, the input length and the limit).
  """
  n = prompt_length(config)
  if n and config.position_embedding == "absolute" and n + length > config.max_position_embeddings:
    raise ValueError(
      f"a soft prompt longer than the input length allows: PromptTuningConfig.length={n} plus an input of "
      f"{length} tokens needs {n + length} positions, but max_position_embeddings={config.max_position_embeddings}; "
      f"use a prompt of at most {config.max_position_embeddings - length} tokens or sequences of at most "
      f"{config.max_position_embeddings - n} tokens (training: TASK_FEATURE_LENGTHS; decoding: the input "
      "plus MAX_DECODE_LEN)"
    )


def segment_positions(segment_ids: Array) -> Array:
  """Position of each token within its segment (index minus the index where its segment starts), int32 [b, L].

  What seqio's packing writes as `*_positions`; padding counts on from the last segment.
  """
  seg = segment_ids.astype(jnp.int32)
  index = jnp.broadcast_to(jnp.arange(seg.shape[-1], dtype=jnp.int32), seg.shape)
  starts = jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def absolute_positions(n: int, positions: Optional[Array], length: int) -> Array:
  """Learned-position indices int32 [b or 1, n + length]: 0..n-1 for the prompt, then each token's position + n.

  `positions` [b, length] (the packed `*_positions` feature) or None
  (0..length-1), so every packed segment sees the prompt right before it.
  """
  if positions is None:
    return jnp.arange(n + length, dtype=jnp.int32)[None]
  positions = positions.astype(jnp.int32)
  lead = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (positions.shape[0], n))
  return jnp.concatenate([lead, positions + n], axis=1)


def bias_positions(
  config: Any, n: int, segment_ids: Optional[Array], positions: Optional[Array]
) -> tuple[Optional[Array], Optional[Array]]:
  """(q_positions, k_positions) for a stack's `RelativePositionBias` over the N + L prompted sequence.

  Unpacked (no `segment_ids`) and without `position_bias_from_positions`:
  (None, None), the batch-shared bias of token indices, the prompt at
  indices 0..N-1. Packed: per-example positions [b, N + L], the prompt at
  0..N-1 and each token at N + its position within its segment (from the
  segment ids, or the `positions` feature when
  `config.position_bias_from_positions`), so every segment sees the prompt
  at the distances it would alone while tokens of one segment keep their
  distances to each other. That bias is [b, heads, N + L, N + L].
  """
  from_feature = config.position_bias_from_positions and positions is not None
  if segment_ids is None and not from_feature:
    return None, None
  real = positions.astype(jnp.int32) if from_feature else segment_positions(segment_ids)
  ext = absolute_positions(n, real, real.shape[1])
  return ext, ext


def encoder_mask(tokens: Array, segment_ids: Optional[Array], n: int) -> Array:
  """Bidirectional mask bool [b, 1, N + L, N + L] of a prompted encoder input (True: may attend).

  Real tokens (id > 0) see the prompt and what they see without it (the
  real tokens of their segment); padding queries see only padding, as
  without a prompt. Prompt queries see the prompt and, unpacked (no
  `segment_ids`), every real token: Lester et al.'s prompt is part of the
  input. Packed, the prompt's queries see only the prompt, so that no
  segment's output depends on the others packed in its row (the prompt is
  shared by all of them).
  """
  base = attention_lib.encoder_self_attention_mask(tokens, segment_ids)
  b, length = tokens.shape
  valid = tokens > 0
  prompt_sees = jnp.ones((b, 1, n, n), bool)
  if segment_ids is None:
    prompt_sees_real = jnp.broadcast_to(valid[:, None, None, :], (b, 1, n, length))
  else:
    prompt_sees_real = jnp.zeros((b, 1, n, length), bool)
  real_sees_prompt = jnp.broadcast_to(valid[:, None, :, None], (b, 1, length, n))
  top = jnp.concatenate([prompt_sees, prompt_sees_real], axis=-1)
  bottom = jnp.concatenate([real_sees_prompt, base], axis=-1)
  return jnp.concatenate([top, bottom], axis=-2)


def decoder_mask(
  segment_ids: Optional[Array], causal_attention: Optional[Array], n: int, length: int
) -> tuple[Optional[Array], bool]:
  """(mask, is_causal) of a prompted decoder-only input of N + `length` positions (see
  `attention.decoder_self_attention_mask`).

  The prompt comes first and is causal among itself, so without packing
  or a prefix nothing changes (mask None, causal). Packed (`segment_ids`):
  every token also sees the prompt, prompt queries only the prompt. A
  prefix-LM prefix (`causal_attention`) sees itself whole and the prompt;
  the prompt is not part of the prefix (its queries stay causal), so a
  packed row and an unpacked one give the same outputs.
  """
  mask, causal = None, True
  if causal_attention is not None:
    lead = jnp.zeros((causal_attention.shape[0], n), causal_attention.dtype)
    mask, causal = attention_lib.decoder_self_attention_mask(
      None, jnp.concatenate([lead, causal_attention], axis=1), n + length
    )
  if segment_ids is not None:
    seg = segment_ids.astype(jnp.int32)
    seg = jnp.concatenate([jnp.full((seg.shape[0], n), -1, jnp.int32), seg], axis=1)
    is_prompt = jnp.arange(n + length) < n
    same = (seg[:, None, :, None] == seg[:, None, None, :]) | is_prompt[None, None, None, :]
    mask = same if mask is None else mask & same
  return mask, causal


def with_prompt_columns(mask: Array, n: int) -> Array:
  """A cross-attention mask bool [b, 1, q, L] with N visible columns (the prompt's encoder outputs) in front."""
  lead = jnp.ones(mask.shape[:-1] + (n,), bool)
  return jnp.concatenate([lead, mask.astype(bool)], axis=-1)


def with_prompt_valid(valid: Array, n: int) -> Array:
  """bool [b, L] (which positions are real) -> [b, N + L], the prompt's N positions True."""
  return jnp.concatenate([jnp.ones((valid.shape[0], n), bool), valid.astype(bool)], axis=1)


def decode_inputs(
  module: nn.Module,
  relpos: Optional[nn.Module],
  valid: Array,
  decode_index: Array,
  n: int,
  bidirectional_chunk: bool = False,
  prompt_chunk: bool = False,
) -> tuple[Optional[Array], Array, Array, Array, Array]:
  """(bias, mask, positions, cache_index, chunk_valid) of a chunk of a prompted decoder-only stack's KV cache.

  Call from the decoder's compact `__call__` once its cache exists. The
  cache holds N + T slots: the soft prompt at slots 0..N-1, token slot t
  (`decode_index` counts tokens, as without a prompt) at N + t. `valid`
  bool [b, q]: which of the chunk's q tokens are real (False: left
  padding). With `prompt_chunk` (the prefill chunk, at `decode_index` 0)
  the stack runs [prompt, chunk] from cache slot `decode_index`, writing
  the prompt's keys and values, its slots valid; otherwise the chunk
  alone from slot N + `decode_index`. Updates the module's `key_valid`.

  Returns:
    bias: float32 [b, heads, q', N + T] (q' = N + q for a prompt chunk,
      else q), or None without `relpos` (absolute positions). Positions are
      per row the number of valid slots before a slot, so the prompt sits
      at 0..N-1 and a row's i-th real token at N + i whatever the left
      padding between them, exactly as in training (a slot difference
      would put left padding between the prompt and the tokens).
    mask: bool [b, 1, q', N + T]: a query sees the written, valid slots up
      to its own; with `bidirectional_chunk` (a prefix-LM prompt) the
      chunk's tokens see the whole chunk, the prompt's queries stay
      causal (the prompt is not part of the prefix, as in `decoder_mask`).
    positions: int32 [b, q], the tokens' learned-position indices minus N
      for a prompt chunk (what `run_stack` shifts by N after prepending
      the prompt at 0..N-1), else the valid slots before each token
      (N + its index among the row's real tokens).
    cache_index: int32, the chunk's first cache slot (for the attention layers).
    chunk_valid: bool [b, q'], `valid` with the prompt's N slots (True) first for a prompt chunk.
  """
  q = valid.shape[1]
  idx = jnp.asarray(decode_index, jnp.int32)
  chunk_valid = with_prompt_valid(valid, n) if prompt_chunk else valid.astype(bool)
  cache_index = idx if prompt_chunk else idx + n
  _, mask = attention_lib.decode_self_attention_inputs(
    module, None, chunk_valid, cache_index, bidirectional_chunk and not prompt_chunk
  )
  key_valid = module.get_variable("cache", "key_valid")
  q_total, max_len = chunk_valid.shape[1], key_valid.shape[1]
  if bidirectional_chunk and prompt_chunk:
    is_token = jnp.arange(q_total) >= n
    in_chunk = jnp.arange(max_len) < cache_index + q_total
    mask = mask | ((is_token[:, None] & in_chunk[None, :])[None, None] & key_valid[:, None, None, :])
  before = jnp.cumsum(key_valid.astype(jnp.int32), axis=1) - key_valid.astype(jnp.int32)
  token_positions = jax.lax.dynamic_slice_in_dim(before, idx + n, q, axis=1)
  positions = token_positions - n if prompt_chunk else token_positions
  bias = None
  if relpos is not None:
    q_pos = jax.lax.dynamic_slice_in_dim(before, cache_index, q_total, axis=1)
    bias = relpos(q_total, max_len, q_pos, before)
  return bias, mask, positions, cache_index, chunk_valid


# --------------------------------------------------------------------------
# Initial values
# --------------------------------------------------------------------------


def initial_prompt(
  config: PromptTuningConfig, embedding: Array, rng: Array, text_ids: Optional[Sequence[int]] = None
) -> Array:
  """The soft prompt's starting value, float32 [config.length, d_model], from the token embedding.

  embedding: the base model's token embedding [vocab, d_model] (parameter
  'token_embedder/embedding'). 'vocab' init: rows at ids drawn uniformly
  (with replacement, from `rng`) from [vocab_start, min(vocab_end, vocab)),
  Lester et al. 2021's sampled-vocabulary init. 'text' init: the rows of
  `text_ids` (config.init_text tokenised with the task's vocabulary),
  cycled to `length` rows (truncated when longer); `rng` is unused.

  Raises:
    ValueError: an embedding that is not 2-D, a 'vocab' range that is
      empty once clipped to the vocabulary, 'text' init without `text_ids`
      (or with none), or text ids outside [0, vocab).
  """
  embedding = jnp.asarray(embedding)
  if embedding.ndim != 2:
    raise ValueError(f"initial_prompt needs the token embedding [vocab, d_model]; got shape {embedding.shape}")
  vocab = embedding.shape[0]
  n = config.length
  if config.init == "vocab":
    end = min(config.vocab_end, vocab)
    if config.vocab_start >= end:
      raise ValueError(
        f"PromptTuningConfig.vocab_start={config.vocab_start} leaves no ids to sample below "
        f"min(vocab_end={config.vocab_end}, vocabulary size {vocab}) = {end}"
      )
    ids = jax.random.randint(rng, (n,), config.vocab_start, end, dtype=jnp.int32)
  else:
    if text_ids is None or len(text_ids) == 0:
      raise ValueError(
        f"PromptTuningConfig.init='text' (init_text={config.init_text!r}) needs the text's token ids; got {text_ids!r}"
      )
    text = np.asarray(list(text_ids), np.int64)
    if text.min() < 0 or text.max() >= vocab:
      raise ValueError(f"text ids {text.tolist()} fall outside the vocabulary [0, {vocab})")
    ids = jnp.asarray(np.resize(text, n).astype(np.int32))
  return jnp.take(embedding, ids, axis=0).astype(jnp.float32)

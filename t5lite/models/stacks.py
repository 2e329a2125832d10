"""The encoder and decoder stacks both model families are built from.

One path from token ids to logits, `run_stack`: token embedding (plus learned
absolute positions when the config asks for them; then dropout) -> the layer
stack (t5lite.models.layers) with the stack's relative position bias (if any)
and masks -> final norm (and dropout) -> output logits (untied, or tied to the
embedding). `Encoder` is T5's encoder; `Decoder` is T5's decoder (with
cross-attention) and the decoder-only model's whole network (without), KV
cache included. Parameter names are T5X's (relpos_bias, layers_i,
encoder_norm / decoder_norm, logits_dense), plus position_embedder.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite.models import attention as attention_lib
from t5lite.models import embeddings, layers
from t5lite.models import prompt_tuning as prompt_lib

Array = jax.Array


def relative_position_bias(config: Any, bidirectional: bool) -> Optional[embeddings.RelativePositionBias]:
  """The stack's 'relpos_bias' module (call it inside the stack's compact method),
  or None when `config.position_embedding` is 'absolute'."""
  if config.position_embedding != "relative":
    return None
  return embeddings.RelativePositionBias(
    config.num_heads,
    config.relative_attention_num_buckets,
    config.relative_attention_max_distance,
    bidirectional=bidirectional,
    name="relpos_bias",
  )


def self_attention_bias(
  relpos: Optional[embeddings.RelativePositionBias],
  config: Any,
  length: int,
  segment_ids: Optional[Array],
  positions: Optional[Array],
  prompt_length: int = 0,
) -> Optional[Array]:
  """A stack's self-attention bias over its `length` tokens, after a soft prompt of
  `prompt_length` positions when there is one (prompt_tuning.bias_positions); None without `relpos`."""
  if relpos is None:
    return None
  if not prompt_length:
    return relpos(length, length, *embeddings.bias_positions(config, positions))
  total = prompt_length + length
  return relpos(total, total, *prompt_lib.bias_positions(config, prompt_length, segment_ids, positions))


def decoder_tokens_valid(tokens: Array, segment_ids: Optional[Array] = None) -> Array:
  """Which decoder input tokens are part of a sequence, bool [batch, length] (what a mixture of experts routes).

  Packed (`segment_ids` given): segment id > 0. Otherwise the inputs are the
  targets shifted right (0 first, then the target tokens, then padding 0s):
  position 0 and every position up to the last non-zero token.
  """
  if segment_ids is not None:
    return segment_ids > 0
  nonzero = tokens != 0
  to_end = jnp.flip(jax.lax.cummax(jnp.flip(nonzero, axis=-1).astype(jnp.int32), axis=tokens.ndim - 1), axis=-1) > 0
  return to_end | (jnp.arange(tokens.shape[-1]) == 0)


def run_stack(
  config: Any,
  embedder: embeddings.Embed,
  tokens: Array,
  layer_stack: Callable[[Array], Array],
  *,
  norm_name: str,
  deterministic: bool,
  logits: bool = False,
  positions: Optional[Array] = None,
  position_length: Optional[int] = None,
  prompt: Optional[Array] = None,
  token_types: Optional[Array] = None,
) -> Array:
  """Embed -> `layer_stack` -> final norm (-> logits), inside the calling compact module.

  tokens int32 [batch, length]; `layer_stack` maps the embedded tokens to the
  last layer's output (a `layers.apply_layer_stack` call with the stack's
  position bias and masks). With `config.position_embedding == 'absolute'`
  the learned 'position_embedder' rows of `positions` (int [batch or 1,
  length]; None: 0..length-1) are added to the token embedding before its
  dropout; `position_length` (default: length) is what the table must hold
  (the cache length when decoding), else a ValueError. One dropout module
  serves the embedding and the final norm output (both broadcast over the
  length). Returns float32 logits [batch, length, vocab] with `logits`
  (untied 'logits_dense', or `embedder.attend`, its input scaled by
  1/sqrt(d_model) when `config.scale_tied_logits`, with
  `config.logits_via_embedding`), else the normed activations
  [batch, length, d_model] in the activation dtype.

  A soft `prompt` [N, d_model] (t5lite.models.prompt_tuning) is prepended to
  the embedded tokens before the dropout, `layer_stack` then sees N + length
  positions (learned absolute positions 0..N-1 for the prompt, the tokens'
  shifted by N; a ValueError if the table is too short). The output keeps
  the prompt's N positions first ([batch, N + length, d_model]), except
  logits, which are for the tokens only ([batch, length, vocab]).
  """
  dt = config.activation_dtype
  dropout = nn.Dropout(config.dropout_rate, broadcast_dims=(-2,))
  x = embedder(tokens)
  n = 0
  if prompt is not None:
    n = prompt.shape[0]
    x = prompt_lib.prepend(prompt, x)
  if config.position_embedding == "absolute":
    length = tokens.shape[-1]
    if n:
      prompt_lib.check_fits(config, length)
      positions = prompt_lib.absolute_positions(n, positions, length)
    elif positions is None:
      positions = jnp.arange(length, dtype=jnp.int32)[None]
    stddev = getattr(config, "initializer_range", 1.0)
    table = embeddings.PositionEmbed(
      config.max_position_embeddings, config.d_model, dt, stddev, name="position_embedder"
    )
    x = x + table(positions, n + length if position_length is None else position_length)
  num_types = getattr(config, "type_vocab_size", 0)
  if num_types:
    if token_types is None:
      token_types = jnp.zeros(tokens.shape, jnp.int32)
    table = embeddings.TokenTypeEmbed(
      num_types, config.d_model, dt, config.initializer_range, name="token_type_embedder"
    )
    x = x + table(token_types)
  post = config.norm_placement == "post"
  if post:
    x = layers.norm(config, "embedding_norm")(x)
  x = dropout(x, deterministic=deterministic)
  x = layer_stack(nn.with_logical_constraint(x, ("batch", "length", "embed")))
  if n and logits:
    x = x[:, n:]
  if not post:
    x = layers.norm(config, norm_name)(x)
  x = dropout(x, deterministic=deterministic)
  if not logits:
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))
  if config.logits_via_embedding:
    out = embedder.attend(x)
    if config.scale_tied_logits:
      out = out / jnp.sqrt(jnp.float32(config.d_model))
  else:
    out = embeddings.OutputDense(config.vocab_size, dt, name="logits_dense")(x)
  return nn.with_logical_constraint(out, ("batch", "length", "vocab"))


class Encoder(nn.Module):
  """Bidirectional stack: embedding dropout, layers, final norm 'encoder_norm' (T5's encoder and,
  with post-norm, absolute positions and `token_types`, BERT's).

  Returns [batch, length, d_model] in the activation dtype; with
  `config.prompt_tuning`, [batch, N + length, d_model], the soft prompt
  ('soft_prompt' [N, d_model]) first (its masks and bias:
  t5lite.models.prompt_tuning).
  """

  config: Any
  shared_embedding: nn.Module
  num_layers: int

  @nn.compact
  def __call__(
    self,
    tokens: Array,
    segment_ids: Optional[Array] = None,
    positions: Optional[Array] = None,
    deterministic: bool = True,
    token_types: Optional[Array] = None,
  ) -> Array:
    cfg = self.config
    length = tokens.shape[-1]
    relpos = relative_position_bias(cfg, bidirectional=True)
    prompt = prompt_lib.soft_prompt(self, cfg)
    token_valid = tokens > 0 if cfg.num_experts else None  # what a mixture of experts routes
    n = prompt_lib.prompt_length(cfg)
    bias = self_attention_bias(relpos, cfg, length, segment_ids, positions, n)
    if prompt is None:
      mask = attention_lib.encoder_self_attention_mask(tokens, segment_ids)
    else:
      mask = prompt_lib.encoder_mask(tokens, segment_ids, n)
      if token_valid is not None:
        token_valid = prompt_lib.with_prompt_valid(token_valid, n)

    def layer_stack(x):
      return layers.apply_layer_stack(
        cfg, self.num_layers, x, bias, mask, deterministic=deterministic, token_valid=token_valid
      )

    return run_stack(
      cfg,
      self.shared_embedding,
      tokens,
      layer_stack,
      norm_name="encoder_norm",
      deterministic=deterministic,
      positions=positions,
      prompt=prompt,
      token_types=token_types,
    )


class Decoder(nn.Module):
  """Causal stack ending in logits; with `cross_attention`, T5's decoder.

  Causal relative-position buckets (also for a prefix-LM prefix, where keys
  to the right of the query share bucket 0, like T5X), or learned absolute
  positions. Returns float32 logits [batch, length, vocab].
  """

  config: Any
  shared_embedding: nn.Module
  num_layers: int
  cross_attention: bool = False

  @nn.compact
  def __call__(
    self,
    tokens: Array,
    encoded: Optional[Array] = None,
    encoder_tokens: Optional[Array] = None,
    encoder_segment_ids: Optional[Array] = None,
    segment_ids: Optional[Array] = None,
    positions: Optional[Array] = None,
    causal_attention: Optional[Array] = None,
    *,
    deterministic: bool = True,
    decode: bool = False,
    decode_index: Optional[Array] = None,
    valid: Optional[Array] = None,
    bidirectional_chunk: bool = False,
    prompt_chunk: bool = False,
  ) -> Array:
    """Logits of `tokens` [b, length].

    `causal_attention` (seqio PrefixLM: 1 on the prefix) lets the prefix see
    itself whole. With `decode`, the first call (tokens of the full cache
    length; with cross-attention also the encoder output and tokens) creates
    the 'cache' collection: zero self-attention caches, `key_valid` (which
    slots hold real tokens), and for cross-attention the encoder keys and
    values and `encoder_valid`. Later calls pass a chunk of tokens [b, q],
    its first cache slot `decode_index`, `valid` [b, q] (False for left
    padding; default all True) and `bidirectional_chunk` (a prefix-LM prompt
    sees itself whole); the encoder arguments may be None. With absolute
    positions a chunk token's position is the number of valid cache slots
    before it (`attention.decode_positions`).

    With `config.prompt_tuning`: a decoder-only stack (no cross-attention)
    prepends its 'soft_prompt' [N, d_model] to the tokens (masks and bias:
    t5lite.models.prompt_tuning.decoder_mask, .bias_positions) and returns
    the logits of the tokens only; a cross-attention decoder reads an
    encoder output of N + L positions whose first N (the encoder's prompt)
    every query may see. Decoding, its cache has N + T slots for T tokens,
    the prompt in the first N; `decode_index` still counts tokens (token
    slot t is cache slot N + t). The chunk that starts the sequence (the
    prefill, `decode_index` 0) must pass `prompt_chunk`, which writes the
    prompt's keys and values before the chunk's; later chunks read them.
    Positions and bias then match training: the prompt at 0..N-1 and a
    row's i-th real token at N + i, left padding skipped
    (t5lite.models.prompt_tuning.decode_inputs). Without a decoder-only
    prompt `prompt_chunk` does nothing.

    Raises:
      ValueError: the first decode call of a cross-attention decoder without
        the encoder output or tokens; with prompt tuning, an encoder output
        whose length is not N + the encoder tokens' length.
    """
    cfg = self.config
    length = tokens.shape[-1]
    relpos = relative_position_bias(cfg, bidirectional=False)
    n = prompt_lib.prompt_length(cfg)
    prompt = None if self.cross_attention else prompt_lib.soft_prompt(self, cfg)
    if self.cross_attention and n and encoded is not None and encoder_tokens is not None:
      if encoded.shape[1] != n + encoder_tokens.shape[1]:
        raise ValueError(
          f"prompt tuning: the encoder output has {encoded.shape[1]} positions but the soft prompt "
          f"({n}) plus the encoder tokens ({encoder_tokens.shape[1]}) make {n + encoder_tokens.shape[1]}"
        )
    cross_mask = None
    position_length = None
    if decode and self.has_variable("cache", "key_valid"):
      if valid is None:
        valid = jnp.ones(tokens.shape, bool)
      if prompt is None:
        bias, mask = attention_lib.decode_self_attention_inputs(self, relpos, valid, decode_index, bidirectional_chunk)
        positions = attention_lib.decode_positions(self, decode_index, length)
      else:
        bias, mask, positions, decode_index, valid = prompt_lib.decode_inputs(
          self, relpos, valid, decode_index, n, bidirectional_chunk, prompt_chunk
        )
        if not prompt_chunk:
          prompt = None  # its keys and values are in the cache
      position_length = self.get_variable("cache", "key_valid").shape[1]
      causal = False
      if self.cross_attention:
        cross_mask = self.get_variable("cache", "encoder_valid")[:, None, None, :]
    else:
      if decode:
        if self.cross_attention and (encoded is None or encoder_tokens is None):
          raise ValueError("the first decode call needs the encoder output and the encoder tokens")
        own = 0 if prompt is None else n  # the cache's prompt slots
        self.variable("cache", "key_valid", jnp.zeros, (tokens.shape[0], own + length), bool)
        if self.cross_attention:
          self.variable("cache", "encoder_valid", lambda: prompt_lib.with_prompt_valid(encoder_tokens > 0, n))
      bias = self_attention_bias(relpos, cfg, length, segment_ids, positions, 0 if prompt is None else n)
      if prompt is None:
        mask, causal = attention_lib.decoder_self_attention_mask(segment_ids, causal_attention, length)
      else:
        mask, causal = prompt_lib.decoder_mask(segment_ids, causal_attention, n, length)
      if self.cross_attention:
        cross_mask = attention_lib.encoder_decoder_attention_mask(encoder_tokens, encoder_segment_ids, segment_ids)
        if n:
          cross_mask = prompt_lib.with_prompt_columns(cross_mask, n)
    if encoded is not None:
      encoded = encoded.astype(cfg.activation_dtype)
    token_valid = None
    if cfg.num_experts:  # what a mixture of experts routes
      if decode and valid is not None:
        token_valid = valid
      elif not decode:
        token_valid = decoder_tokens_valid(tokens, segment_ids)
        if prompt is not None:
          token_valid = prompt_lib.with_prompt_valid(token_valid, n)

    def layer_stack(x):
      return layers.apply_layer_stack(
        cfg,
        self.num_layers,
        x,
        bias,
        mask,
        encoded,
        cross_mask,
        cross_attention=self.cross_attention,
        causal=causal,
        deterministic=deterministic,
        decode=decode,
        decode_index=decode_index,
        token_valid=token_valid,
      )

    return run_stack(
      cfg,
      self.shared_embedding,
      tokens,
      layer_stack,
      norm_name="decoder_norm",
      deterministic=deterministic,
      logits=True,
      positions=positions,
      position_length=position_length,
      prompt=prompt,
    )

"""The model-input feature format: model features from token ids, and back; prompt text to token ids.

The models read the features seqio's feature converters write (EncDec, LM and
PrefixLM). Training gets them from seqio (t5lite.data.pipeline); decoding,
scoring and evaluation build them, or read prompts out of them, here, with
numpy only (jax for jax arrays), so that they need neither TensorFlow nor seqio. Every function
gives what the seqio converter gives with `pack=False` (tests/test_features.py
compares them): int32 arrays, right padding with 0, decoder inputs shifted
right with BOS 0. Prompt text becomes token ids as the training pipeline
makes them (`encode_prompt`, `fit_to_length`; inference and evaluation use
these).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, TypeVar

import numpy as np

BOS_ID = 0  # the first decoder input, as seqio's converters write it
PAD_ID = 0
EOS_ID = 1
# The UL2 mode tokens (t5lite.data.vocab.UL2_MODE_TOKENS, not imported here so
# that token-level use needs neither sentencepiece nor seqio).
UL2_MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")

Features = dict[str, np.ndarray]
ArrayT = TypeVar("ArrayT")  # a numpy array or a jax.Array


def shift_right(tokens: ArrayT, segment_ids: Optional[ArrayT] = None, bos_id: int = BOS_ID) -> ArrayT:
  """Decoder inputs from decoder targets [..., length]: shifted right by one, `bos_id` first.

  With `segment_ids` (packed rows, same shape) the first position of every
  segment gets `bos_id` too, instead of the last token of the segment before.
  numpy arrays give numpy, jax arrays (traced ones included) give jax; the
  dtype and shape are kept. Source: seqio.utils.make_autoregressive_inputs.
  """
  if isinstance(tokens, np.ndarray):
    xp = np
  else:
    import jax.numpy as xp  # pylint: disable=g-import-not-at-top  (host-side use needs numpy only)

  bos = xp.full(tokens.shape[:-1] + (1,), bos_id, tokens.dtype)
  shifted = xp.concatenate([bos, tokens[..., :-1]], axis=-1)
  if segment_ids is None:
    return shifted
  previous = xp.concatenate([xp.zeros_like(segment_ids[..., :1]), segment_ids[..., :-1]], axis=-1)
  return xp.where(segment_ids == previous, shifted, xp.asarray(bos_id, tokens.dtype))


def pad(seqs: Sequence[Sequence[int]], length: Optional[int] = None) -> np.ndarray:
  """int32 [len(seqs), length]: each sequence left-aligned, padded with 0.

  `length` None: the longest sequence's length (at least 1).

  Raises:
    ValueError: a sequence longer than `length` (seqio refuses those too;
      cut them first, e.g. with t5lite.inference.fit_to_length).
  """
  length = length or max([len(s) for s in seqs] + [1])
  out = np.full((len(seqs), length), PAD_ID, np.int32)
  for i, s in enumerate(seqs):
    if len(s) > length:
      raise ValueError(f"sequence {i} has {len(s)} tokens, more than the feature length {length}")
    out[i, : len(s)] = s
  return out


def enc_dec_features(
  inputs: Sequence[Sequence[int]],
  targets: Sequence[Sequence[int]],
  input_length: Optional[int] = None,
  target_length: Optional[int] = None,
) -> Features:
  """seqio.EncDecFeatureConverter(pack=False) features of (inputs, targets) token ids.

  Returns int32 arrays: encoder_input_tokens [n, input_length],
  decoder_target_tokens, decoder_input_tokens (the targets shifted right) and
  decoder_loss_weights (1 on non-padding targets), each [n, target_length].
  A length None is the longest sequence's.

  Raises:
    ValueError: different numbers of inputs and targets, or a sequence longer
      than its length.
  """
  _check_pairs(inputs, targets)
  targets_2d = pad(targets, target_length)
  return {
    "encoder_input_tokens": pad(inputs, input_length),
    "decoder_target_tokens": targets_2d,
    "decoder_input_tokens": shift_right(targets_2d),
    "decoder_loss_weights": (targets_2d != PAD_ID).astype(np.int32),
  }


def lm_features(targets: Sequence[Sequence[int]], length: Optional[int] = None) -> Features:
  """seqio.LMFeatureConverter(pack=False) features of token ids: int32
  decoder_target_tokens, decoder_input_tokens and decoder_loss_weights, each
  [n, length] (None: the longest sequence's).

  Raises:
    ValueError: a sequence longer than `length`.
  """
  targets_2d = pad(targets, length)
  return {
    "decoder_target_tokens": targets_2d,
    "decoder_input_tokens": shift_right(targets_2d),
    "decoder_loss_weights": (targets_2d != PAD_ID).astype(np.int32),
  }


def prefix_lm_features(
  inputs: Sequence[Sequence[int]],
  targets: Sequence[Sequence[int]],
  length: Optional[int] = None,
  *,
  causal_attention: bool = True,
) -> Features:
  """seqio.PrefixLMFeatureConverter(pack=False) features of (inputs, targets) token ids.

  Each row is inputs + targets, padded to `length` (seqio's: the inputs
  length plus the targets length; None: the longest row). int32 arrays
  [n, length]: decoder_target_tokens, decoder_input_tokens (shifted right),
  decoder_loss_weights (1 on the targets part only) and
  decoder_causal_attention (1 on the inputs and one position more, the
  positions that see each other bidirectionally). Empty targets count as one
  padding target, as in seqio. `causal_attention=False` leaves the last
  feature out: the features that score targets given inputs with a causal LM.

  Raises:
    ValueError: different numbers of inputs and targets, or a row longer
      than `length`.
  """
  _check_pairs(inputs, targets)
  rows = [list(i) + list(t) for i, t in zip(inputs, targets)]
  targets_2d = pad(rows, length)
  positions = np.arange(targets_2d.shape[1])[None, :]
  inputs_width = np.asarray([len(i) for i in inputs], np.int64)[:, None]
  in_inputs = positions < inputs_width
  features = {
    "decoder_target_tokens": targets_2d,
    "decoder_input_tokens": shift_right(targets_2d),
    # seqio's XOR: the non-padding positions outside the inputs part.
    "decoder_loss_weights": (in_inputs ^ (targets_2d != PAD_ID)).astype(np.int32),
  }
  if causal_attention:
    features["decoder_causal_attention"] = (positions < inputs_width + 1).astype(np.int32)
  return features


def prompts(features: dict[str, np.ndarray]) -> np.ndarray:
  """The inputs to decode from, out of EncDec or PrefixLM model features.

  EncDec: `encoder_input_tokens` as they are. PrefixLM: the first
  sum(decoder_causal_attention) - 1 tokens of each row's
  `decoder_target_tokens` (the inputs part), left-aligned, int32
  [n, longest inputs part (at least 1)], padded with 0.

  Raises:
    ValueError: features with neither encoder inputs nor
      `decoder_causal_attention` (LM features hold no inputs).
  """
  if "encoder_input_tokens" in features:
    return features["encoder_input_tokens"]
  if "decoder_causal_attention" not in features:
    raise ValueError("decoding needs inputs: evaluate a decoder-only model on a prefix-LM (inputs/targets) task")
  targets = features["decoder_target_tokens"]
  n_inputs = features["decoder_causal_attention"].sum(axis=1) - 1
  out = np.zeros((len(targets), int(n_inputs.max(initial=1))), np.int32)
  for r, n in enumerate(n_inputs):
    out[r, :n] = targets[r, :n]
  return out


def _check_pairs(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> None:
  if len(inputs) != len(targets):
    raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")


# ----------------------------------------------------------------------------
# Text -> token ids, as the training pipeline makes them.
# ----------------------------------------------------------------------------
def mode_token_ids(vocabulary: Any) -> dict[str, int]:
  """{mode token: id} of the UL2 mode tokens that are single pieces of
  `vocabulary` ({} for a vocabulary without them, e.g. bytes)."""
  tokenizer = getattr(vocabulary, "tokenizer", None)
  if tokenizer is None or not hasattr(tokenizer, "piece_to_id"):  # bytes, or WordPiece (no mode tokens)
    return {}
  ids = {t: tokenizer.piece_to_id(t) for t in UL2_MODE_TOKENS}
  return {t: i for t, i in ids.items() if i != tokenizer.unk_id()}


def encode_prompt(
  vocabulary: Any, text: str, label: str = "input 0", mode_ids: Optional[Mapping[str, int]] = None
) -> list[int]:
  """Token ids of one prompt (no EOS), as UL2 training would give them.

  A prompt that starts with a UL2 mode token of the vocabulary ("[NLU] The
  function ...") is `[mode id] + encode(rest)`, the rest stripped of leading
  spaces: training prepends the mode id to the ids of the text
  (`objectives.denoise`, `objectives.prefix_lm`), whereas SentencePiece alone
  would put a dummy-prefix piece '▁' before the mode piece. Other prompts are
  `vocabulary.encode(text)`.

  Args:
    vocabulary: a seqio vocabulary.
    text: the prompt.
    label: how errors name this prompt ('input 3', 'data.jsonl:11').
    mode_ids: `mode_token_ids(vocabulary)`, when the caller has it already.

  Raises:
    ValueError: `text` is not a string, is empty or blank, or is a mode token
      with no text after it.
  """
  if not isinstance(text, str):
    raise ValueError(f"{label} is {type(text).__name__}, not a string")
  if not text.strip():
    raise ValueError(f"{label} is empty; give at least one non-space character")
  mode_ids = mode_token_ids(vocabulary) if mode_ids is None else mode_ids
  stripped = text.lstrip()
  for token, token_id in mode_ids.items():
    if stripped.startswith(token):
      rest = stripped[len(token) :].lstrip()
      if not rest:
        raise ValueError(f"{label} is only the UL2 mode token {token}; give the text to {token} after it")
      return [token_id] + list(vocabulary.encode(rest))
  return list(vocabulary.encode(text))


def fit_to_length(ids: Sequence[int], length: Optional[int], *, append_eos: bool) -> tuple[list[int], bool]:
  """(ids as the training pipeline cuts them to `length`, whether they were cut).

  With `append_eos`, seqio's `append_eos_after_trim`: trimmed to length - 1,
  then EOS, so a cut sequence still ends with EOS; without, trimmed to
  `length` (what the feature converter does). `length` None: no limit.
  """
  ids = list(ids) + ([EOS_ID] if append_eos else [])
  if length is None or len(ids) <= length:
    return ids, False
  if append_eos:
    return ids[: length - 1] + [EOS_ID], True
  return ids[:length], True

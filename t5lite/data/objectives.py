"""Pretraining objectives as seqio preprocessors: span corruption, UL2, prefix LM, causal LM.

Each objective is a plain seqio preprocessor (`fn(dataset, sequence_length,
output_features)` plus keyword arguments), so it can be put in anyone's Task
after `seqio.preprocessors.tokenize` and before
`seqio.preprocessors.append_eos_after_trim`. They work on the 'targets' feature
of tokenized documents, concatenate documents and split them into chunks whose
raw length is computed from the task's feature lengths (T5's rule: inputs 512
need 568 raw tokens and give 114 targets), so nothing is ever truncated.

Each preprocessor checks the features it reads from `dataset.element_spec`
when it is applied (`check_token_feature`): raw text, a missing 'targets' key
or batched examples are a ValueError naming the preprocessor, the feature,
what was found and what to put before it, not a TensorFlow error at iteration.

seqio provides the plumbing (per-example random seeds, tokenizing, EOS); the
masking, the length rules and the denoiser definitions are written here because
seqio does not ship T5's objectives (they live in the unmaintained `t5` package).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from t5lite.data import vocab as vocab_lib

# Documents concatenated at once before splitting into chunks (T5 uses 128).
CONCAT_DOCS = 128


# --------------------------------------------------------------------------- #
# Length rules (pure Python, used to size chunks and to validate early).
# --------------------------------------------------------------------------- #
def num_noise_and_spans(length: int, noise_density: float, mean_noise_span_length: float):
  """Noise tokens and noise spans for a chunk of `length` raw tokens."""
  num_noise = int(round(length * noise_density))
  num_noise = min(max(num_noise, 1), length - 1)
  num_spans = int(round(num_noise / mean_noise_span_length))
  num_spans = min(max(num_spans, 1), num_noise, length - num_noise)
  return num_noise, num_spans


def denoised_lengths(length: int, noise_density: float, mean_noise_span_length: float):
  """(inputs, targets) lengths, EOS included, produced from `length` raw tokens."""
  num_noise, num_spans = num_noise_and_spans(length, noise_density, mean_noise_span_length)
  return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def span_corruption_raw_length(
  inputs_length: int,
  targets_length: Optional[int],
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
  extra_inputs_tokens: int = 0,
  max_spans: Optional[int] = None,
) -> int:
  """The longest raw chunk whose corrupted inputs and targets fit the lengths.

  With `max_spans` (the number of sentinels the vocabulary has), chunks are
  also kept short enough that every noise span gets its own sentinel; for
  dense denoisers (UL2's X with 50% noise) that binds before the lengths do,
  and packing fills the rest of the row.

  >>> span_corruption_raw_length(512, 114)
  568
  """
  _check_denoiser_args(noise_density, mean_noise_span_length)
  best = 0
  # Inputs shrink by at most a factor (1 - density); search a bounded range.
  limit = int(inputs_length / max(1e-6, 1 - noise_density)) + 16
  for length in range(2, limit + 1):
    inp, tgt = denoised_lengths(length, noise_density, mean_noise_span_length)
    if max_spans is not None and num_noise_and_spans(length, noise_density, mean_noise_span_length)[1] > max_spans:
      break
    if inp + extra_inputs_tokens <= inputs_length and (targets_length is None or tgt <= targets_length):
      best = length
  if best < 2:
    inp, tgt = denoised_lengths(2, noise_density, mean_noise_span_length)
    raise ValueError(
      f"Sequence lengths inputs={inputs_length}, targets={targets_length} are too "
      f"short for span corruption (noise_density={noise_density}, "
      f"mean_noise_span_length={mean_noise_span_length}): the minimum is "
      f"inputs={inp + extra_inputs_tokens}, targets={tgt}."
    )
  return best


def _check_denoiser_args(noise_density: float, mean_noise_span_length: float) -> None:
  if not 0.0 < noise_density < 1.0:
    raise ValueError(f"noise_density={noise_density} must be in (0, 1).")
  if mean_noise_span_length < 1.0:
    raise ValueError(f"mean_noise_span_length={mean_noise_span_length} must be >= 1.")


def _feature_length(sequence_length: Optional[Mapping[str, int]], key: str) -> Optional[int]:
  if sequence_length is None or key not in sequence_length:
    raise ValueError(f"This objective needs a '{key}' length in task_feature_lengths, got {sequence_length}.")
  return sequence_length[key]


def check_token_feature(
  dataset: tf.data.Dataset,
  preprocessor: str,
  feature: str = "targets",
  tokenizer: str = "seqio.preprocessors.tokenize (with_eos=False)",
) -> None:
  """Raises a ValueError unless `dataset` has a 1-D integer feature `feature`.

  The objectives read token ids; fed raw text (a string feature) or the wrong
  key, TensorFlow fails only later, deep inside a traced map function or when
  the dataset is iterated ("Cast string to int32 is not supported", a traced
  KeyError). This check runs when the preprocessor is applied, from
  `dataset.element_spec`, and says what to put before the objective.

  Args:
    dataset: the dataset the preprocessor was given.
    preprocessor: the preprocessor's name, for the message.
    feature: the feature it reads (token ids, int32 or int64, shape [length]).
    tokenizer: the tokenizing preprocessor that should come before it.

  Raises:
    ValueError: `feature` is missing, is not an integer tensor, or is not 1-D.
  """
  spec = dataset.element_spec
  if not isinstance(spec, Mapping):
    raise ValueError(
      f"{preprocessor} needs a dataset of feature dicts with a '{feature}' feature of token ids; got elements "
      f"of type {spec}. Put the source's text in a dict (seqio sources give dicts) and {tokenizer} before "
      f"{preprocessor}."
    )
  if feature not in spec:
    strings = sorted(k for k, v in spec.items() if getattr(v, "dtype", None) == tf.string)
    rekey = (
      (
        f" For example functools.partial(seqio.preprocessors.rekey, key_map={{'{feature}': "
        f"'{strings[0]}'}}), then {tokenizer}; register_pretraining_tasks(..., text_key='{strings[0]}') "
        "does both."
      )
      if strings
      else ""
    )
    raise ValueError(
      f"{preprocessor} reads the feature '{feature}' (the tokenized documents), but the dataset has only "
      f"{sorted(spec)}. Map your text feature to '{feature}' and tokenize it before {preprocessor}.{rekey}"
    )
  s = spec[feature]
  dtype = getattr(s, "dtype", None)
  if dtype is None or not dtype.is_integer:
    if dtype == tf.string:
      fix = f"Put {tokenizer} before {preprocessor} in the Task's preprocessors."
    else:
      fix = (
        f"Give it token ids (int32 or int64), as {tokenizer} produces; "
        f"cast them with tf.cast(x, tf.int32) if they are ids stored as another type."
      )
    raise ValueError(
      f"{preprocessor} reads '{feature}' as token ids (int32 or int64), but it is "
      f"{dtype.name if dtype is not None else type(s).__name__}: {s}. {fix}"
    )
  rank = s.shape.rank
  if rank is not None and rank != 1:
    raise ValueError(
      f"{preprocessor} reads '{feature}' as one document of token ids per example (shape [length]), but its "
      f"shape is {s.shape}; apply {preprocessor} before batching (or unbatch first)."
    )


def _check_output_features(
  output_features: Mapping[str, seqio.Feature], preprocessor: str, needed: Sequence[str]
) -> None:
  """Raises a ValueError naming the Task output features `preprocessor` needs and lacks."""
  missing = [k for k in needed if k not in (output_features or {})]
  if missing:
    raise ValueError(
      f"{preprocessor} needs the output feature(s) {missing} in the Task's output_features (for their "
      f"vocabulary); the Task has {sorted(output_features or {})}."
    )


def _mode_prefix(output_features, mode_token: Optional[str]) -> Optional[int]:
  if mode_token is None:
    return None
  return vocab_lib.mode_token_id(output_features["inputs"].vocabulary, mode_token)


# --------------------------------------------------------------------------- #
# Concatenate and split.
# --------------------------------------------------------------------------- #
def concatenate_and_split(
  dataset: tf.data.Dataset,
  chunk_length: int,
  feature_key: str = "targets",
  min_length: int = 2,
  concat_docs: int = CONCAT_DOCS,
) -> tf.data.Dataset:
  """Concatenates tokenized documents in groups and cuts them into chunks.

  Documents are joined without a separator (as T5 does for span corruption);
  the last chunk of each group may be shorter and is dropped when shorter than
  `min_length`. Returns a dataset of {feature_key: int32[<=chunk_length]}.
  """
  if chunk_length < 1:
    raise ValueError(f"chunk_length={chunk_length} must be positive.")
  check_token_feature(dataset, "concatenate_and_split", feature_key)
  ds = dataset.map(lambda x: tf.cast(x[feature_key], tf.int32), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.ragged_batch(concat_docs)

  def to_chunks(group):
    # ragged_batch gives a dense tensor when all documents have one length.
    tokens = tf.reshape(group.flat_values if isinstance(group, tf.RaggedTensor) else group, [-1])
    n = tf.size(tokens)
    full = n // chunk_length
    rest = n - full * chunk_length
    lengths = tf.concat([tf.fill([full], chunk_length), tf.reshape(rest, [1])[: tf.cast(rest > 0, tf.int32)]], 0)
    return tf.RaggedTensor.from_row_lengths(tokens, tf.cast(lengths, tf.int64))

  ds = ds.map(to_chunks, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.unbatch()
  ds = ds.filter(lambda t: tf.size(t) >= min_length)
  return ds.map(lambda t: {feature_key: t})


# --------------------------------------------------------------------------- #
# Span corruption (T5) and the R/X denoisers of UL2.
# --------------------------------------------------------------------------- #
def _random_composition(total: tf.Tensor, parts: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Splits `total` into `parts` positive integers, uniformly over compositions."""
  # Choose parts-1 distinct cut points among 1..total-1.
  scores = tf.random.stateless_uniform([total - 1], seed=seed)
  cuts = tf.sort(tf.argsort(scores)[: parts - 1] + 1)
  bounds = tf.concat([[0], tf.cast(cuts, tf.int32), [total]], 0)
  return bounds[1:] - bounds[:-1]


def noise_span_mask(
  length: tf.Tensor,
  noise_density: float,
  mean_noise_span_length: float,
  seeds: Sequence[tf.Tensor],
) -> tf.Tensor:
  """A boolean mask of noise positions: alternating clean and noise spans.

  The number of noise tokens and spans follows `num_noise_and_spans`; span
  lengths are random compositions. The mask starts with a clean span and ends
  with a noise span, as T5's does.
  """
  length = tf.cast(length, tf.int32)
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
  num_spans = tf.minimum(tf.maximum(num_spans, 1), tf.minimum(num_noise, length - num_noise))
  noise_lengths = _random_composition(num_noise, num_spans, seeds[0])
  clean_lengths = _random_composition(length - num_noise, num_spans, seeds[1])
  interleaved = tf.reshape(tf.stack([clean_lengths, noise_lengths], axis=1), [-1])
  span_starts = tf.cumsum(interleaved)[:-1]
  start_marks = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
  span_number = tf.cumsum(start_marks)
  return tf.equal(span_number % 2, 1)


def corrupt_spans(tokens: tf.Tensor, noise_mask: tf.Tensor, vocab_size: int):
  """Inputs with each noise span replaced by a sentinel, targets with the spans.

  Sentinel i (for the i-th noise span) is `vocab_size - 1 - i`: unique per
  span and counting down from the end of the vocabulary.
  """
  previous = tf.concat([[False], noise_mask[:-1]], 0)
  span_start = tf.logical_and(noise_mask, tf.logical_not(previous))
  sentinels = vocab_size - tf.cumsum(tf.cast(span_start, tokens.dtype))

  # Each position emits up to two ids: [sentinel if a span starts, token].
  def emit(keep_token):
    values = tf.reshape(tf.stack([sentinels, tokens], axis=1), [-1])
    keep = tf.reshape(tf.stack([span_start, keep_token], axis=1), [-1])
    return tf.boolean_mask(values, keep)

  return emit(tf.logical_not(noise_mask)), emit(noise_mask)


@seqio.map_over_dataset(num_seeds=2)
def _corrupt_example(x, seeds, noise_density, mean_noise_span_length, vocab_size, mode_id):
  tokens = x["targets"]
  mask = noise_span_mask(tf.size(tokens), noise_density, mean_noise_span_length, seeds)
  inputs, targets = corrupt_spans(tokens, mask, vocab_size)
  if mode_id is not None:
    inputs = tf.concat([[tf.cast(mode_id, inputs.dtype)], inputs], 0)
  return {"inputs": inputs, "targets": targets}


def denoise(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int],
  output_features: Mapping[str, seqio.Feature],
  *,
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
  mode_token: Optional[str] = None,
  name: Optional[str] = None,
) -> tf.data.Dataset:
  """Span corruption over concatenated documents (any R/X denoiser).

  Expects tokenized 'targets' without EOS (int32/int64 [length]); returns
  'inputs' and 'targets' without EOS (add it with
  `seqio.preprocessors.append_eos_after_trim`). The chunk length is the longest
  that fits `sequence_length` with the EOS and the optional mode token, so with
  the defaults and inputs 512 each chunk holds 568 tokens and the targets are
  114 long. `name` is what errors call this preprocessor.

  Raises:
    ValueError (when applied, before any data is read): bad noise settings, a
      missing or non-integer 'targets' feature (raw text: tokenize first), a
      vocabulary without sentinels, lengths too short for one noise span.
  """
  name = name or (
    f"denoise(noise_density={noise_density}, mean_noise_span_length={mean_noise_span_length}"
    f"{'' if mode_token is None else f', mode_token={mode_token!r}'})"
  )
  _check_denoiser_args(noise_density, mean_noise_span_length)
  check_token_feature(dataset, name)
  _check_output_features(output_features, name, ["targets"] + (["inputs"] if mode_token is not None else []))
  vocabulary = output_features["targets"].vocabulary
  if vocabulary.extra_ids < 1:
    raise ValueError(
      f"{vocabulary} has no extra ids, so no sentinels for span corruption; "
      "use a vocabulary with extra_ids=100 as T5 does."
    )
  raw = span_corruption_raw_length(
    _feature_length(sequence_length, "inputs"),
    _feature_length(sequence_length, "targets"),
    noise_density,
    mean_noise_span_length,
    extra_inputs_tokens=int(mode_token is not None),
    max_spans=vocabulary.extra_ids,
  )
  mode_id = _mode_prefix(output_features, mode_token)
  ds = concatenate_and_split(dataset, raw)
  return _corrupt_example(
    ds,
    noise_density=noise_density,
    mean_noise_span_length=mean_noise_span_length,
    vocab_size=vocabulary.vocab_size,
    mode_id=mode_id,
  )


def span_corruption(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int],
  output_features: Mapping[str, seqio.Feature],
) -> tf.data.Dataset:
  """T5 span corruption: `denoise` with noise density 0.15, mean noise span 3."""
  return denoise(
    dataset, sequence_length, output_features, noise_density=0.15, mean_noise_span_length=3.0, name="span_corruption"
  )


# --------------------------------------------------------------------------- #
# Prefix LM (UL2's S-denoiser) and causal LM.
# --------------------------------------------------------------------------- #
def prefix_lm_lengths(inputs_length: int, targets_length: int, mean_target_fraction: float, mode: bool):
  """(chunk length, max target tokens) for prefix LM; EOS is added to both sides."""
  if not 0.0 < mean_target_fraction <= 0.5:
    raise ValueError(f"mean_target_fraction={mean_target_fraction} must be in (0, 0.5].")
  chunk = inputs_length - 1 - int(mode)
  if chunk < 2 or targets_length < 2:
    raise ValueError(
      f"Sequence lengths inputs={inputs_length}, targets={targets_length} are too "
      f"short for prefix LM: the minimum is inputs={3 + int(mode)}, targets=2."
    )
  max_target = max(1, min(targets_length - 1, int(round(2 * mean_target_fraction * chunk)), chunk - 1))
  return chunk, max_target


@seqio.map_over_dataset(num_seeds=1)
def _split_prefix(x, seed, max_target, mode_id):
  tokens = x["targets"]
  n = tf.size(tokens)
  hi = tf.minimum(max_target, n - 1)
  num_targets = tf.random.stateless_uniform([], seed=seed, minval=1, maxval=hi + 1, dtype=tf.int32)
  split = n - num_targets
  inputs = tokens[:split]
  if mode_id is not None:
    inputs = tf.concat([[tf.cast(mode_id, inputs.dtype)], inputs], 0)
  return {"inputs": inputs, "targets": tokens[split:]}


def prefix_lm(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int],
  output_features: Mapping[str, seqio.Feature],
  *,
  mean_target_fraction: float = 0.5,
  mode_token: Optional[str] = None,
  name: str = "prefix_lm",
) -> tf.data.Dataset:
  """Prefix LM: a chunk of text split at a random point into inputs and targets.

  Chunks are as long as the inputs allow; the number of target tokens is drawn
  uniformly from [1, 2 * mean_target_fraction * chunk] (capped by the targets
  length), so its mean is `mean_target_fraction` of the chunk. 0.5 gives a
  uniformly random split point; UL2's S-denoiser uses 0.25. The output suits
  both the encoder-decoder and the decoder-only (PrefixLM) feature converters.
  Expects tokenized 'targets' without EOS (int32/int64 [length]); `name` is
  what errors call this preprocessor.

  Raises:
    ValueError (when applied): a missing or non-integer 'targets' feature,
      mean_target_fraction outside (0, 0.5], lengths too short.
  """
  check_token_feature(dataset, name)
  if mode_token is not None:
    _check_output_features(output_features, name, ["inputs"])
  chunk, max_target = prefix_lm_lengths(
    _feature_length(sequence_length, "inputs"),
    _feature_length(sequence_length, "targets"),
    mean_target_fraction,
    mode_token is not None,
  )
  mode_id = _mode_prefix(output_features, mode_token)
  ds = concatenate_and_split(dataset, chunk)
  return _split_prefix(ds, max_target=max_target, mode_id=mode_id)


def causal_lm(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int],
  output_features: Mapping[str, seqio.Feature],
) -> tf.data.Dataset:
  """Causal LM: documents (each ending in EOS) concatenated into full-length chunks.

  Expects 'targets' tokenized WITH a trailing EOS per document (use
  `seqio.preprocessors.tokenize_and_append_eos`), so document boundaries stay
  visible in the packed stream and no position is wasted on padding.

  Raises:
    ValueError (when applied): a missing or non-integer 'targets' feature, a
      targets length under 2.
  """
  del output_features
  check_token_feature(dataset, "causal_lm", tokenizer="seqio.preprocessors.tokenize_and_append_eos")
  length = _feature_length(sequence_length, "targets")
  if length < 2:
    raise ValueError(f"targets length {length} is too short for causal LM: the minimum is 2.")
  return concatenate_and_split(dataset, length)


# --------------------------------------------------------------------------- #
# UL2 mixture of denoisers.
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class Denoiser:
  """One UL2 denoiser: a span-corruption setting or the sequential (S) one."""

  name: str
  mode_token: str
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  prefix_lm: bool = False
  mean_target_fraction: float = 0.25

  def preprocessor(self):
    if self.prefix_lm:
      return functools.partial(
        prefix_lm,
        mean_target_fraction=self.mean_target_fraction,
        mode_token=self.mode_token,
        name=f"UL2 denoiser {self.name!r} (prefix_lm)",
      )
    return functools.partial(
      denoise,
      noise_density=self.noise_density,
      mean_noise_span_length=self.mean_noise_span_length,
      mode_token=self.mode_token,
      name=f"UL2 denoiser {self.name!r} (denoise)",
    )


# The seven denoisers of the UL2 paper's Table 1.
UL2_DENOISERS = (
  Denoiser("r_3_15", "[NLU]", 0.15, 3.0),
  Denoiser("r_8_15", "[NLU]", 0.15, 8.0),
  Denoiser("x_3_50", "[NLG]", 0.5, 3.0),
  Denoiser("x_8_50", "[NLG]", 0.5, 8.0),
  Denoiser("x_64_15", "[NLG]", 0.15, 64.0),
  Denoiser("x_64_50", "[NLG]", 0.5, 64.0),
  Denoiser("s", "[S2S]", prefix_lm=True, mean_target_fraction=0.25),
)

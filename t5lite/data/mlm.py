"""BERT's input format and masked-language-model objective as seqio preprocessors.

`bert_inputs` lays out `[CLS] A [SEP] (B [SEP])` with token types, `document_chunks` cuts
tokenized documents into pieces that fill the inputs length, and `mlm` selects 15 % of the
non-special tokens and replaces 80 / 10 / 10 % of them with `[MASK]` / a random token / the
same token (whole words with `whole_word=True`). They read the vocabulary of the Task's
"inputs" feature and need BERT's special ids on it (`cls_id`, `sep_id`, `mask_id`,
`special_ids`, `word_start_ids()`, as `t5lite.data.wordpiece.WordPieceVocabulary` has).

seqio gives the per-example seeds (`map_over_dataset(num_seeds=...)`), so the masks are a
function of the task's seed alone. The masking and the layout are written here because
neither seqio nor TensorFlow Text ships them for tf.data (Google BERT's
create_pretraining_data.py is an offline Python script; tf-models' `MaskedLM` layer works on
batches inside a Keras model).
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from t5lite.data import objectives

# Tokens of a document left after the last full chunk are kept when at least this long.
MIN_CHUNK_TOKENS = 8


# --------------------------------------------------------------------------- #
# Checks.
# --------------------------------------------------------------------------- #
def check_rates(noise_density: float, mask_rate: float, random_rate: float) -> None:
  """Raises a ValueError naming a bad MLM rate and the valid range.

  noise_density must be in (0, 1); mask_rate and random_rate in [0, 1] with
  mask_rate + random_rate <= 1 (the rest of the selected tokens are kept).
  """
  for name, value, lo_open in (
    ("noise_density", noise_density, True),
    ("mask_rate", mask_rate, False),
    ("random_rate", random_rate, False),
  ):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise ValueError(f"{name}={value!r} must be a number.")
    if lo_open and not 0.0 < value < 1.0:
      raise ValueError(f"{name}={value} must be in (0, 1) (0.15 in BERT).")
    if not lo_open and not 0.0 <= value <= 1.0:
      raise ValueError(f"{name}={value} must be in [0, 1] (BERT: mask_rate 0.8, random_rate 0.1).")
  if mask_rate + random_rate > 1.0 + 1e-9:
    raise ValueError(
      f"mask_rate={mask_rate} + random_rate={random_rate} = {mask_rate + random_rate} must be <= 1 "
      "(the rest of the selected tokens are kept unchanged)."
    )


def bert_vocabulary(output_features: Mapping[str, seqio.Feature], preprocessor: str, need_mask: bool = False):
  """The "inputs" vocabulary, checked to carry BERT's special ids.

  Raises:
    ValueError: no "inputs" output feature, or a vocabulary without [CLS] /
      [SEP] (or [MASK] when `need_mask`), e.g. a SentencePiece vocabulary.
  """
  objectives._check_output_features(output_features, preprocessor, ["inputs"])  # pylint: disable=protected-access
  vocabulary = output_features["inputs"].vocabulary
  needed = ["cls_id", "sep_id"] + (["mask_id"] if need_mask else [])
  missing = [a for a in needed if getattr(vocabulary, a, None) is None]
  if missing:
    tokens = {"cls_id": "[CLS]", "sep_id": "[SEP]", "mask_id": "[MASK]"}
    raise ValueError(
      f"{preprocessor} needs a vocabulary with the token(s) {[tokens[a] for a in missing]}, but the 'inputs' "
      f"vocabulary {vocabulary} has none. Use a WordPiece vocabulary "
      "(t5lite.data.wordpiece.WordPieceVocabulary or default_wordpiece_vocabulary())."
    )
  return vocabulary


def _special_ids(vocabulary) -> list[int]:
  ids = getattr(vocabulary, "special_ids", None)
  if ids is None:
    ids = {getattr(vocabulary, a, None) for a in ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id")} - {None}
  return sorted(int(i) for i in ids)


def _is_special(tokens: tf.Tensor, special: list[int]) -> tf.Tensor:
  return tf.reduce_any(tf.equal(tokens[:, None], tf.constant(special, tokens.dtype)[None, :]), axis=1)


def _as_ids(x: tf.Tensor, vocabulary) -> tf.Tensor:
  """Token ids of a feature: strings are encoded with `vocabulary`, ids cast to int32."""
  if x.dtype == tf.string:
    x = vocabulary.encode_tf(x)
  return tf.cast(x, tf.int32)


# --------------------------------------------------------------------------- #
# [CLS] A [SEP] (B [SEP]).
# --------------------------------------------------------------------------- #
def truncate_pair_lengths(len_a: tf.Tensor, len_b: tf.Tensor, budget: int):
  """Lengths of A and B after BERT's longest-first truncation to `budget` tokens.

  Same result as Google BERT's `_truncate_seq_pair` (run_classifier.py), which
  pops the last token of the longer segment (of B on a tie) until the pair
  fits: the shorter segment is kept whole when it fits in half the budget,
  otherwise A gets ceil(budget / 2) and B floor(budget / 2).
  """
  len_a = tf.cast(len_a, tf.int32)
  len_b = tf.cast(len_b, tf.int32)
  over = len_a + len_b > budget
  new_a = tf.minimum(len_a, tf.maximum((budget + 1) // 2, budget - len_b))
  return tf.where(over, new_a, len_a), tf.where(over, budget - new_a, len_b)


def bert_inputs(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int],
  output_features: Mapping[str, seqio.Feature],
  *,
  second_key: Optional[str] = None,
) -> tf.data.Dataset:
  """Lays out "inputs" (and `second_key`) as `[CLS] A [SEP] (B [SEP])` with "token_type_ids".

  "inputs" (and the feature `second_key`, sentence B, if given) are token ids
  (int32/int64 [length], e.g. from `seqio.preprocessors.tokenize` with
  with_eos=False) or text (tf.string scalars, encoded here with the "inputs"
  vocabulary). The result fits the "inputs" length L: A is cut to L - 2 tokens;
  a pair is cut longest-first to L - 3 (`truncate_pair_lengths`), as BERT does.
  Returns "inputs" int32 [<= L] and "token_type_ids" int32 [<= L] (0 for
  `[CLS] A [SEP]`, 1 for `B [SEP]`); other features pass through, `second_key`
  is dropped.

  Raises:
    ValueError (when applied): no "inputs" length, an L too short for the
      specials and one token per segment, a vocabulary without [CLS]/[SEP],
      a missing feature.
  """
  name = "bert_inputs"
  vocabulary = bert_vocabulary(output_features, name)
  length = objectives._feature_length(sequence_length, "inputs")  # pylint: disable=protected-access
  budget = length - (3 if second_key else 2)
  if budget < (2 if second_key else 1):
    raise ValueError(
      f"{name}: inputs length {length} is too short for {'[CLS] A [SEP] B [SEP]' if second_key else '[CLS] A [SEP]'}"
      f" with one token per segment; the minimum is {5 if second_key else 3}."
    )
  spec = dataset.element_spec
  for key in ["inputs"] + ([second_key] if second_key else []):
    if not isinstance(spec, Mapping) or key not in spec:
      raise ValueError(
        f"{name} reads the feature {key!r}, but the dataset has {sorted(spec) if isinstance(spec, Mapping) else spec}."
      )
  cls = tf.constant([vocabulary.cls_id], tf.int32)
  sep = tf.constant([vocabulary.sep_id], tf.int32)

  def fn(x):
    x = dict(x)
    a = _as_ids(x["inputs"], vocabulary)
    if second_key:
      b = _as_ids(x.pop(second_key), vocabulary)
      la, lb = truncate_pair_lengths(tf.size(a), tf.size(b), budget)
      first = tf.concat([cls, a[:la], sep], 0)
      second = tf.concat([b[:lb], sep], 0)
      x["inputs"] = tf.concat([first, second], 0)
      x["token_type_ids"] = tf.concat([tf.zeros_like(first), tf.ones_like(second)], 0)
    else:
      x["inputs"] = tf.concat([cls, a[:budget], sep], 0)
      x["token_type_ids"] = tf.zeros_like(x["inputs"])
    return x

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def document_chunks(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int],
  output_features: Mapping[str, seqio.Feature],
  *,
  min_tokens: int = MIN_CHUNK_TOKENS,
) -> tf.data.Dataset:
  """Cuts each tokenized document ("inputs") into chunks of L - 2 tokens for `bert_inputs`.

  L is the "inputs" length, so `[CLS] chunk [SEP]` fills it. Documents are
  not joined (no chunk spans two documents; RoBERTa's DOC-SENTENCES); the
  last, shorter chunk of a document is kept when it has at least `min_tokens`
  tokens, and packing (MlmFeatureConverter) fills rows with such chunks.
  Chunks may start inside a word (`mlm` never selects such an orphan piece
  in whole-word mode). Returns {"inputs": int32 [<= L - 2]}; other features
  are dropped. No sentence pairs: next-sentence prediction is left out, as
  RoBERTa found it does not help.

  Raises:
    ValueError (when applied): a missing or non-integer "inputs" feature, an
      inputs length under 3.
  """
  del output_features
  length = objectives._feature_length(sequence_length, "inputs")  # pylint: disable=protected-access
  if length < 3:
    raise ValueError(f"document_chunks: inputs length {length} is too short for [CLS] token [SEP]; the minimum is 3.")
  objectives.check_token_feature(dataset, "document_chunks", "inputs", "seqio.preprocessors.tokenize (with_eos=False)")
  return objectives.concatenate_and_split(
    dataset, length - 2, feature_key="inputs", min_length=max(1, min_tokens), concat_docs=1
  )


# --------------------------------------------------------------------------- #
# Masked language model.
# --------------------------------------------------------------------------- #
def num_to_predict(num_candidates: tf.Tensor, noise_density: float) -> tf.Tensor:
  """max(1, round(noise_density * n)) tokens, at most n (0 when n is 0), as BERT."""
  n = tf.cast(num_candidates, tf.int32)
  k = tf.cast(tf.round(tf.cast(n, tf.float32) * noise_density), tf.int32)
  return tf.minimum(tf.maximum(k, 1), n)


def _rank_select(candidate: tf.Tensor, k: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """A uniformly random set of exactly min(k, #candidates) candidate positions."""
  scores = tf.random.stateless_uniform(tf.shape(candidate), seed=seed)
  scores = tf.where(candidate, scores, 2.0)
  rank = tf.argsort(tf.argsort(scores))
  return tf.logical_and(candidate, rank < k)


def select_tokens(tokens: tf.Tensor, special: list[int], noise_density: float, seed: tf.Tensor) -> tf.Tensor:
  """Bool [length]: exactly `num_to_predict` of the non-special tokens, uniformly at random."""
  candidate = tf.logical_not(_is_special(tokens, special))
  k = num_to_predict(tf.reduce_sum(tf.cast(candidate, tf.int32)), noise_density)
  return _rank_select(candidate, k, seed)


def word_ids(tokens: tf.Tensor, word_start: tf.Tensor) -> tf.Tensor:
  """Int32 [length]: the index of the word each token belongs to (a start piece and its `##` pieces)."""
  starts = tf.gather(word_start, tokens)
  starts = tf.concat([[True], starts[1:]], 0)
  return tf.cumsum(tf.cast(starts, tf.int32)) - 1


def select_words(tokens: tf.Tensor, special: list[int], word_start: tf.Tensor, noise_density: float, seed: tf.Tensor):
  """(selected bool [length], word ids int32 [length]) for whole-word masking.

  As Google BERT's create_pretraining_data.py with --do_whole_word_mask: the
  words are shuffled and taken whole, in that order, while the number of
  selected tokens stays within `num_to_predict` of the non-special tokens; a
  word that would go over is skipped and later (shorter) ones still tried. A
  word is a word-start piece and the `##` pieces after it; one that starts
  with a special token (a chunk that begins inside a word) is never selected.
  """
  special_tok = _is_special(tokens, special)
  ids = word_ids(tokens, word_start)
  num_words = ids[-1] + 1
  candidate_tok = tf.logical_not(special_tok)
  k = num_to_predict(tf.reduce_sum(tf.cast(candidate_tok, tf.int32)), noise_density)
  lengths = tf.math.unsorted_segment_sum(tf.ones_like(ids), ids, num_words)
  first = tf.math.unsorted_segment_min(tf.range(tf.size(ids)), ids, num_words)
  candidate_word = tf.logical_not(tf.gather(special_tok, first))
  scores = tf.random.stateless_uniform([num_words], seed=seed)
  order = tf.argsort(tf.where(candidate_word, scores, 2.0))
  ordered_len = tf.where(tf.gather(candidate_word, order), tf.gather(lengths, order), k + 1)

  def take(carry, n):
    total, _ = carry
    ok = total + n <= k
    return total + tf.where(ok, n, 0), ok

  _, taken = tf.scan(take, ordered_len, initializer=(tf.constant(0, tf.int32), tf.constant(False)))
  chosen = tf.scatter_nd(order[:, None], taken, [num_words])
  return tf.logical_and(tf.gather(chosen, ids), candidate_tok), ids


@seqio.map_over_dataset(num_seeds=3)
def _mask_example(x, seeds, special, word_start, allowed, mask_id, noise_density, mask_rate, random_rate):
  tokens = tf.cast(x["inputs"], tf.int32)
  n = tf.size(tokens)
  if word_start is None:
    selected = select_tokens(tokens, special, noise_density, seeds[0])
    u = tf.random.stateless_uniform([n], seed=seeds[1])
  else:
    selected, ids = select_words(tokens, special, tf.constant(word_start), noise_density, seeds[0])
    # One draw per word: all pieces of a word are masked, replaced or kept together.
    u = tf.gather(tf.random.stateless_uniform([ids[-1] + 1], seed=seeds[1]), ids)
  pick = tf.random.stateless_uniform([n], seed=seeds[2], minval=0, maxval=len(allowed), dtype=tf.int32)
  random_ids = tf.gather(tf.constant(allowed, tf.int32), pick)
  replaced = tf.where(u < mask_rate, mask_id, tf.where(u < mask_rate + random_rate, random_ids, tokens))
  out = dict(x)
  out["inputs"] = tf.where(selected, replaced, tokens)
  out["targets"] = tf.where(selected, tokens, 0)
  return out


def mlm(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int],
  output_features: Mapping[str, seqio.Feature],
  *,
  noise_density: float = 0.15,
  mask_rate: float = 0.8,
  random_rate: float = 0.1,
  whole_word: bool = False,
) -> tf.data.Dataset:
  """BERT's masked-language-model corruption of "inputs" (after `bert_inputs`).

  Selects exactly max(1, round(noise_density * n)) of the n non-special tokens
  of each example (the specials in `vocabulary.special_ids` are never
  selected), uniformly at random, as Google BERT's create_pretraining_data.py
  does (it counts [CLS]/[SEP] in n; here only the tokens that can be
  selected count, so noise_density is the selected fraction). Each selected
  token becomes [MASK] with probability mask_rate, a uniformly random
  non-special id with probability random_rate, and stays itself otherwise
  (one draw per token, as BERT). With whole_word=True whole words are
  selected (`select_words`) and the draw is made once per word, so a word
  is never half masked.

  Returns the example with "inputs" int32 [length] (corrupted) and "targets"
  int32 [length]: the original id at the selected positions, 0 elsewhere.
  Other features ("token_type_ids") pass through. `sequence_length` is
  unused (the length does not change).

  Raises:
    ValueError (when applied): a rate out of range (`check_rates`), an
      "inputs" vocabulary without [MASK] (or [CLS]/[SEP]), a missing or
      non-integer "inputs" feature.
  """
  del sequence_length
  name = "mlm"
  check_rates(noise_density, mask_rate, random_rate)
  vocabulary = bert_vocabulary(output_features, name, need_mask=True)
  objectives.check_token_feature(dataset, name, "inputs", "seqio.preprocessors.tokenize and bert_inputs")
  special = _special_ids(vocabulary)
  allowed = np.setdiff1d(np.arange(vocabulary.vocab_size), special).astype(np.int32)
  word_start = np.asarray(vocabulary.word_start_ids(), bool) if whole_word else None
  return _mask_example(
    dataset,
    special=special,
    word_start=word_start,
    allowed=allowed,
    mask_id=int(vocabulary.mask_id),
    noise_density=float(noise_density),
    mask_rate=float(mask_rate),
    random_rate=float(random_rate),
  )

"""Tests for t5lite/data/objectives.py: span corruption, UL2 denoisers, prefix LM, causal LM."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5lite.data import objectives, registration
from tests.data.conftest import TOPIC_TEXTS, collect, make_source, strip_eos

LENGTHS = {"inputs": 512, "targets": 114}


@pytest.fixture(scope="module")
def byte_tasks():
  """Pretraining tasks over pydoc topics (twice, for >1,000 examples) with bytes."""
  vocab = seqio.ByteVocabulary(extra_ids=100)
  source = make_source(TOPIC_TEXTS * 2)
  registration.register_pretraining_tasks("tbyte", source, vocab)
  return source, vocab


@pytest.fixture(scope="module")
def sp_tasks(sp_vocab):
  source = make_source(TOPIC_TEXTS)
  registration.register_pretraining_tasks("tsp", source, sp_vocab)
  return source, sp_vocab


def raw_chunks(source, vocab, chunk_length, with_eos=False):
  """The token chunks the objectives see (tokenize, concatenate, split)."""
  feats = {"targets": seqio.Feature(vocab, add_eos=True)}
  ds = source.get_dataset("train", shuffle=False).map(lambda x: {"targets": x["text"]})
  if with_eos:
    ds = seqio.preprocessors.tokenize_and_append_eos(ds, feats)
  else:
    ds = seqio.preprocessors.tokenize(ds, feats, with_eos=False)
  ds = objectives.concatenate_and_split(ds, chunk_length)
  return [x["targets"] for x in ds.as_numpy_iterator()]


def uncorrupt(inputs, targets, vocab_size):
  """Puts the spans in `targets` back in place of the sentinels in `inputs`."""
  spans, current = {}, None
  for t in targets:
    if t >= vocab_size - 100:
      current = int(t)
      spans[current] = []
    else:
      spans[current].append(int(t))
  out = []
  for t in inputs:
    out.extend(spans[int(t)] if t >= vocab_size - 100 else [int(t)])
  return out


def sentinels(x, vocab_size, extra_ids=100):
  return [int(t) for t in x if t >= vocab_size - extra_ids]


def span_lengths(targets, vocab_size):
  lengths = []
  for t in targets:
    if t >= vocab_size - 100:
      lengths.append(0)
    else:
      lengths[-1] += 1
  return lengths


def test_t5_length_rule():
  assert objectives.span_corruption_raw_length(512, 114) == 568
  assert objectives.denoised_lengths(568, 0.15, 3.0) == (512, 114)
  assert objectives.span_corruption_raw_length(1024, None) == 1137
  assert objectives.denoised_lengths(1137, 0.15, 3.0) == (1024, 229)
  assert objectives.span_corruption_raw_length(2048, None) == 2274
  assert objectives.denoised_lengths(2274, 0.15, 3.0) == (2048, 456)


def test_span_corruption_over_1000_examples(byte_tasks):
  source, vocab = byte_tasks
  v = vocab.vocab_size
  examples = collect("tbyte_span_corruption", LENGTHS)
  chunks = raw_chunks(source, vocab, 568)
  assert len(examples) >= 1000
  assert len(examples) == len(chunks)
  full = 0
  noise_tokens = raw_tokens = 0
  all_spans = []
  for ex, chunk in zip(examples, chunks):
    inputs, targets = strip_eos(ex["inputs"]), strip_eos(ex["targets"])
    # Interleaving back by sentinels gives exactly the original tokens.
    assert uncorrupt(inputs, targets, v) == chunk.tolist()
    # Sentinels are unique per span and strictly descending from vocab_size - 1.
    s_in, s_tg = sentinels(inputs, v), sentinels(targets, v)
    assert s_in == s_tg == list(range(v - 1, v - 1 - len(s_in), -1))
    lengths = span_lengths(targets, v)
    assert min(lengths) >= 1
    all_spans.extend(lengths)
    noise_tokens += sum(lengths)
    raw_tokens += len(chunk)
    if len(chunk) == 568:
      full += 1
      assert ex["inputs"].shape == (512,) and ex["targets"].shape == (114,)
  assert full >= 1000
  assert abs(noise_tokens / raw_tokens - 0.15) <= 0.01
  assert abs(np.mean(all_spans) - 3.0) <= 0.2
  # Span lengths are random, not all equal.
  assert np.std(all_spans) > 1.0


def test_span_corruption_is_random_per_example(byte_tasks):
  examples = collect("tbyte_span_corruption", LENGTHS, n=20)
  masks = {tuple(span_lengths(strip_eos(e["targets"]), 356)) for e in examples}
  assert len(masks) == 20


@pytest.mark.parametrize("denoiser", objectives.UL2_DENOISERS, ids=lambda d: d.name)
def test_ul2_denoiser(sp_tasks, denoiser):
  source, vocab = sp_tasks
  v = vocab.vocab_size
  mode_id = vocab.tokenizer.piece_to_id(denoiser.mode_token)
  assert mode_id not in (0, 1, 2) and mode_id == vocab.encode(denoiser.mode_token)[-1]
  lengths = {"inputs": 2048, "targets": 2048}
  examples = collect(f"tsp_ul2_{denoiser.name}", lengths, n=40)
  assert len(examples) >= 10
  fractions, spans = [], []
  for ex in examples:
    assert ex["inputs"][0] == mode_id
    inputs, targets = strip_eos(ex["inputs"])[1:], strip_eos(ex["targets"])
    assert len(ex["inputs"]) <= 2048 and len(ex["targets"]) <= 2048
    if denoiser.prefix_lm:
      fractions.append(len(targets) / (len(inputs) + len(targets)))
      continue
    lengths = span_lengths(targets, v)
    raw = len(uncorrupt(inputs, targets, v))
    fractions.append(sum(lengths) / raw)
    spans.extend(lengths)
  if denoiser.prefix_lm:
    assert abs(np.mean(fractions) - denoiser.mean_target_fraction) < 0.06
  else:
    assert abs(np.mean(fractions) - denoiser.noise_density) < 0.01
    assert abs(np.mean(spans) - denoiser.mean_noise_span_length) <= 0.1 * denoiser.mean_noise_span_length


def test_ul2_mixture_rates_and_errors(sp_tasks):
  mix = seqio.get_mixture_or_task("tsp_ul2")
  assert sorted(t.name for t in mix.tasks) == sorted(f"tsp_ul2_{d.name}" for d in objectives.UL2_DENOISERS)
  name = registration.register_ul2_mixture("tsp", {"r_3_15": 2.0, "s": 1.0})
  mix = seqio.get_mixture_or_task(name)
  assert {t.name: mix.get_rate(t) for t in mix.tasks} == {"tsp_ul2_r_3_15": 2.0, "tsp_ul2_s": 1.0}
  with pytest.raises(ValueError, match="Unknown UL2 denoiser.*r_3_16.*valid names"):
    registration.register_ul2_mixture("tsp", {"r_3_16": 1.0})
  registration.register_ul2_mixture("tsp")


def test_mode_token_requires_sentencepiece(byte_tasks):
  with pytest.raises(ValueError, match=r"\[NLU\].*SentencePiece vocabulary"):
    collect("tbyte_ul2_r_3_15", LENGTHS, n=1)


def test_prefix_lm_split(sp_tasks):
  source, vocab = sp_tasks
  lengths = {"inputs": 256, "targets": 256}
  examples = collect("tsp_prefix_lm", lengths)
  chunks = raw_chunks(source, vocab, 255)
  assert len(examples) == len(chunks) > 50
  fractions = []
  for ex, chunk in zip(examples, chunks):
    inputs, targets = strip_eos(ex["inputs"]), strip_eos(ex["targets"])
    assert np.concatenate([inputs, targets]).tolist() == chunk.tolist()
    assert len(targets) >= 1 and len(inputs) >= 1
    if len(chunk) == 255:
      fractions.append(len(targets) / 255)
  # Split point uniform over the chunk: mean target fraction 0.5.
  assert abs(np.mean(fractions) - 0.5) < 0.06
  # Short targets cap the target part.
  capped = collect("tsp_prefix_lm", {"inputs": 256, "targets": 16}, n=50)
  assert max(len(e["targets"]) for e in capped) <= 16


def test_causal_lm_chunks(sp_tasks):
  source, vocab = sp_tasks
  examples = collect("tsp_lm", {"targets": 128})
  chunks = raw_chunks(source, vocab, 128, with_eos=True)
  assert [e["targets"].tolist() for e in examples] == [c.tolist() for c in chunks]
  full = [e for e in examples if len(e["targets"]) == 128]
  assert len(full) >= len(examples) - 2
  # Documents keep their EOS inside the stream: 79 topics, 79 EOS tokens.
  assert sum(int((e["targets"] == 1).sum()) for e in examples) == len(TOPIC_TEXTS)


def test_too_short_lengths_name_the_minimum(sp_tasks):
  with pytest.raises(ValueError, match="minimum is inputs=3, targets=3"):
    collect("tsp_span_corruption", {"inputs": 2, "targets": 114}, n=1)
  with pytest.raises(ValueError, match="minimum is inputs=4, targets=3"):
    collect("tsp_ul2_x_8_50", {"inputs": 3, "targets": 100}, n=1)
  with pytest.raises(ValueError, match="minimum is inputs=3, targets=2"):
    collect("tsp_prefix_lm", {"inputs": 2, "targets": 64}, n=1)
  with pytest.raises(ValueError, match="minimum is 2"):
    collect("tsp_lm", {"targets": 1}, n=1)


def test_sentinel_budget_limits_chunks():
  # Each noise span needs its own sentinel: with 10 extra ids chunks shrink.
  assert objectives.span_corruption_raw_length(512, 114, max_spans=10) == 209
  assert objectives.num_noise_and_spans(209, 0.15, 3.0)[1] == 10
  assert objectives.num_noise_and_spans(210, 0.15, 3.0)[1] == 11
  vocab = seqio.ByteVocabulary(extra_ids=10)
  feats = {k: seqio.Feature(vocab) for k in ("inputs", "targets")}
  ds = tf.data.Dataset.from_tensors({"targets": tf.range(1997) % 197 + 3})
  out = list(objectives.span_corruption(ds, LENGTHS, feats).as_numpy_iterator())
  assert len(out) == 1997 // 209 + 1
  for ex in out[:-1]:  # full chunks use all ten sentinels, each once
    assert sentinels(ex["targets"], vocab.vocab_size, 10) == list(
      range(vocab.vocab_size - 1, vocab.vocab_size - 11, -1)
    )
  no_sentinels = {k: seqio.Feature(seqio.ByteVocabulary(extra_ids=0)) for k in ("inputs", "targets")}
  with pytest.raises(ValueError, match="no extra ids"):
    objectives.span_corruption(ds, LENGTHS, no_sentinels)


def test_noise_mask_is_deterministic_per_seed():
  seeds = [tf.constant([1, 2]), tf.constant([3, 4])]
  a = objectives.noise_span_mask(100, 0.15, 3.0, seeds).numpy()
  b = objectives.noise_span_mask(100, 0.15, 3.0, seeds).numpy()
  c = objectives.noise_span_mask(100, 0.15, 3.0, [tf.constant([5, 6]), tf.constant([3, 4])]).numpy()
  assert a.sum() == 15 and (a == b).all() and not (a == c).all()
  assert not a[0] and a[-1]  # starts clean, ends with noise


# --------------------------------------------------------------------------- #
# Untokenized or misnamed features: errors when the preprocessor is applied.
# --------------------------------------------------------------------------- #
BYTE_FEATS = {k: seqio.Feature(seqio.ByteVocabulary(extra_ids=100)) for k in ("inputs", "targets")}


def test_span_corruption_on_text_names_the_tokenizer():
  ds = tf.data.Dataset.from_tensor_slices({"targets": ["The function returns a value.", "Another document."]})
  # Raised when applied (before this fix: "Cast string to int32 is not supported" once iterated).
  with pytest.raises(ValueError) as e:
    objectives.span_corruption(ds, LENGTHS, BYTE_FEATS)
  msg = str(e.value)
  assert msg.startswith("span_corruption reads 'targets' as token ids (int32 or int64), but it is string")
  assert "Put seqio.preprocessors.tokenize (with_eos=False) before span_corruption" in msg


def test_missing_key_lists_the_features_and_the_rekey():
  ds = tf.data.Dataset.from_tensor_slices({"text": ["a b c"], "name": ["doc0"]})
  with pytest.raises(ValueError) as e:
    objectives.span_corruption(ds, LENGTHS, BYTE_FEATS)
  msg = str(e.value)
  assert "span_corruption reads the feature 'targets'" in msg
  assert "the dataset has only ['name', 'text']" in msg
  assert "key_map={'targets': 'name'}" in msg or "key_map={'targets': 'text'}" in msg
  # Through a seqio Task: the error comes from get_dataset, before any example is read.
  registration._register(  # pylint: disable=protected-access
    "tbad_no_tokenize",
    source=make_source(["a b c"], name_key=True),
    preprocessors=[objectives.span_corruption],
    output_features=BYTE_FEATS,
    metric_fns=[],
  )
  with pytest.raises(ValueError, match=r"span_corruption reads the feature 'targets'.*only \['name', 'text'\]"):
    seqio.get_mixture_or_task("tbad_no_tokenize").get_dataset(LENGTHS, split="train", shuffle=False)


@pytest.mark.parametrize("denoiser", [objectives.UL2_DENOISERS[0], objectives.UL2_DENOISERS[-1]], ids=lambda d: d.name)
def test_ul2_denoiser_on_float_features(denoiser):
  ds = tf.data.Dataset.from_tensor_slices({"targets": np.ones((3, 40), np.float32)})
  with pytest.raises(ValueError) as e:
    denoiser.preprocessor()(ds, LENGTHS, BYTE_FEATS)
  msg = str(e.value)
  assert msg.startswith(f"UL2 denoiser '{denoiser.name}' (")
  assert "reads 'targets' as token ids (int32 or int64), but it is float32" in msg


def test_prefix_and_causal_lm_check_their_inputs():
  with pytest.raises(ValueError, match=r"^prefix_lm reads 'targets' as token ids \(int32 or int64\), but it is bool"):
    objectives.prefix_lm(tf.data.Dataset.from_tensor_slices({"targets": np.ones((2, 9), bool)}), LENGTHS, BYTE_FEATS)
  batched = tf.data.Dataset.from_tensor_slices({"targets": np.ones((4, 9), np.int32)}).batch(2)
  with pytest.raises(ValueError, match=r"causal_lm reads 'targets' as one document .* shape is \(None, 9\)"):
    objectives.causal_lm(batched, {"targets": 8}, BYTE_FEATS)
  text = tf.data.Dataset.from_tensor_slices({"targets": ["a b"]})
  with pytest.raises(ValueError, match=r"Put seqio.preprocessors.tokenize_and_append_eos before causal_lm"):
    objectives.causal_lm(text, {"targets": 8}, BYTE_FEATS)
  # int64 ids (as some tokenizers give) are accepted and give the same chunks as int32.
  ids = np.arange(3, 23)
  out64 = objectives.causal_lm(tf.data.Dataset.from_tensors({"targets": ids.astype(np.int64)}), {"targets": 8}, {})
  assert [x["targets"].tolist() for x in out64.as_numpy_iterator()] == [
    list(range(3, 11)),
    list(range(11, 19)),
    [19, 20, 21, 22],
  ]

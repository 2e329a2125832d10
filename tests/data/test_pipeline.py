"""Tests for t5lite/data/pipeline.py and registration: packing, determinism, shards, errors."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5lite.data import pipeline, registration
from tests.data.conftest import TOPIC_TEXTS, make_source


def _pairs_source(pairs):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": [p[0] for p in pairs], "targets": [p[1] for p in pairs]})

  return seqio.FunctionDataSource(dataset_fn, splits=["train"])


@pytest.fixture(scope="module")
def byte_vocab():
  return seqio.ByteVocabulary(extra_ids=100)


@pytest.fixture(scope="module")
def tiny_pairs(byte_vocab):
  # Byte ids are the UTF-8 byte + 3: 'a' -> 100, 'b' -> 101, ...
  registration.register_text_to_text_task("tpairs", _pairs_source([("ab", "c"), ("d", "ef"), ("ghi", "j")]), byte_vocab)
  return "tpairs"


def test_enc_dec_packing_segments_and_positions(tiny_pairs):
  ds = pipeline.get_dataset(tiny_pairs, {"inputs": 8, "targets": 6}, batch_size=1, shuffle=False, num_epochs=1)
  b, b2 = list(ds.as_numpy_iterator())
  # 'ab</s>' and 'd</s>' share a row; 'ghi</s>' (3+2+4 > 8) starts the next one.
  np.testing.assert_array_equal(b["encoder_input_tokens"][0], [100, 101, 1, 103, 1, 0, 0, 0])
  np.testing.assert_array_equal(b["encoder_segment_ids"][0], [1, 1, 1, 2, 2, 0, 0, 0])
  np.testing.assert_array_equal(b["encoder_positions"][0], [0, 1, 2, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(b["decoder_target_tokens"][0], [102, 1, 104, 105, 1, 0])
  np.testing.assert_array_equal(b["decoder_segment_ids"][0], [1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(b["decoder_positions"][0], [0, 1, 0, 1, 2, 0])
  # Decoder inputs are the targets shifted right within each segment.
  np.testing.assert_array_equal(b["decoder_input_tokens"][0], [0, 102, 0, 104, 105, 0])
  np.testing.assert_array_equal(b["decoder_loss_weights"][0], [1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(b2["encoder_input_tokens"][0], [106, 107, 108, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(b2["decoder_segment_ids"][0], [1, 1, 0, 0, 0, 0])


def test_lm_and_prefix_lm_converters(tiny_pairs):
  ds = pipeline.get_dataset(
    tiny_pairs, {"inputs": 8, "targets": 6}, batch_size=1, shuffle=False, num_epochs=1, converter="prefix_lm"
  )
  b = next(ds.as_numpy_iterator())
  # 'ab</s>c</s>' then 'd</s>ef</s>' packed into 14 positions.
  np.testing.assert_array_equal(b["decoder_target_tokens"][0][:10], [100, 101, 1, 102, 1, 103, 1, 104, 105, 1])
  np.testing.assert_array_equal(b["decoder_segment_ids"][0][:10], [1] * 5 + [2] * 5)
  np.testing.assert_array_equal(b["decoder_causal_attention"][0][:10], [1, 1, 1, 1, 0, 1, 1, 1, 0, 0])
  # Loss only on the targets part.
  np.testing.assert_array_equal(b["decoder_loss_weights"][0][:10], [0, 0, 0, 1, 1, 0, 0, 1, 1, 1])


def test_span_corruption_packs_for_enc_dec_and_decoder_only(sp_vocab):
  registration.register_pretraining_tasks("tpack", make_source(TOPIC_TEXTS), sp_vocab)
  lengths = {"inputs": 128, "targets": 32}
  b = next(pipeline.get_dataset("tpack_span_corruption", lengths, batch_size=4, shuffle=False).as_numpy_iterator())
  assert b["encoder_input_tokens"].shape == (4, 128) and b["decoder_target_tokens"].shape == (4, 32)
  b = next(
    pipeline.get_dataset(
      "tpack_span_corruption", lengths, batch_size=4, shuffle=False, converter="prefix_lm"
    ).as_numpy_iterator()
  )
  assert b["decoder_target_tokens"].shape == (4, 160)
  b = next(pipeline.get_dataset("tpack_lm", {"targets": 64}, batch_size=2, converter="lm").as_numpy_iterator())
  assert b["decoder_target_tokens"].shape == (2, 64) and (b["decoder_segment_ids"] == 1).all()


def _rows(name, seed, shard=None, n=6):
  ds = pipeline.get_dataset(
    name, {"inputs": 128, "targets": 32}, batch_size=2, shuffle=True, seed=seed, shard_info=shard
  )
  return [b["encoder_input_tokens"] for b in ds.take(n).as_numpy_iterator()]


def test_same_seed_same_examples(sp_vocab):
  registration.register_pretraining_tasks("tdet", make_source(TOPIC_TEXTS), sp_vocab)
  a, b, c = _rows("tdet_span_corruption", 3), _rows("tdet_span_corruption", 3), _rows("tdet_span_corruption", 4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_shards_are_disjoint_and_cover(sp_vocab):
  docs = [f"document number {i} " + TOPIC_TEXTS[i % len(TOPIC_TEXTS)][:200] for i in range(60)]
  source = make_source(docs)
  registration.register_text_to_text_task(
    "tshard", source, sp_vocab, preprocessors=[lambda ds: ds.map(lambda x: {"inputs": x["text"], "targets": x["text"]})]
  )
  task = seqio.get_mixture_or_task("tshard")

  def texts(shard):
    ds = task.get_dataset({"inputs": 64, "targets": 64}, split="train", shuffle=False, shard_info=shard)
    return [ex["inputs_pretokenized"].decode() for ex in ds.as_numpy_iterator()]

  s0, s1 = texts(seqio.ShardInfo(0, 2)), texts(seqio.ShardInfo(1, 2))
  assert len(s0) == len(s1) == 30
  assert not set(s0) & set(s1)
  assert sorted(s0 + s1) == sorted(docs)


def test_unknown_task_lists_close_matches():
  import t5lite_tasks  # noqa: F401  pylint: disable=unused-import

  with pytest.raises(
    ValueError, match="Unknown task or mixture 'pydocs_span_corruptoin'.*Did you mean: pydocs_span_corruption"
  ):
    pipeline.get_dataset("pydocs_span_corruptoin", {"inputs": 512, "targets": 114})


def test_bad_lengths_and_converter(tiny_pairs):
  with pytest.raises(ValueError, match=r"lacks \['targets'\]"):
    pipeline.get_dataset(tiny_pairs, {"inputs": 8})
  with pytest.raises(ValueError, match=r"task_feature_lengths\['inputs'\]=0 must be a positive int"):
    pipeline.get_dataset(tiny_pairs, {"inputs": 0, "targets": 8})
  with pytest.raises(ValueError, match="Unknown feature converter 'encdec'.*enc_dec"):
    pipeline.get_dataset(tiny_pairs, {"inputs": 8, "targets": 8}, converter="encdec")
  with pytest.raises(ValueError, match="Split 'test' is not in 'tpairs'"):
    pipeline.get_dataset(tiny_pairs, {"inputs": 8, "targets": 8}, split="test")


@pytest.fixture(scope="module")
def topics_task(byte_vocab):
  # Short pairs of varied lengths: several examples pack into each row.
  pairs = [(" ".join(TOPIC_TEXTS[i % 50].split()[i % 7 : i % 7 + 2 + i % 5]), str(i)) for i in range(400)]
  registration.register_text_to_text_task("torder", _pairs_source(pairs), byte_vocab)
  return "torder"


def _host_rows(task, batch, nproc, steps, start_row=0, seed=3, lengths=None):
  """The global batches two or more processes assemble, built from each process's part."""
  lengths = lengths or {"inputs": 48, "targets": 12}
  parts = [
    list(
      pipeline.host_batches(
        task,
        lengths,
        global_batch_size=batch,
        shuffle=True,
        pack=True,
        seed=seed,
        start_row=start_row,
        process_index=p,
        process_count=nproc,
      )
      .take(steps)
      .as_numpy_iterator()
    )
    for p in range(nproc)
  ]
  return [{k: np.concatenate([parts[p][i][k] for p in range(nproc)]) for k in parts[0][i]} for i in range(steps)]


def test_global_batches_do_not_depend_on_the_number_of_processes(topics_task):
  one = _host_rows(topics_task, 8, 1, 3)
  for nproc in (2, 4, 8):
    many = _host_rows(topics_task, 8, nproc, 3)
    for a, b in zip(one, many):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{nproc} processes, {k}")
  # Shuffled and packed: rows are packed (several segments) and another seed gives other rows.
  assert one[0]["encoder_segment_ids"].max() > 1
  other = _host_rows(topics_task, 8, 1, 1, seed=4)
  assert not np.array_equal(other[0]["encoder_input_tokens"], one[0]["encoder_input_tokens"])


def test_a_row_position_continues_the_same_stream_at_another_batch_size(topics_task):
  # Two batches of 4 then batches of 8 from row 8: rows 8..15 come next, none skipped.
  small = _host_rows(topics_task, 4, 2, 4)
  big = _host_rows(topics_task, 8, 2, 1, start_row=8)
  for k in big[0]:
    np.testing.assert_array_equal(big[0][k], np.concatenate([small[2][k], small[3][k]]))
  # A row position that is not a multiple of the batch size works too (batch 6 after 10 rows).
  odd = _host_rows(topics_task, 6, 3, 1, start_row=10)
  rows = np.concatenate([b["encoder_input_tokens"] for b in small])  # rows 0..15
  np.testing.assert_array_equal(odd[0]["encoder_input_tokens"], rows[10:16])


def test_host_batches_errors(topics_task):
  with pytest.raises(ValueError, match="BATCH_SIZE=6 is not divisible by the 4 processes"):
    pipeline.host_batches(topics_task, {"inputs": 48, "targets": 12}, global_batch_size=6, process_count=4)
  with pytest.raises(ValueError, match=r"process_index=2 must be in \[0, 2\)"):
    pipeline.host_batches(
      topics_task, {"inputs": 48, "targets": 12}, global_batch_size=8, process_index=2, process_count=2
    )
  with pytest.raises(ValueError, match="start_row=-1 must be a non-negative int"):
    pipeline.host_batches(topics_task, {"inputs": 48, "targets": 12}, global_batch_size=8, start_row=-1)


def test_converters_by_class_and_by_recorded_name(tiny_pairs):
  for name, cls in [
    ("enc_dec", seqio.EncDecFeatureConverter),
    ("lm", seqio.LMFeatureConverter),
    ("prefix_lm", seqio.PrefixLMFeatureConverter),
  ]:
    assert pipeline.converter_name(cls) == name and pipeline.converter_class(name) is cls

  class OwnConverter(seqio.PrefixLMFeatureConverter):
    pass

  assert pipeline.converter_name(OwnConverter) == f"{__name__}.{OwnConverter.__qualname__}"
  with pytest.raises(ValueError, match="is not a seqio.FeatureConverter class"):
    pipeline.converter_class(dict)
  lengths = {"inputs": 8, "targets": 6}
  by_class, by_name = (
    next(
      pipeline.get_dataset(
        tiny_pairs, lengths, batch_size=1, shuffle=False, num_epochs=1, converter=converter
      ).as_numpy_iterator()
    )
    for converter in (seqio.PrefixLMFeatureConverter, "prefix_lm")
  )
  assert sorted(by_class) == sorted(by_name)
  for k in by_name:
    np.testing.assert_array_equal(by_class[k], by_name[k])

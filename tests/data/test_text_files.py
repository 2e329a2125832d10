"""Tests for t5lite.data.text_files.TextFilesSource."""

import collections
import json

import pytest
import seqio
import tensorflow as tf

from t5lite.data.text_files import TextFilesSource


def _texts(ds):
  return [ex["text"].decode("utf-8") for ex in ds.as_numpy_iterator()]


@pytest.fixture
def corpus(tmp_path):
  """10 .txt files and 2 .jsonl files (one with a custom key)."""
  txt_dir = tmp_path / "txt"
  txt_dir.mkdir()
  for i in range(10):
    (txt_dir / f"doc{i:02d}.txt").write_text(f"document {i}\nsecond line of {i}\n", encoding="utf-8")
  (txt_dir / "empty.txt").write_bytes(b"")
  (txt_dir / "bom.txt").write_bytes(b"\xef\xbb\xbfwith a bom")

  jsonl_dir = tmp_path / "jsonl"
  jsonl_dir.mkdir()
  lines = [json.dumps({"text": f"line {i}", "id": i}) for i in range(7)]
  lines.insert(3, "   ")  # Blank lines are skipped.
  (jsonl_dir / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  (jsonl_dir / "b.jsonl").write_text(
    json.dumps({"text": "b zero"}) + "\n" + json.dumps({"text": "b one"}),
    encoding="utf-8",
  )
  (tmp_path / "custom.jsonl").write_text(
    "\n".join(json.dumps({"body": f"body {i}"}) for i in range(3)),
    encoding="utf-8",
  )
  (tmp_path / "bad.jsonl").write_text(
    json.dumps({"text": "fine"}) + "\n" + json.dumps({"other": 1}) + "\n",
    encoding="utf-8",
  )
  return tmp_path


def test_txt_one_example_per_file(corpus):
  source = TextFilesSource({"train": str(corpus / "txt" / "*.txt")})
  texts = _texts(source.get_dataset("train", shuffle=False))
  # 10 documents + the BOM file; the empty file gives no example.
  assert len(texts) == 11
  assert texts[0] == "with a bom"  # 'bom.txt' sorts first; BOM dropped.
  assert texts[1:] == [f"document {i}\nsecond line of {i}\n" for i in range(10)]
  assert len(source.list_shards("train")) == 12
  assert source.list_shards("train") == sorted(source.list_shards("train"))


def test_jsonl_one_example_per_line(corpus):
  source = TextFilesSource({"train": str(corpus / "jsonl" / "*.jsonl")})
  ds = source.get_dataset("train", shuffle=False)
  assert ds.element_spec == {"text": tf.TensorSpec((), tf.string)}
  assert _texts(ds) == [f"line {i}" for i in range(7)] + ["b zero", "b one"]


def test_text_key_and_pattern_lists(corpus):
  source = TextFilesSource(
    {
      "train": [str(corpus / "custom.jsonl")],
      "validation": (str(corpus / "custom.jsonl"), str(corpus / "txt" / "doc0*.txt")),
    },
    text_key="body",
  )
  assert list(source.splits) == ["train", "validation"]
  assert _texts(source.get_dataset("train", shuffle=False)) == ["body 0", "body 1", "body 2"]
  assert len(_texts(source.get_dataset("validation", shuffle=False))) == 3 + 10


def test_missing_key_in_jsonl_fails_with_file_and_line(corpus):
  source = TextFilesSource({"train": str(corpus / "bad.jsonl")})
  with pytest.raises(tf.errors.OpError, match=r"bad\.jsonl:2: no field 'text'"):
    _texts(source.get_dataset("train", shuffle=False))


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 12, 13])
def test_txt_shards_are_disjoint_and_cover_the_split(corpus, num_shards):
  # 12 files: up to 12 shards split by file, 13 shards split by example.
  source = TextFilesSource({"train": str(corpus / "txt" / "*.txt")})
  everything = collections.Counter(_texts(source.get_dataset("train", shuffle=False)))
  shards = [
    collections.Counter(
      _texts(
        source.get_dataset(
          "train",
          shuffle=True,
          seed=7,
          shard_info=seqio.ShardInfo(index=i, num_shards=num_shards),
        )
      )
    )
    for i in range(num_shards)
  ]
  assert sum(shards, collections.Counter()) == everything
  for i in range(num_shards):
    for j in range(i + 1, num_shards):
      assert not (shards[i] & shards[j])


@pytest.mark.parametrize("num_shards", [2, 3, 5])
def test_jsonl_shards_by_file_or_by_example(corpus, num_shards):
  # 2 files: 2 shards split by file, 3 and 5 shards split by example.
  source = TextFilesSource({"train": str(corpus / "jsonl" / "*.jsonl")})
  everything = _texts(source.get_dataset("train", shuffle=False))
  assert len(everything) == 9
  for seed in (None, 1):  # Membership does not depend on the order.
    shards = [
      _texts(
        source.get_dataset(
          "train",
          shuffle=True,
          seed=seed,
          shard_info=seqio.ShardInfo(index=i, num_shards=num_shards),
        )
      )
      for i in range(num_shards)
    ]
    union = [t for shard in shards for t in shard]
    assert sorted(union) == sorted(everything)
    assert all(shards), "every shard gets some of the 9 examples"


def test_seeded_shuffle_is_deterministic(corpus):
  source = TextFilesSource({"train": str(corpus / "txt" / "*.txt")})
  first = _texts(source.get_dataset("train", shuffle=True, seed=3))
  again = _texts(TextFilesSource({"train": str(corpus / "txt" / "*.txt")}).get_dataset("train", shuffle=True, seed=3))
  other = _texts(source.get_dataset("train", shuffle=True, seed=4))
  unshuffled = _texts(source.get_dataset("train", shuffle=False))
  assert first == again
  assert sorted(first) == sorted(other) == sorted(unshuffled)
  assert first != other  # 11! orders; these two seeds differ.
  assert first != unshuffled


def test_seqio_task_shards_through_the_source(corpus):
  assert TextFilesSource({"train": str(corpus / "txt" / "*.txt")}).supports_arbitrary_sharding
  task = seqio.Task(
    "t5lite_test_text_files_task",
    source=TextFilesSource({"train": str(corpus / "jsonl" / "*.jsonl")}),
    output_features={
      "text": seqio.Feature(
        seqio.PassThroughVocabulary(size=0),
        dtype=tf.string,
        add_eos=False,
        rank=0,
      )
    },
    preprocessors=[],
  )
  got = []
  for i in range(3):
    ds = task.get_dataset(
      sequence_length=None,
      split="train",
      shuffle=False,
      shard_info=seqio.ShardInfo(index=i, num_shards=3),
    )
    got.extend(_texts(ds))
  assert sorted(got) == sorted([f"line {i}" for i in range(7)] + ["b zero", "b one"])


def test_missing_glob_fails_at_construction_naming_pattern_and_split(tmp_path):
  good = tmp_path / "a.txt"
  good.write_text("x")
  pattern = str(tmp_path / "nothing" / "*.txt")
  with pytest.raises(ValueError) as info:
    TextFilesSource({"train": str(good), "validation": pattern})
  message = str(info.value)
  assert pattern in message
  assert "'validation'" in message
  # A plain (non-glob) path that does not exist fails the same way.
  with pytest.raises(ValueError, match="missing.jsonl.*'test'"):
    TextFilesSource({"test": str(tmp_path / "missing.jsonl")})
  with pytest.raises(ValueError, match="'train' has no file pattern"):
    TextFilesSource({"train": []})


def test_unsupported_extension_fails_at_construction(tmp_path):
  (tmp_path / "notes.md").write_text("# notes")
  (tmp_path / "ok.txt").write_text("ok")
  with pytest.raises(ValueError, match=r"notes\.md.*") as info:
    TextFilesSource({"train": str(tmp_path / "*")})
  assert "'train'" in str(info.value) and ".jsonl" in str(info.value)


def test_unknown_split_lists_valid_splits(corpus):
  source = TextFilesSource(
    {
      "train": str(corpus / "txt" / "*.txt"),
      "validation": str(corpus / "jsonl" / "*.jsonl"),
    }
  )
  for call in (
    lambda: source.get_dataset("test"),
    lambda: source.list_shards("test"),
  ):
    with pytest.raises(ValueError) as info:
      call()
    message = str(info.value)
    assert "'test'" in message
    assert "'train'" in message and "'validation'" in message


def test_invalid_shard_info(corpus):
  source = TextFilesSource({"train": str(corpus / "txt" / "*.txt")})
  with pytest.raises(ValueError, match="shard_info"):
    source.get_dataset("train", shard_info=seqio.ShardInfo(index=3, num_shards=3))

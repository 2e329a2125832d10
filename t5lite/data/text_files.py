"""A seqio data source over the user's own text files.

`TextFilesSource` maps each split to one or more glob patterns and reads the
matching files:

* `*.txt`: one example per file, the whole file (a leading UTF-8 byte order
  mark is dropped; empty files give no example);
* `*.jsonl`: one example per non-blank line, the line's JSON object's string
  field `text_key` (default 'text').

Every example is `{'text': tf.string}`.

The patterns are expanded (with `tf.io.gfile.glob`, so `gs://` works too) when
the source is constructed, and a pattern that matches nothing, or a file of
another kind, is reported then, with the split's name, rather than at the
first read.  The file list is sorted and frozen at that point.

Sharding (`shard_info=seqio.ShardInfo(index, num_shards)`) gives disjoint
shards whose union is the whole split: with at least `num_shards` files each
shard reads every `num_shards`-th file of the sorted list; with fewer files
every shard reads all of them and keeps the examples whose (file number +
example number within the file) % num_shards == index, which does not depend
on the reading order.  `shuffle=True` shuffles the order of the shard's files
(the examples of one .jsonl file stay in file order; a seqio Task shuffles
examples downstream), reproducibly for a given `seed`.
"""

from __future__ import annotations

import glob as _glob
import json
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

__all__ = ["TextFilesSource"]

_TXT = ".txt"
_JSONL = ".jsonl"
_SUPPORTED = (_TXT, _JSONL)
_BOM = b"\xef\xbb\xbf"


class TextFilesSource(seqio.DataSource):
  """Examples {'text': tf.string} from .txt files and .jsonl lines."""

  #: The structure of every element of `get_dataset`.
  element_spec = {"text": tf.TensorSpec(shape=(), dtype=tf.string)}

  def __init__(
    self,
    split_to_pattern: Mapping[str, Union[str, Sequence[str]]],
    *,
    text_key: str = "text",
    caching_permitted: bool = True,
  ):
    """Expands the patterns now; raises ValueError if one matches nothing.

    Args:
      split_to_pattern: split name -> a glob pattern or a sequence of them.
        The files must end in '.txt' or '.jsonl'.
      text_key: the field of each .jsonl line's object that holds the text.
      caching_permitted: passed to `seqio.DataSource`.
    """
    if not split_to_pattern:
      raise ValueError("TextFilesSource needs at least one split.")
    self._split_to_pattern = {
      split: (pattern,) if isinstance(pattern, str) else tuple(pattern) for split, pattern in split_to_pattern.items()
    }
    self._text_key = text_key
    self._files = {split: _resolve(split, patterns) for split, patterns in self._split_to_pattern.items()}
    super().__init__(
      splits=tuple(self._split_to_pattern),
      caching_permitted=caching_permitted,
    )

  def __repr__(self) -> str:
    return f"{type(self).__name__}(split_to_pattern={self._split_to_pattern}, text_key={self._text_key!r})"

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  @property
  def text_key(self) -> str:
    return self._text_key

  def list_shards(self, split: str) -> Sequence[str]:
    """The split's files, sorted."""
    return list(self._files_of(split))

  def get_dataset(
    self,
    split: str = "train",
    shuffle: bool = True,
    seed: Optional[int] = None,
    shard_info: Optional[seqio.ShardInfo] = None,
    *,
    sequence_length: Optional[Mapping[str, int]] = None,  # Unused.
    use_cached: bool = False,  # Unused.
    num_epochs: Optional[int] = 1,  # Unused.
  ) -> tf.data.Dataset:
    """A dataset of {'text': tf.string} for `split` (or one shard of it)."""
    del sequence_length, use_cached, num_epochs
    files = self._files_of(split)
    num_shards, index = 1, 0
    if shard_info is not None:
      num_shards, index = int(shard_info.num_shards), int(shard_info.index)
      if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"Invalid shard_info {shard_info}: need num_shards >= 1 and 0 <= index < num_shards.")

    # (file number in the sorted split, path); example sharding keeps the
    # examples with (file number + example number) % num_shards == index.
    numbered = list(enumerate(files))
    example_shards = 1
    if num_shards > 1 and len(files) >= num_shards:
      numbered = numbered[index::num_shards]
    elif num_shards > 1:
      example_shards = num_shards
    if shuffle:
      rng = np.random.default_rng(None if seed is None else int(seed))
      numbered = [numbered[i] for i in rng.permutation(len(numbered))]

    text_key = self._text_key

    def generate() -> Iterator[dict[str, bytes]]:
      for number, path in numbered:
        for position, text in enumerate(_read(path, text_key)):
          if (number + position) % example_shards == index % example_shards:
            yield {"text": text}

    return tf.data.Dataset.from_generator(generate, output_signature=self.element_spec)

  def _files_of(self, split: str) -> tuple[str, ...]:
    try:
      return self._files[split]
    except KeyError:
      raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(repr(s) for s in self._files)}.") from None


def _resolve(split: str, patterns: Sequence[str]) -> tuple[str, ...]:
  """Sorted, de-duplicated files of the patterns; ValueError when empty."""
  if not patterns:
    raise ValueError(f"Split {split!r} has no file pattern.")
  found = set()
  for pattern in patterns:
    if not isinstance(pattern, str) or not pattern:
      raise ValueError(f"Split {split!r}: a file pattern must be a non-empty string, got {pattern!r}.")
    if _glob.has_magic(pattern):
      matches = tf.io.gfile.glob(pattern)
    else:
      matches = [pattern] if tf.io.gfile.exists(pattern) else []
    matches = [m for m in matches if not tf.io.gfile.isdir(m)]
    if not matches:
      raise ValueError(f"No files match the pattern {pattern!r} of split {split!r}.")
    found.update(matches)
  unsupported = sorted(f for f in found if not f.endswith(_SUPPORTED))
  if unsupported:
    shown = ", ".join(repr(f) for f in unsupported[:5])
    more = f" and {len(unsupported) - 5} more" if len(unsupported) > 5 else ""
    raise ValueError(
      f"Split {split!r}: files must end in {' or '.join(_SUPPORTED)}; got {shown}{more} (patterns {list(patterns)!r})."
    )
  return tuple(sorted(found))


def _read(path: str, text_key: str) -> Iterator[bytes]:
  """The texts of one file, in order."""
  if path.endswith(_TXT):
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
    if data.startswith(_BOM):
      data = data[len(_BOM) :]
    if data:
      yield data
    return
  with tf.io.gfile.GFile(path, "rb") as f:
    for line_number, line in enumerate(f, start=1):
      if line_number == 1 and line.startswith(_BOM):
        line = line[len(_BOM) :]
      if not line.strip():
        continue
      where = f"{path}:{line_number}"
      try:
        record = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{where}: not valid JSON ({e}).") from None
      if not isinstance(record, dict) or text_key not in record:
        raise ValueError(f"{where}: no field {text_key!r}.")
      text = record[text_key]
      if not isinstance(text, str):
        raise ValueError(f"{where}: field {text_key!r} is a {type(text).__name__}, not a string.")
      yield text.encode("utf-8")

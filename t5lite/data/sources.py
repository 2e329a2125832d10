"""seqio data sources: the embedded pydocs corpus and TFDS catalog datasets such as C4.

Both are `seqio.TfdsDataSource`s; what is added here is where the data lives
and what happens when it is not there. The pydocs source prepares its dataset
on first use (once, under a file lock) in the data directory resolved at that
moment, so `seqio.set_tfds_data_dir_override` (the gin-visible `DATA_DIR`) and
`$TFDS_DATA_DIR` both apply. A catalog source never downloads at run time: when
its dataset is not prepared, the error says how to prepare it.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import seqio
from seqio import utils as seqio_utils
import tensorflow_datasets as tfds

from t5lite.data import pydocs

PYDOCS_VERSION = "1.0.0"


def pydocs_config_name() -> str:
  """The pydocs builder config for the running Python (e.g. 'py3_11')."""
  return f"py{sys.version_info.major}_{sys.version_info.minor}"


def pydocs_tfds_name() -> str:
  return f"pydocs/{pydocs_config_name()}:{PYDOCS_VERSION}"


def resolve_data_dir(data_dir: Optional[str] = None) -> str:
  """An explicit dir, else seqio's override, else $TFDS_DATA_DIR, else the user cache."""
  return data_dir or seqio_utils._get_data_dir_override(None) or pydocs.default_data_dir()  # pylint: disable=protected-access


def set_data_dir(data_dir: Optional[str]) -> None:
  """Points every TFDS-backed source (pydocs and catalog ones) at `data_dir`."""
  seqio.set_tfds_data_dir_override(data_dir)


class PydocsSource(seqio.TfdsDataSource):
  """The embedded corpus: builds itself into the data directory on first use."""

  def __init__(self, data_dir: Optional[str] = None):
    self._explicit_data_dir = data_dir
    self._prepared_dir: Optional[str] = None
    super().__init__(
      tfds_name=pydocs_tfds_name(),
      tfds_data_dir=data_dir,
      splits=("train", "validation"),
      read_only=True,
    )

  def prepare(self) -> str:
    """Builds the dataset if needed; returns the data directory used."""
    data_dir = resolve_data_dir(self._explicit_data_dir)
    if self._prepared_dir != data_dir:
      pydocs.prepare_pydocs(data_dir)
      self.tfds_dataset.override_data_dir(data_dir)
      self._prepared_dir = data_dir
    return data_dir

  def list_shards(self, split: str):
    self.prepare()
    return super().list_shards(split)

  def num_input_examples(self, split: str) -> int:
    self.prepare()
    return super().num_input_examples(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None, shard_info=None, **kwargs):
    self.prepare()
    return super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info, **kwargs)


class CatalogTfdsSource(seqio.TfdsDataSource):
  """A TFDS catalog dataset (e.g. 'c4/en:3.1.0') that must already be prepared."""

  def __init__(self, tfds_name: str, splits=("train", "validation"), prepare_hint: str = ""):
    self._prepare_hint = prepare_hint
    super().__init__(tfds_name=tfds_name, splits=splits, read_only=True)

  def _check_prepared(self) -> None:
    name = self.tfds_dataset.name
    data_dir = resolve_data_dir()
    builder = tfds.builder(name, data_dir=data_dir)
    if not tf_exists(os.path.join(builder.data_dir, "dataset_info.json")):
      raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {data_dir!r} (looked for "
        f"{builder.data_dir}). t5lite never downloads at run time. Prepare it once "
        f"with `tfds build {name.split(':')[0]} --data_dir={data_dir}`"
        f"{self._prepare_hint}, or point DATA_DIR / $TFDS_DATA_DIR at a directory "
        "that holds it."
      )
    self.tfds_dataset.override_data_dir(data_dir)

  def list_shards(self, split: str):
    self._check_prepared()
    return super().list_shards(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None, shard_info=None, **kwargs):
    self._check_prepared()
    return super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info, **kwargs)


def tf_exists(path: str) -> bool:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return tf.io.gfile.exists(path)

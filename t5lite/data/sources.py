"""seqio sources over TFDS: the embedded pydocs corpus, built on first use, and catalog datasets such as C4.

The pydocs source prepares its dataset (`pydocs_prepare`) the first time it is
read, in the data directory that applies at that moment (`data_dirs`); a
catalog source never downloads at run time, and when its dataset is not
prepared the error says how to prepare it.
"""

from __future__ import annotations

import os
from typing import Optional

import seqio
import tensorflow_datasets as tfds

from t5lite.data import data_dirs, pydocs, pydocs_prepare


class PydocsSource(seqio.TfdsDataSource):
  """The embedded corpus: builds itself into the data directory on first use."""

  def __init__(self, data_dir: Optional[str] = None):
    self._explicit_data_dir = data_dir
    self._prepared_dir: Optional[str] = None
    super().__init__(
      tfds_name=pydocs.TFDS_NAME,
      tfds_data_dir=data_dir,
      splits=("train", "validation"),
      read_only=True,
    )

  def prepare(self) -> str:
    """Builds the dataset if needed; returns the data directory used."""
    data_dir = data_dirs.resolve_data_dir(self._explicit_data_dir)
    if self._prepared_dir != data_dir:
      pydocs_prepare.prepare_pydocs(data_dir)
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
    data_dir = data_dirs.resolve_data_dir()
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

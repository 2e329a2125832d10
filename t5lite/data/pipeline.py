"""From a task name to host-local batches: feature conversion and packing.

seqio does the work (its EncDec, LM and PrefixLM feature converters pack
examples into rows with segment ids and positions); this module picks the
converter for a model type, validates names and lengths early, and yields
numpy batches of this process's shard.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from t5lite.data import registration

FEATURE_CONVERTERS = {
    "enc_dec": seqio.EncDecFeatureConverter,
    "lm": seqio.LMFeatureConverter,
    "prefix_lm": seqio.PrefixLMFeatureConverter,
}


def feature_converter(kind: str, pack: bool = True) -> seqio.FeatureConverter:
  """The seqio feature converter for 'enc_dec', 'lm' (causal) or 'prefix_lm'."""
  if kind not in FEATURE_CONVERTERS:
    raise ValueError(f"Unknown feature converter {kind!r}; valid: {sorted(FEATURE_CONVERTERS)}.")
  return FEATURE_CONVERTERS[kind](pack=pack)


def get_dataset(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    *,
    split: str = "train",
    batch_size: Optional[int] = None,
    converter: str = "enc_dec",
    pack: bool = True,
    shuffle: bool = True,
    seed: Optional[int] = 0,
    shard_info: Optional[seqio.ShardInfo] = None,
    num_epochs: Optional[int] = None,
) -> tf.data.Dataset:
  """The model-ready dataset of a task or mixture for this process's shard.

  `batch_size` is the per-process batch (the global batch divided by the
  number of data-loading processes); batches are full (drop_remainder).
  """
  task = registration.get_task_or_mixture(mixture_or_task_name)
  for key, length in task_feature_lengths.items():
    if not isinstance(length, int) or length <= 0:
      raise ValueError(f"task_feature_lengths[{key!r}]={length!r} must be a positive int.")
  missing = sorted(set(task.output_features) - set(task_feature_lengths))
  if missing:
    raise ValueError(
        f"task_feature_lengths {dict(task_feature_lengths)} lacks {missing} for "
        f"{mixture_or_task_name!r}, whose features are {sorted(task.output_features)}."
    )
  if split not in task.splits:
    raise ValueError(f"Split {split!r} is not in {mixture_or_task_name!r}; valid: {sorted(task.splits)}.")
  ds = seqio.get_dataset(
      task,
      task_feature_lengths=dict(task_feature_lengths),
      feature_converter=feature_converter(converter, pack),
      dataset_split=split,
      shuffle=shuffle,
      num_epochs=num_epochs,
      shard_info=shard_info,
      seed=seed,
      verbose=False,
  )
  if batch_size is not None:
    if batch_size <= 0:
      raise ValueError(f"batch_size={batch_size} must be positive.")
    ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a dataset as dicts of numpy arrays."""
  return ds.as_numpy_iterator()

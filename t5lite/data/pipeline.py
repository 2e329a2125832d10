"""From a task name to host-local batches: feature conversion and packing.

seqio does the work (its EncDec, LM and PrefixLM feature converters pack
examples into rows with segment ids and positions); this module runs the
converter class a model names (`model.feature_converter_cls`), validates names
and lengths early, and yields numpy batches of this process's shard.

The training data order (`host_batches`) is a function of the task, the
lengths, the converter, packing, shuffling and the seed, and of nothing else:
every process reads the same stream of model-ready rows (packed sequences)
from its beginning, cuts it into global batches, and keeps its own rows of
each. The number of processes, and the batch size, only decide how the one
stream is cut, so a run gives the same global batches on 1 or N hosts and a
resume continues at a row of that stream (`start_row`). The price: each
process prepares the whole stream, N times the host work of reading disjoint
shards (seqio's `ShardInfo`, which T5X uses and whose order depends on N).
"""

from __future__ import annotations

from typing import Iterator, Mapping, Optional, Union

import numpy as np
import seqio
import tensorflow as tf

from t5lite.data import encoder_features, registration

# The short names a checkpoint's data spec records for the converters.
FEATURE_CONVERTERS = {
  "enc_dec": seqio.EncDecFeatureConverter,
  "lm": seqio.LMFeatureConverter,
  "prefix_lm": seqio.PrefixLMFeatureConverter,
  "mlm": encoder_features.MlmFeatureConverter,
  "classification": encoder_features.ClassificationFeatureConverter,
  "regression": encoder_features.RegressionFeatureConverter,
}
ConverterLike = Union[type, str]


def converter_class(converter: ConverterLike) -> type:
  """The seqio FeatureConverter class given as itself or by its short name.

  Raises:
    ValueError: an unknown name, or a class that is not a seqio FeatureConverter.
  """
  if isinstance(converter, str):
    if converter not in FEATURE_CONVERTERS:
      raise ValueError(f"Unknown feature converter {converter!r}; valid: {sorted(FEATURE_CONVERTERS)}.")
    return FEATURE_CONVERTERS[converter]
  if not (isinstance(converter, type) and issubclass(converter, seqio.FeatureConverter)):
    raise ValueError(
      f"feature converter {converter!r} is not a seqio.FeatureConverter class nor one of {sorted(FEATURE_CONVERTERS)}."
    )
  return converter


def converter_name(converter: ConverterLike) -> str:
  """The name a data spec records for a converter class (or name): its short name
  ('enc_dec', 'lm', 'prefix_lm', 'mlm', 'classification', 'regression'), 'module.ClassName'
  for any other class.

  Raises:
    ValueError: as `converter_class`.
  """
  cls = converter_class(converter)
  for name, known in FEATURE_CONVERTERS.items():
    if cls is known:
      return name
  return f"{cls.__module__}.{cls.__qualname__}"


def feature_converter(converter: ConverterLike, pack: bool = True) -> seqio.FeatureConverter:
  """An instance of the seqio feature converter class (or short name: 'enc_dec',
  'lm' (causal), 'prefix_lm', or the encoder-only 'mlm', 'classification', 'regression').

  Raises:
    ValueError: as `converter_class`.
  """
  return converter_class(converter)(pack=pack)


def get_dataset(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  split: str = "train",
  batch_size: Optional[int] = None,
  converter: ConverterLike = seqio.EncDecFeatureConverter,
  pack: bool = True,
  shuffle: bool = True,
  seed: Optional[int] = 0,
  shard_info: Optional[seqio.ShardInfo] = None,
  num_epochs: Optional[int] = None,
) -> tf.data.Dataset:
  """The model-ready dataset of a task or mixture for this process's shard.

  `converter` is a seqio FeatureConverter class (a model's
  `feature_converter_cls`) or its short name. `batch_size` is the per-process
  batch (the global batch divided by the number of data-loading processes);
  batches are full (drop_remainder).
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


def host_batches(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  global_batch_size: int,
  split: str = "train",
  converter: ConverterLike = seqio.EncDecFeatureConverter,
  pack: bool = True,
  shuffle: bool = True,
  seed: Optional[int] = 0,
  num_epochs: Optional[int] = None,
  start_row: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> tf.data.Dataset:
  """This process's rows of each global batch of the one stream (module doc).

  Global batch k holds rows [start_row + k * B, start_row + (k + 1) * B) of
  the stream of model-ready rows, B = global_batch_size; process p gets its
  rows [p * B / P, (p + 1) * B / P) of it (P = process_count). Batches are
  full (drop_remainder), so every process yields the same number of them.

  Raises:
    ValueError: a global batch size not divisible by the number of
      processes, a negative start_row, a process index out of range, or the
      errors of `get_dataset`.
  """
  if not isinstance(process_count, int) or process_count < 1:
    raise ValueError(f"process_count={process_count!r} must be a positive int.")
  if not isinstance(process_index, int) or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index!r} must be in [0, {process_count}).")
  if not isinstance(global_batch_size, int) or isinstance(global_batch_size, bool) or global_batch_size <= 0:
    raise ValueError(f"BATCH_SIZE={global_batch_size!r} must be a positive int.")
  if global_batch_size % process_count:
    raise ValueError(
      f"BATCH_SIZE={global_batch_size} is not divisible by the {process_count} processes; use a multiple "
      f"of {process_count}."
    )
  if not isinstance(start_row, int) or start_row < 0:
    raise ValueError(f"start_row={start_row!r} must be a non-negative int.")
  ds = get_dataset(
    mixture_or_task_name,
    task_feature_lengths,
    split=split,
    batch_size=None,
    converter=converter,
    pack=pack,
    shuffle=shuffle,
    seed=seed,
    shard_info=None,
    num_epochs=num_epochs,
  )
  ds = ds.skip(start_row).batch(global_batch_size, drop_remainder=True)
  if process_count > 1:
    local = global_batch_size // process_count
    lo = process_index * local
    ds = ds.map(lambda batch: {k: v[lo : lo + local] for k, v in batch.items()})
  return ds.prefetch(tf.data.AUTOTUNE)

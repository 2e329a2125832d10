"""Where TFDS datasets live: the default folder, the process-wide override, and which one applies.

An explicit folder wins, then seqio's TFDS data-dir override (what the gin
`DATA_DIR` macro sets, through `set_data_dir`), then $TFDS_DATA_DIR, then
~/.cache/t5lite/tensorflow_datasets.
"""

from __future__ import annotations

import os
from typing import Optional

import seqio

# Any versioned TFDS name: `seqio.LazyTfdsLoader(...).data_dir` reads the override without loading the dataset.
_ANY_TFDS_NAME = "pydocs:1.0.0"


def default_data_dir() -> str:
  """$TFDS_DATA_DIR if set (with ~ expanded), else ~/.cache/t5lite/tensorflow_datasets.

  $XDG_CACHE_HOME, when set, takes the place of ~/.cache.
  """
  data_dir = os.environ.get("TFDS_DATA_DIR")
  if data_dir:
    return os.path.expanduser(data_dir)
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "t5lite", "tensorflow_datasets")


def set_data_dir(data_dir: Optional[str]) -> None:
  """Points every TFDS-backed seqio source (pydocs and catalog ones) at `data_dir`; None undoes it."""
  seqio.set_tfds_data_dir_override(data_dir)


def resolve_data_dir(data_dir: Optional[str] = None) -> str:
  """`data_dir` if given, else the folder `set_data_dir` set, else `default_data_dir()`."""
  return data_dir or seqio.LazyTfdsLoader(_ANY_TFDS_NAME).data_dir or default_data_dir()

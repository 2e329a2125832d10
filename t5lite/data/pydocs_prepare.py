"""Builds the pydocs corpus once per data directory, under a file lock, and reuses it afterwards."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Optional

import tensorflow_datasets as tfds

from t5lite.data import data_dirs, locking, pydocs


def prepare_pydocs(data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """Builds the corpus into `data_dir` unless it is there, and returns its builder.

  Safe to call from several processes at once: the check-and-build runs
  under a file lock in `data_dir`, so one process builds and the others
  wait and then reuse the result. Later calls only read the metadata.
  Nothing is downloaded.

  Args:
    data_dir: TFDS data folder; `data_dirs.default_data_dir()` when None.

  Returns:
    The `pydocs.Pydocs` builder of the running Python's config, prepared.

  Raises:
    RuntimeError: collecting the documents failed (`pydocs_subprocess.collect_documents`).
  """
  data_dir = os.path.abspath(os.path.expanduser(data_dir or data_dirs.default_data_dir()))
  os.makedirs(data_dir, exist_ok=True)
  lock_path = os.path.join(data_dir, f".pydocs-{pydocs.CONFIG_NAME}.lock")
  with locking.file_lock(lock_path):
    # Constructed under the lock, so that a builder made after another
    # process finished reads the finished dataset's metadata.
    builder = pydocs.Pydocs(data_dir=data_dir, config=pydocs.CONFIG_NAME)
    if os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
      return builder
    # TFDS announces a build as "Downloading and preparing dataset ..."
    # with progress bars; nothing is downloaded here, so say what happens.
    print(f"t5lite: building the pydocs corpus (once) in {builder.data_dir}", file=sys.stderr)
    tfds.display_progress_bar(False)
    try:
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
          download_dir=os.path.join(data_dir, "downloads"),
          download_config=tfds.download.DownloadConfig(
            try_download_gcs=False,
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
          ),
        )
    finally:
      tfds.display_progress_bar(True)
  return builder

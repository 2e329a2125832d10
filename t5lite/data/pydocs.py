"""The `pydocs` TFDS builder: a small English corpus from the documentation inside Python itself.

One example per document, {'name': Text, 'text': Text}: each public standard
library module (its docstring and those of its public classes, functions and
methods, with signatures) and each pydoc topic ('topic:if'), as collected by
`pydocs_collector.py`. A document is in 'validation' when its name's sha256
falls in the lowest VALIDATION_PERCENT (`is_validation`), else in 'train'.
The content depends on the Python version, so the one builder config is named
after the running interpreter: `pydocs/py3_11:1.0.0` on Python 3.11.
Build it with `pydocs_prepare.prepare_pydocs()`; docs/tasks.md describes it.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any, Sequence

import tensorflow_datasets as tfds
from etils import epath

from t5lite.data.pydocs_subprocess import collect_documents

__all__ = [
  "CONFIG_NAME",
  "Pydocs",
  "TFDS_NAME",
  "VALIDATION_PERCENT",
  "VERSION",
  "is_validation",
]

VERSION = tfds.core.Version("1.0.0")

#: Builder config name for the running interpreter, e.g. 'py3_11'.
CONFIG_NAME = f"py{sys.version_info.major}_{sys.version_info.minor}"

#: The name to give `tfds.builder` / `seqio.TfdsDataSource(tfds_name=...)`.
TFDS_NAME = f"pydocs/{CONFIG_NAME}:{VERSION}"

#: Percentage of documents (by hash of the name) in the 'validation' split.
VALIDATION_PERCENT = 5
_VALIDATION_THRESHOLD = (1 << 64) * VALIDATION_PERCENT // 100


def is_validation(name: str) -> bool:
  """Whether the document `name` belongs to the 'validation' split.

  Uses sha256 of the UTF-8 name (not `hash()`), so it does not depend on
  PYTHONHASHSEED, the process or the platform.
  """
  digest = hashlib.sha256(name.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < _VALIDATION_THRESHOLD


class Pydocs(tfds.core.GeneratorBasedBuilder):
  """Docstrings of the Python standard library and pydoc's topics."""

  # tfds 4.9.10 finds this through `importlib_resources`, which it only
  # declares as a dependency for Python < 3.9, so the lookup fails with
  # ModuleNotFoundError on newer Pythons without that package; give the
  # answer directly.  (Used to find a checksums.tsv next to the code; there
  # is none, nothing is downloaded.)
  code_path = epath.Path(__file__)

  VERSION = VERSION
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(
      name=CONFIG_NAME,
      description=(f"Documentation of Python {sys.version_info.major}.{sys.version_info.minor}."),
    )
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly (not `dataset_info_from_configs`) so that no README
    # or CITATIONS file next to this module is picked up.
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "Docstrings of the Python standard library modules, classes, "
        "functions and methods, and the language reference topics "
        "shipped in pydoc_data.topics, one example per document."
      ),
      features=tfds.features.FeaturesDict({"name": tfds.features.Text(), "text": tfds.features.Text()}),
      homepage="https://docs.python.org/3/",
    )

  def _split_generators(self, dl_manager: Any):
    del dl_manager  # Nothing is downloaded.
    documents = collect_documents()
    train = [d for d in documents if not is_validation(d[0])]
    validation = [d for d in documents if is_validation(d[0])]
    return {
      "train": self._generate_examples(train),
      "validation": self._generate_examples(validation),
    }

  def _generate_examples(self, documents: Sequence[tuple[str, str]]):
    for name, text in documents:
      yield name, {"name": name, "text": text}

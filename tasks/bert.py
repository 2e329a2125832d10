"""Tasks for BERT-style encoder-only models over the embedded `pydocs` corpus (built locally, no network).

All use the default WordPiece vocabulary (`wordpiece.default_wordpiece_vocabulary()`,
trained from the pydocs train split on first use).

- `pydocs_mlm`: masked-LM pretraining (15 % of the tokens, 80/10/10), 'mlm' converter.
- `pydocs_mlm_wwm`: the same with whole-word masking.
- `pydocs_kind`: classification of a docstring by the kind of object it documents,
  'class', 'function' or 'method' (`docstring_kinds`); accuracy and macro F1,
  'classification' converter. Examples of the corpus's validation documents make
  the validation split.
"""

from __future__ import annotations

import functools
import hashlib
import re

import seqio
import tensorflow as tf

from t5lite.data import registration, wordpiece
from t5lite_tasks import pydocs as pydocs_tasks

SOURCE = pydocs_tasks.SOURCE
VOCABULARY = wordpiece.default_wordpiece_vocabulary()

registration.register_mlm_task("pydocs_mlm", SOURCE, VOCABULARY)
registration.register_mlm_task("pydocs_mlm_wwm", SOURCE, VOCABULARY, whole_word=True)

KIND_CLASSES = ("class", "function", "method")
# Docstrings are cut to this many characters before tokenizing (inputs are 128-512 tokens).
MAX_DOC_CHARS = 2000


def docstring_kinds(name: str, text: str) -> list[tuple[str, str, str]]:
  """(qualified name, docstring, kind) for each class, function and method a pydocs module document holds.

  A module document (pydocs_collector.py) is the module docstring, then one
  section per object, separated by blank lines, each opening with a heading
  line: `class mod.Name(sig)` (kind 'class'), `mod.name(sig)` ('function'),
  `mod.Class.name(sig)` ('method'). A `mod.Class.name` heading without a
  signature (a property, or a method of a C type without one) is left out, as
  are the module docstring, empty docstrings and topics. The docstring is the
  section's text after its heading, so the heading (the `class ` prefix, the
  `self` of a signature) never shows in the inputs.
  """
  if name.startswith("topic:"):
    return []
  heading = re.compile(r"^(class )?" + re.escape(name) + r"\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(\(.*)?$")
  out = []
  for section in text.split("\n\n"):
    first, _, rest = section.partition("\n")
    m = heading.match(first)
    rest = rest.strip()
    if not m or not rest:
      continue
    depth = m.group(2).count(".") + 1
    if m.group(1):
      kind = "class"
    elif depth == 1:
      kind = "function"
    elif depth == 2 and m.group(3):
      kind = "method"
    else:
      continue
    out.append((f"{name}.{m.group(2)}", rest[:MAX_DOC_CHARS], kind))
  return out


@functools.lru_cache(maxsize=8)
def _kind_examples(split: str, data_dir: str) -> tuple[tuple[str, str, str], ...]:
  del data_dir  # the cache key: the corpus read is the one in this data directory
  found = []
  for ex in SOURCE.get_dataset(split, shuffle=False).as_numpy_iterator():
    found.extend(docstring_kinds(ex["name"].decode("utf-8"), ex["text"].decode("utf-8")))
  # A fixed order that mixes modules (seqio shuffles with a bounded buffer).
  return tuple(sorted(found, key=lambda e: hashlib.sha256(e[0].encode("utf-8")).hexdigest()))


def kind_examples(split: str) -> tuple[tuple[str, str, str], ...]:
  """The (qualified name, docstring, kind) examples of `pydocs_kind`'s split ('train' or 'validation')."""
  if split not in ("train", "validation"):
    raise ValueError(f"Unknown split {split!r} of pydocs_kind; valid: ['train', 'validation'].")
  return _kind_examples(split, SOURCE.prepare())


def _kind_dataset(split, shuffle_files, seed=None):
  del shuffle_files, seed  # the task shuffles examples itself
  examples = kind_examples(split)
  return tf.data.Dataset.from_tensor_slices(
    {
      "name": [e[0] for e in examples],
      "inputs": [e[1] for e in examples],
      "label": [e[2] for e in examples],
    }
  )


KIND_SOURCE = seqio.FunctionDataSource(_kind_dataset, splits=["train", "validation"])

registration.register_classification_task("pydocs_kind", KIND_SOURCE, VOCABULARY, KIND_CLASSES)

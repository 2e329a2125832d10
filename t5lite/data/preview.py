"""Human-readable views of task examples: sentinels and mode tokens shown by name."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def decode_ids(vocabulary, ids: Sequence[int]) -> str:
  """Decodes ids, writing sentinels as <extra_id_i> and stopping at EOS. A BERT-style
  vocabulary (WordPiece: [CLS] and [SEP] shown, padding dropped) and class labels or float
  targets (t5lite.data.labels) are decoded by the vocabulary as they are."""
  arr = np.asarray(ids).ravel()
  if not np.issubdtype(arr.dtype, np.integer):  # regression targets
    return " ".join(f"{float(x):g}" for x in arr)
  if hasattr(vocabulary, "cls_id") or hasattr(vocabulary, "names"):
    return vocabulary.decode([int(i) for i in arr])
  ids = [int(i) for i in arr]
  base = vocabulary.vocab_size - vocabulary.extra_ids
  parts, run = [], []
  for i in ids:
    if i == vocabulary.eos_id:
      break
    if i >= base:
      if run:
        parts.append(vocabulary.decode(run))
        run = []
      parts.append(f"<extra_id_{vocabulary.vocab_size - 1 - i}>")
    elif i != 0:
      run.append(i)
  if run:
    parts.append(vocabulary.decode(run))
  return " ".join(p for p in parts if p)


def format_example(example: Mapping[str, np.ndarray], output_features, width: int = 300) -> str:
  """One example as 'feature (n tokens): text', one feature per line."""
  lines = []
  for key, feature in output_features.items():
    if key not in example:
      continue
    ids = example[key]
    text = decode_ids(feature.vocabulary, ids)
    if len(text) > width:
      text = text[:width] + " ..."
    lines.append(f"  {key} ({len(ids)} tokens): {text}")
  return "\n".join(lines)

"""Synthetic supervised tasks, generated locally and deterministically.

`synthetic_reverse`: the inputs are 4 to 9 random lowercase letters separated by
spaces ("reverse: c a t s"), the target is the same letters in reverse order
("s t a c"). A tiny model learns it almost perfectly on a CPU in minutes, which
makes it the end-to-end check that fine-tuning, decoding and evaluation work.
Scored by exact match. The validation split holds the strings whose sha256
falls in 1/50 of the hash space, so no validation string is in train.
"""

import hashlib

import numpy as np
import seqio
import tensorflow as tf

from t5lite import metrics
from t5lite.data import registration, vocab

SIZES = {"train": 50_000, "validation": 500}
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _is_validation(text: str) -> bool:
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 50 == 0


def reverse_examples(split: str, seed: int = 1234) -> list[tuple[str, str]]:
  """The examples of a split: (inputs, targets) string pairs, unique within the split."""
  if split not in SIZES:
    raise ValueError(f"Unknown split {split!r} of synthetic_reverse; valid: {sorted(SIZES)}.")
  rng = np.random.default_rng(seed)
  out, seen = [], set()
  while len(out) < SIZES[split]:
    letters = " ".join(rng.choice(_LETTERS, size=int(rng.integers(4, 10))))
    if letters in seen or _is_validation(letters) != (split == "validation"):
      continue
    seen.add(letters)
    out.append((f"reverse: {letters}", " ".join(reversed(letters.split(" ")))))
  return out


def _dataset_fn(split, shuffle_files, seed=None):
  del shuffle_files, seed  # the task shuffles examples itself
  pairs = reverse_examples(split)
  return tf.data.Dataset.from_tensor_slices({"inputs": [p[0] for p in pairs], "targets": [p[1] for p in pairs]})


SOURCE = seqio.FunctionDataSource(_dataset_fn, splits=list(SIZES), num_input_examples=SIZES)

registration.register_text_to_text_task(
  "synthetic_reverse", SOURCE, vocab.default_vocabulary(), metric_fns=[metrics.exact_match]
)

"""Tests for tasks/bert.py: the labelled pydocs_kind task and the MLM tasks over the embedded corpus."""

import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

import t5lite_tasks  # noqa: F401  pylint: disable=unused-import
from t5lite.data import labels
from t5lite_tasks import bert

DOC = """Tools for things.

More about the module.

class mod.Thing(a, b=1)
A thing made of a and b.

mod.Thing.grow(self, n)
Grow the thing by n.

It may fail.

mod.Thing.size
The size of the thing.

mod.helper(x)
Help with x.

mod.Thing.empty(self)

mod.Thing.Inner.f(x)
Deeper than a method: left out."""


def test_docstring_kinds_label_rule():
  assert bert.docstring_kinds("mod", DOC) == [
    ("mod.Thing", "A thing made of a and b.", "class"),
    ("mod.Thing.grow", "Grow the thing by n.", "method"),
    ("mod.helper", "Help with x.", "function"),
  ]
  assert bert.docstring_kinds("topic:if", "class mod.X\nA class.") == []


@pytest.fixture(scope="module")
def kind_task():
  return seqio.get_mixture_or_task("pydocs_kind")


@pytest.mark.parametrize("split", ["train", "validation"])
def test_pydocs_kind_examples_have_valid_labels(kind_task, split):
  examples = bert.kind_examples(split)
  counts = collections.Counter(e[2] for e in examples)
  assert set(counts) == set(bert.KIND_CLASSES)
  # Fairly balanced: no class under 15 % or over 55 % of the split.
  assert all(0.15 <= c / len(examples) <= 0.55 for c in counts.values()), counts
  ds = kind_task.get_dataset({"inputs": 64, "targets": 1}, split=split, shuffle=False)
  seen = collections.Counter()
  vocab = kind_task.output_features["inputs"].vocabulary
  for i, ex in enumerate(ds.as_numpy_iterator()):
    assert ex["targets"].shape == (1,) and 0 <= ex["targets"][0] < 3
    assert ex["inputs"][0] == vocab.cls_id and ex["inputs"][-1] == vocab.sep_id and len(ex["inputs"]) <= 64
    seen[bert.KIND_CLASSES[ex["targets"][0]]] += 1
    if split == "train" and i >= 400:
      break
  if split == "validation":
    assert seen == counts
  # The train and validation examples come from disjoint documents.
  if split == "validation":
    train_names = {e[0] for e in bert.kind_examples("train")}
    assert not train_names & {e[0] for e in examples}


def test_pydocs_kind_unknown_label_errors(kind_task):
  feats = kind_task.output_features
  ds = tf.data.Dataset.from_tensor_slices({"inputs": ["Return x."], "label": ["property"]})
  with pytest.raises(
    tf.errors.InvalidArgumentError, match=r"Unknown label.*property.*classes are: class, function, method"
  ):
    list(labels.classification(ds, {"inputs": 16, "targets": 1}, feats).as_numpy_iterator())
  assert kind_task.output_features["targets"].vocabulary.decode([2]) == "method"


@pytest.mark.parametrize("name", ["pydocs_mlm", "pydocs_mlm_wwm"])
def test_pydocs_mlm_tasks(name):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset({"inputs": 64, "targets": 64}, split="validation", shuffle=False, seed=3)
  vocab = task.output_features["inputs"].vocabulary
  selected = candidates = 0
  for ex in ds.take(50).as_numpy_iterator():
    assert ex["inputs"].dtype == ex["targets"].dtype == ex["token_type_ids"].dtype == np.int32
    assert ex["inputs"][0] == vocab.cls_id and ex["inputs"][-1] == vocab.sep_id
    selected += int((ex["targets"] > 0).sum())
    candidates += len(ex["inputs"]) - 2
  assert 0.12 <= selected / candidates <= 0.16

"""Shared fixtures for the data tests: small real sources and a real SentencePiece model."""

import numpy as np
import pytest
import seqio
import tensorflow as tf
from pydoc_data.topics import topics

from t5lite.data import vocab as vocab_lib

TOPIC_TEXTS = [topics[k] for k in sorted(topics)]


def make_source(texts, name_key: bool = False) -> seqio.FunctionDataSource:
  """A seqio source over fixed in-memory documents (order preserved)."""
  texts = list(texts)

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    feats = {"text": texts}
    if name_key:
      feats["name"] = [f"doc{i}" for i in range(len(texts))]
    return tf.data.Dataset.from_tensor_slices(feats)

  return seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"])


@pytest.fixture(scope="session")
def spm_path(tmp_path_factory) -> str:
  """A 2,000-piece unigram model trained on pydoc's topic texts (with UL2 mode tokens)."""
  path = str(tmp_path_factory.mktemp("spm") / "topics.model")
  return vocab_lib.train_sentencepiece(TOPIC_TEXTS, path, vocab_size=2000)


@pytest.fixture(scope="session")
def sp_vocab(spm_path):
  return vocab_lib.sentencepiece_vocabulary(spm_path)


def collect(task_name, lengths, n=None, **kwargs):
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(lengths, split="train", shuffle=False, seed=kwargs.pop("seed", 1), **kwargs)
  if n is not None:
    ds = ds.take(n)
  return [{k: v for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def strip_eos(x: np.ndarray) -> np.ndarray:
  assert x[-1] == 1, "sequence does not end with EOS"
  return x[:-1]

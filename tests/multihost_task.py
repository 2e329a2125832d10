"""A tiny byte-vocabulary task for multi-process tests (imported by a gin file).

Examples are the synthetic reversal pairs. The global batches are a function
of the seed alone (t5lite.data.pipeline.host_batches), so with shuffling and
packing on, two processes train on the same batches as one and the losses
agree.
"""

import seqio
import tensorflow as tf

from t5lite.data import registration
from t5lite_tasks import synthetic


def _dataset_fn(split, shuffle_files, seed=None):
  del shuffle_files, seed
  pairs = synthetic.reverse_examples(split)[:2000]
  return tf.data.Dataset.from_tensor_slices({"inputs": [p[0] for p in pairs], "targets": [p[1] for p in pairs]})


registration.register_text_to_text_task(
  "multihost_reverse",
  seqio.FunctionDataSource(_dataset_fn, splits=["train", "validation"]),
  seqio.ByteVocabulary(extra_ids=100),
)

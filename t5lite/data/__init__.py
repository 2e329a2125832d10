"""The data path: corpus, vocabularies, objectives, tasks, pipeline (seqio, TFDS, TensorFlow).

Importing any module of this package first sets TensorFlow up host-only and
quiet (see `tensorflow_setup`).
"""

from t5lite.data import tensorflow_setup as _tensorflow_setup

_tensorflow_setup.setup()

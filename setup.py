"""Packaging for t5lite: the library, the task package and the gin files.

`t5lite_tasks` lives in the folder `tasks/`. The gin files under `gin/` are
installed as data under `<prefix>/share/t5lite/gin` (a package named `gin`
would shadow gin-config), and `t5lite.gin_paths` finds them there or in a
checkout, so that `--gin_file=models/t5_1_1/tiny.gin` resolves either way.
"""

import os

import setuptools


def _gin_data_files():
  out = []
  for root, _, files in os.walk("gin"):
    gins = sorted(os.path.join(root, f) for f in files if f.endswith(".gin"))
    if gins:
      out.append((os.path.join("share", "t5lite", root), gins))
  return out


setuptools.setup(
  name="t5lite",
  version="0.1.0",
  description="T5X-style training of encoder-decoder and decoder-only models in JAX/Flax.",
  python_requires=">=3.11",
  packages=setuptools.find_packages(include=["t5lite", "t5lite.*"]) + ["t5lite_tasks"],
  package_dir={"t5lite_tasks": "tasks"},
  data_files=_gin_data_files(),
  install_requires=[
    "jax>=0.10,<0.12",
    "flax>=0.12,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "gin-config>=0.5,<0.6",
    "sentencepiece>=0.2,<0.3",
    "numpy>=2.0",
    "tqdm>=4.60",
    "tensorboard>=2.21,<2.22",
    "safetensors>=0.8,<0.9",
    "ml_dtypes>=0.5",
  ],
  extras_require={
    # The data path (seqio tasks, TFDS builders) needs TensorFlow; the model,
    # optimizer and trainer modules import it lazily so a GPU box without TF
    # can still run benchmarks.
    "data": [
      "seqio==0.0.20",
      "tensorflow>=2.21,<2.22",
      "tensorflow-text>=2.21,<2.22",
      # WordPiece vocabularies (t5lite.data.wordpiece) for BERT-style models.
      "tokenizers>=0.23,<0.24",
      "tensorflow-datasets>=4.9.10,<4.10",
      "sacrebleu>=2.6,<3",
      "rouge-score>=0.1.2,<0.2",
    ],
    # The Hugging Face conversion tests compare logits with transformers' models on a CPU torch;
    # pytest-xdist runs `make test` in two processes.
    "test": ["pytest>=8", "pytest-xdist>=3.8,<4", "torch==2.13.0", "transformers==5.17.0"],
  },
  entry_points={"console_scripts": ["t5lite=t5lite.cli:console_main"]},
)

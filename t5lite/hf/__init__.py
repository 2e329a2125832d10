"""Hugging Face checkpoints: read a local model directory into t5lite parameters and write them back.

- `configs`: a `config.json` <-> a t5lite model config (T5 v1.1, flan-T5, mT5, the original T5, GPT-2, BERT).
- `names`: which Hugging Face tensor each t5lite parameter is, and how the two layouts differ.
- `bert`: the same for BERT's encoder-only models (the names depend on the head), and BERT's vocabulary files.
- `files`: the directory itself (config.json, model.safetensors or its sharded index), read in slices.
- `weights`: parameters built straight into their shardings from those slices, and the way back.

The whole-directory commands (`t5lite convert from-hf` / `to-hf`) are t5lite.convert. Nothing here imports
torch or transformers: safetensors reads and writes the files (numpy, with ml_dtypes for bfloat16).
"""

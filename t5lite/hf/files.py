"""A local Hugging Face model directory: `config.json` and its safetensors weights, read in slices, and written.

Weights are `model.safetensors`, or shards named by `model.safetensors.index.json` (its `weight_map`, as
transformers writes them). Reading goes through `safetensors.safe_open(framework='np')`, which maps the file
and reads only the requested slice of a tensor; `ml_dtypes` (imported with JAX) gives numpy its bfloat16, so
bfloat16 and float16 checkpoints read too (returned as float32). No torch, no pickle: a directory holding only
`pytorch_model.bin` is refused with the command that converts it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors' numpy reader needs)
import numpy as np

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SPIECE = "spiece.model"
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def is_hf_dir(path: Any) -> bool:
  """Whether `path` is a directory with a config.json and safetensors weights (or an index of them)."""
  path = str(path)
  return os.path.isfile(os.path.join(path, CONFIG)) and (
    os.path.isfile(os.path.join(path, WEIGHTS)) or os.path.isfile(os.path.join(path, INDEX))
  )


def has_config(path: Any) -> bool:
  """Whether `path` is a directory with a config.json (a Hugging Face model directory, readable or not)."""
  return os.path.isfile(os.path.join(str(path), CONFIG))


def read_config(hf_dir: str) -> dict[str, Any]:
  """The parsed config.json of `hf_dir`.

  Raises:
    FileNotFoundError: no such directory, or no config.json in it (the message lists what is there).
    ValueError: config.json is not a JSON object.
  """
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"{hf_dir!r} is not a directory (a Hugging Face model directory was expected)")
  path = os.path.join(hf_dir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"{hf_dir!r} has no {CONFIG}: give a Hugging Face model directory (as save_pretrained writes it); "
      f"it holds {sorted(os.listdir(hf_dir))[:20]}"
    )
  with open(path, encoding="utf-8") as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(config, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
  return config


SENTINELS = 100  # seqio's extra_ids, which T5's tokenizer adds to spiece.model's pieces


def spiece_vocabulary_size(hf_dir: str) -> Optional[int]:
  """Ids of the seqio vocabulary of the directory's spiece.model (its pieces plus T5's 100 sentinels: 32,100
  for T5's 32,000 pieces), or None when there is none."""
  path = os.path.join(str(hf_dir), SPIECE)
  if not os.path.isfile(path):
    return None
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  proc = spm.SentencePieceProcessor()
  proc.Load(path)
  return proc.GetPieceSize() + SENTINELS


class Checkpoint:
  """The safetensors weights of a Hugging Face directory: names, shapes, and slices of tensors.

  Use as a context manager (closes the mapped files). `bytes_read` counts the bytes of every slice returned
  (what a sharded import reads from disk).

  Raises (on construction):
    FileNotFoundError: no safetensors weights (with how to convert a pytorch_model.bin), or a shard named
      by the index that is missing.
    ValueError: an index without a weight_map, a damaged (truncated) safetensors file.
  """

  def __init__(self, hf_dir: str):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    self.directory = hf_dir
    single, index = os.path.join(hf_dir, WEIGHTS), os.path.join(hf_dir, INDEX)
    if os.path.isfile(index):
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: no 'weight_map' object")
      shards = sorted(set(weight_map.values()))
      missing = [s for s in shards if not os.path.isfile(os.path.join(hf_dir, s))]
      if missing:
        raise FileNotFoundError(f"{hf_dir!r}: shard(s) {missing} named by {INDEX} are missing")
    elif os.path.isfile(single):
      weight_map, shards = None, [WEIGHTS]
    else:
      pickles = [p for p in _PICKLES if os.path.exists(os.path.join(hf_dir, p))]
      how = (
        f" It has {pickles}: t5lite reads no pickles. Convert once with transformers: "
        f"`AutoModelForSeq2SeqLM.from_pretrained(DIR).save_pretrained(DIR)` (safetensors is its default) "
        f"(AutoModelForCausalLM for GPT-2, AutoModelForMaskedLM or AutoModelForSequenceClassification for BERT)."
        if pickles
        else ""
      )
      raise FileNotFoundError(f"{hf_dir!r} has neither {WEIGHTS} nor {INDEX}.{how}")
    self._files = {}
    for shard in shards:
      try:
        self._files[shard] = safe_open(os.path.join(hf_dir, shard), framework="np")
      except Exception as e:  # pylint: disable=broad-except  # SafetensorError, OSError: a damaged file
        raise ValueError(f"{os.path.join(hf_dir, shard)} is not a readable safetensors file ({e})") from None
    if weight_map is None:
      weight_map = {name: WEIGHTS for name in self._files[WEIGHTS].keys()}
    self._where = dict(weight_map)
    self._slices: dict[str, Any] = {}
    self.bytes_read = 0

  def __enter__(self) -> "Checkpoint":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self._slices.clear()
    self._files.clear()

  def names(self) -> list[str]:
    return sorted(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def _slice(self, name: str):
    if name not in self._where:
      raise KeyError(f"{self.directory!r}: no tensor {name!r} in the checkpoint")
    if name not in self._slices:
      self._slices[name] = self._files[self._where[name]].get_slice(name)
    return self._slices[name]

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in self._slice(name).get_shape())

  def dtype(self, name: str) -> str:
    """The stored dtype as safetensors names it ('F32', 'BF16', 'F16', ...)."""
    return str(self._slice(name).get_dtype())

  def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
    """Float32 values of tensor `name` restricted to `index` (slices, one per leading axis)."""
    part = self._slice(name)[tuple(index)] if index else self._slice(name)[:]
    part = np.asarray(part)
    self.bytes_read += part.nbytes
    return part.astype(np.float32, copy=False)


def write(
  out_dir: str, tensors: Mapping[str, np.ndarray], config: Mapping[str, Any], *, dtype: Optional[str] = None
) -> list[str]:
  """Writes `config.json` and `model.safetensors` (torch-style metadata {'format': 'pt'}) into `out_dir`.

  `dtype`: None keeps float32; 'bfloat16' or 'float16' casts every tensor (and records it as `dtype`).
  Returns the files written.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  cast = {None: np.float32, "float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
  if dtype not in cast:
    raise ValueError(f"dtype={dtype!r}; valid: None, 'float32', 'bfloat16', 'float16'")
  arrays = {k: np.ascontiguousarray(np.asarray(v).astype(cast[dtype], copy=False)) for k, v in tensors.items()}
  save_file(arrays, os.path.join(out_dir, WEIGHTS), metadata={"format": "pt"})
  config = dict(config, dtype=dtype or "float32")
  with open(os.path.join(out_dir, CONFIG), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")
  return [CONFIG, WEIGHTS]

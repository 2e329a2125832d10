"""Parameters from a Hugging Face checkpoint, built straight into their shardings, and the way back.

`import_params` checks the checkpoint against the model first (every tensor the model needs is there with
the shape its config implies; nothing unexpected is left over), then creates each parameter with
`jax.make_array_from_callback`: every device's shard is read from the checkpoint's matching slice
(t5lite.hf.names.Tensor.read), so on a mesh no host ever holds a whole xl or xxl model, and in a
multi-process run each process reads only its own devices' shards. `export_tensors` is the inverse, on
host numpy arrays. Written by hand: neither flax nor transformers converts between the two layouts. The BERT
tensor map depends on the model's head, read from the parameter tree (t5lite.hf.bert.head_of).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from t5lite.hf import bert, configs, files, names

PyTree = Any


def gpt2_prefix(checkpoint: files.Checkpoint) -> str:
  """'transformer.' for GPT2LMHeadModel's tensor names, '' for a bare GPT2Model's."""
  return "" if "wte.weight" in checkpoint and "transformer.wte.weight" not in checkpoint else "transformer."


def _prefix(checkpoint: files.Checkpoint, config: Any) -> str:
  kind = configs.check_exportable(config)
  if kind == "bert":
    return bert.checkpoint_prefix(checkpoint)
  return gpt2_prefix(checkpoint) if kind == "gpt2" else "transformer."


def sources_and_ignored(
  config: Any, tree: Mapping[str, Any], checkpoint: Optional[files.Checkpoint] = None
) -> tuple[dict[str, names.Source], tuple[str, ...]]:
  """({t5lite parameter path: checkpoint source}, checkpoint tensors an import may leave unread) for a model
  config and its parameter tree (whose top-level names give an encoder-only model's head), with the tensor-name
  variant `checkpoint` uses (GPT-2's and BERT's prefix, BERT's gamma / beta); without a checkpoint, the names
  an export writes (BertModel's unprefixed for a tree with a pooler and no classifier)."""
  if configs.check_exportable(config) == "bert":
    head, classes = bert.head_of(tree)
    if checkpoint is None:
      prefix, legacy = ("" if head == "pooler" else "bert."), False
    else:
      prefix = bert.checkpoint_prefix(checkpoint)
      legacy = bert.legacy_norm_names(checkpoint, prefix)
    return bert.tensor_map(config, head, classes, prefix, legacy), bert.ignored_tensors(config, head, prefix)
  prefix = "transformer." if checkpoint is None else _prefix(checkpoint, config)
  return names.tensor_map(config, prefix), names.ignored_tensors(config, prefix)


def output_is_tied(checkpoint: files.Checkpoint, family: str) -> bool:
  """Whether the checkpoint's output projection is its token embedding: no `lm_head.weight`, or one equal
  to the embedding (older files store the tied copy). Reads 8 rows of each first; only when those agree
  are the two tables compared whole (on the host: vocab x d_model float32 each). BERT: always (its decoder
  is checked by t5lite.hf.bert.check_mlm_decoder)."""
  if "lm_head.weight" not in checkpoint or family == "bert":
    return True
  embedding = "shared.weight" if family == "t5" else f"{gpt2_prefix(checkpoint)}wte.weight"
  if embedding not in checkpoint or checkpoint.shape(embedding) != checkpoint.shape("lm_head.weight"):
    return False
  rows = (slice(0, min(8, checkpoint.shape(embedding)[0])),)
  if not np.array_equal(checkpoint.read(embedding, rows), checkpoint.read("lm_head.weight", rows)):
    return False
  return bool(np.array_equal(checkpoint.read(embedding), checkpoint.read("lm_head.weight")))


def check_checkpoint(
  checkpoint: files.Checkpoint,
  config: Any,
  sources: Mapping[str, names.Source],
  ignored: Optional[Sequence[str]] = None,
) -> None:
  """Raises ValueError when the checkpoint lacks a tensor the model needs, holds one of another shape (naming
  the tensor and both shapes), or holds tensors the model would leave unused (other than `ignored`; default
  names.ignored_tensors)."""
  if ignored is None:
    ignored = names.ignored_tensors(config, _prefix(checkpoint, config))
  needed: dict[str, tuple[int, ...]] = {}
  for source in sources.values():
    for tensor in source.layers if isinstance(source, names.Stacked) else (source,):
      needed[tensor.name] = tensor.hf_shape
  missing = sorted(n for n in needed if n not in checkpoint)
  if missing:
    raise ValueError(
      f"{checkpoint.directory!r}: {len(missing)} tensor(s) the model config implies are not in the checkpoint, "
      f"e.g. {missing[:5]}"
    )
  for name, shape in sorted(needed.items()):
    found = checkpoint.shape(name)
    if found != tuple(shape):
      raise ValueError(
        f"{checkpoint.directory!r}: tensor {name!r} has shape {list(found)} in the checkpoint, but the model "
        f"config implies {list(shape)}"
      )
  unused = sorted(set(checkpoint.names()) - set(needed) - set(ignored))
  if unused:
    raise ValueError(
      f"{checkpoint.directory!r}: {len(unused)} tensor(s) this model has no place for, e.g. {unused[:5]}; "
      "the checkpoint is of another architecture than the model config describes"
    )


def import_params(checkpoint: files.Checkpoint, config: Any, abstract_params: PyTree) -> PyTree:
  """Float32 parameters for `config` read from `checkpoint`, with the tree of `abstract_params`.

  abstract_params: the model's parameters as (unboxed) jax.ShapeDtypeStructs, nested dicts; each leaf's
  `sharding`, when it has one, is where its shards go (else the default device).
  An encoder-only tree reads the BERT tensors of its head (t5lite.hf.bert.head_of: a pooler without a
  classifier reads a BertModel's). Raises ValueError (see `check_checkpoint`) before any parameter is created,
  and for a model parameter with no checkpoint source; configs.UnsupportedModelError for an untied BERT MLM
  decoder.
  """
  sources, ignored = sources_and_ignored(config, abstract_params, checkpoint)
  flat = names.flat_paths(abstract_params)
  extra = sorted(set(flat) - set(sources))
  if extra:
    raise ValueError(f"model parameters with no Hugging Face tensor: {extra[:5]} (an unsupported option?)")
  check_checkpoint(checkpoint, config, sources, ignored)
  if "mlm" in abstract_params:
    bert.check_mlm_decoder(checkpoint, _prefix(checkpoint, config))
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def build(path: str, leaf: Any) -> jax.Array:
    shape = tuple(leaf.shape)
    sharding = getattr(leaf, "sharding", None) or default
    source = sources[path]

    def shard(index):
      index = index if index is not None else (slice(None),) * len(shape)
      return source.read(checkpoint.read, shape, index).astype(np.float32, copy=False)

    return jax.make_array_from_callback(shape, sharding, shard)

  def walk(node, prefix_path):
    if isinstance(node, Mapping):
      return {k: walk(v, f"{prefix_path}/{k}" if prefix_path else str(k)) for k, v in node.items()}
    return build(prefix_path, node)

  return walk(abstract_params, "")


def export_tensors(config: Any, params: PyTree) -> dict[str, np.ndarray]:
  """{Hugging Face tensor name: float32 numpy array} of t5lite parameters (a nested dict of arrays).

  Raises configs.UnsupportedModelError for a config no Hugging Face family represents, ValueError when the
  parameters do not match the config's tensor map.
  """
  sources, _ = sources_and_ignored(config, params)
  flat = {k: np.asarray(jax.device_get(v), np.float32) for k, v in names.flat_paths(params).items()}
  if set(flat) != set(sources):
    missing, extra = sorted(set(sources) - set(flat)), sorted(set(flat) - set(sources))
    raise ValueError(f"parameters do not match the model config: missing {missing[:5]}, unexpected {extra[:5]}")
  out: dict[str, np.ndarray] = {}
  for path, source in sources.items():
    value = flat[path]
    pairs = (
      [(t, value[i]) for i, t in enumerate(source.layers)] if isinstance(source, names.Stacked) else [(source, value)]
    )
    for tensor, part in pairs:
      block = tensor.to_checkpoint(part)
      if tensor.columns is None:
        out[tensor.name] = np.ascontiguousarray(block)
      else:
        full = out.setdefault(tensor.name, np.zeros(tensor.hf_shape, np.float32))
        full[..., tensor.columns[0] : tensor.columns[1]] = block
  return out


def import_directory(
  hf_dir: str, config: Any, abstract_params: PyTree, where: str = "INITIAL_CHECKPOINT_PATH"
) -> PyTree:
  """`import_params` of a Hugging Face directory into a run's model, after checking that the run's model
  config has the architecture of the directory's config.json (`configs.check_same_architecture`).

  Raises what files.Checkpoint, configs.to_t5lite, check_same_architecture and import_params raise, all
  before any parameter is created.
  """
  hf_config = files.read_config(hf_dir)
  family = configs.family(hf_config, where=f"{where}={hf_dir!r}")
  with files.Checkpoint(hf_dir) as checkpoint:
    expected = configs.to_t5lite(hf_config, tied_output=output_is_tied(checkpoint, family))
    configs.check_same_architecture(expected, config, f"{where}={hf_dir!r}")
    return import_params(checkpoint, config, abstract_params)

"""Which Hugging Face tensor each t5lite parameter is, and how their layouts differ.

`tensor_map(config)` lists, for every t5lite parameter path ('encoder/layers_0/self_attention/query'), the
Hugging Face tensor it comes from (`Tensor`): its name and shape in the checkpoint, whether it is a torch
`nn.Linear` weight ([out, in], transposed against t5lite's [in, out]) and, for GPT-2's fused `c_attn`
(a `Conv1D`, already [in, out]), which columns are this parameter's. A t5lite parameter is then
`reshape(transpose?(hf[..., columns]), t5lite_shape)`: the reshape only splits axes (d_model x heads*d_kv
-> d_model x heads x d_kv), so every slice of a t5lite parameter is read from a slice of the checkpoint
tensor (`Tensor.read`), which is what lets a sharded import read only each device's part.

Layer stacks scanned with nn.scan ('encoder/layers/...', a leading layer axis) map to the list of their
per-layer tensors (`Stacked`). Tensor names follow transformers' T5 and GPT-2 modules
(T5ForConditionalGeneration: shared, {encoder,decoder}.block.i.layer.j..., lm_head; GPT2LMHeadModel:
transformer.{wte,wpe,h.i...,ln_f}). BERT's map, which depends on the model's head, is t5lite.hf.bert's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from t5lite.hf import configs

# (name, index) -> the checkpoint tensor's slice as a numpy array.
Reader = Callable[[str, tuple[slice, ...]], np.ndarray]


def _groups(t_shape: Sequence[int], shape: Sequence[int], what: str) -> list[list[int]]:
  """For each axis of `t_shape`, the consecutive axes of `shape` whose sizes multiply to it."""
  groups, axis = [], 0
  for size in t_shape:
    group, product = [], 1
    while axis < len(shape) and (product < size or not group):
      group.append(axis)
      product *= shape[axis]
      axis += 1
    while axis < len(shape) and shape[axis] == 1 and product == size and len(groups) == len(t_shape) - 1:
      group.append(axis)
      axis += 1
    if product != size:
      raise ValueError(f"{what}: shape {tuple(shape)} does not split the checkpoint layout {tuple(t_shape)}")
    groups.append(group)
  if axis != len(shape):
    raise ValueError(f"{what}: shape {tuple(shape)} does not split the checkpoint layout {tuple(t_shape)}")
  return groups


def _bounds(s: slice, size: int) -> tuple[int, int]:
  start, stop, step = s.indices(size)
  if step != 1:
    raise ValueError(f"strided slice {s} is not supported")
  return start, stop


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One Hugging Face tensor (or a column range of it) that is one t5lite parameter.

  name: the tensor's name in the checkpoint. hf_shape: its full shape there. transpose: a 2-D torch Linear
  weight [out, in] (t5lite keeps [in, out]). columns: (start, stop) on the last axis of the checkpoint tensor
  (GPT-2's fused q/k/v), None for the whole tensor.
  """

  name: str
  hf_shape: tuple[int, ...]
  transpose: bool = False
  columns: Optional[tuple[int, int]] = None

  @property
  def t_shape(self) -> tuple[int, ...]:
    """The shape after column selection and transposition, before the reshape to t5lite's shape."""
    shape = list(self.hf_shape)
    if self.columns is not None:
      shape[-1] = self.columns[1] - self.columns[0]
    return tuple(reversed(shape)) if self.transpose else tuple(shape)

  def read(self, reader: Reader, shape: Sequence[int], index: tuple[slice, ...]) -> np.ndarray:
    """The t5lite parameter of `shape` restricted to `index` (one slice per axis), read from the checkpoint
    through `reader(name, hf_index)`: only the rows and columns it needs."""
    shape = tuple(shape)
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    groups = _groups(self.t_shape, shape, self.name)
    t_index, block_shape, rest = [], [], []
    for group in groups:
      first = group[0]
      start, stop = _bounds(index[first], shape[first])
      inner = math.prod(shape[a] for a in group[1:])
      t_index.append(slice(start * inner, stop * inner))
      block_shape.extend([stop - start] + [shape[a] for a in group[1:]])
      rest.extend([slice(None)] + [index[a] for a in group[1:]])
    hf_index = list(reversed(t_index)) if self.transpose else list(t_index)
    if self.columns is not None:
      lo, hi = hf_index[-1].start, hf_index[-1].stop
      hf_index[-1] = slice(self.columns[0] + lo, self.columns[0] + hi)
    block = np.asarray(reader(self.name, tuple(hf_index)))
    if self.transpose:
      block = block.T
    return block.reshape(block_shape)[tuple(rest)]

  def to_checkpoint(self, value: np.ndarray) -> np.ndarray:
    """The t5lite parameter `value` in the checkpoint's layout (of the column range, when there is one)."""
    block = np.asarray(value).reshape(self.t_shape)
    return block.T if self.transpose else block


@dataclasses.dataclass(frozen=True)
class Stacked:
  """A scanned stack's parameter: layer l is `layers[l]`, stacked on a leading axis."""

  layers: tuple[Tensor, ...]

  def read(self, reader: Reader, shape: Sequence[int], index: tuple[slice, ...]) -> np.ndarray:
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    start, stop = _bounds(index[0], shape[0])
    parts = [self.layers[i].read(reader, shape[1:], index[1:]) for i in range(start, stop)]
    return np.stack(parts) if parts else np.zeros((0,) + tuple(shape[1:]), np.float32)


Source = Tensor | Stacked


def _linear(name: str, out_features: int, in_features: int) -> Tensor:
  return Tensor(name, (out_features, in_features), transpose=True)


def _t5_map(cfg: Any) -> dict[str, Tensor]:
  d, inner, ff = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff
  out: dict[str, Tensor] = {"token_embedder/embedding": Tensor("shared.weight", (cfg.vocab_size, d))}
  wis = ["wi"] if len(cfg.mlp_activations) == 1 else [f"wi_{i}" for i in range(len(cfg.mlp_activations))]

  def attention(prefix: str, hf: str) -> None:
    for mine, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
      out[f"{prefix}/{mine}"] = _linear(f"{hf}.{theirs}.weight", inner, d)
    out[f"{prefix}/out"] = _linear(f"{hf}.o.weight", d, inner)

  for stack, layers in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
    for i in range(layers):
      mine, hf = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      attention(f"{mine}/self_attention", f"{hf}.0.SelfAttention")
      out[f"{mine}/pre_self_attention_layer_norm/scale"] = Tensor(f"{hf}.0.layer_norm.weight", (d,))
      mlp = 1
      if stack == "decoder":
        attention(f"{mine}/encoder_decoder_attention", f"{hf}.1.EncDecAttention")
        out[f"{mine}/pre_cross_attention_layer_norm/scale"] = Tensor(f"{hf}.1.layer_norm.weight", (d,))
        mlp = 2
      for wi in wis:
        out[f"{mine}/mlp/{wi}"] = _linear(f"{hf}.{mlp}.DenseReluDense.{wi}.weight", ff, d)
      out[f"{mine}/mlp/wo"] = _linear(f"{hf}.{mlp}.DenseReluDense.wo.weight", d, ff)
      out[f"{mine}/pre_mlp_layer_norm/scale"] = Tensor(f"{hf}.{mlp}.layer_norm.weight", (d,))
    # An nn.Embedding [buckets, heads] in transformers (kept by the first block); t5lite's table is [heads, buckets].
    bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    out[f"{stack}/relpos_bias/rel_embedding"] = _linear(bias, cfg.relative_attention_num_buckets, cfg.num_heads)
    out[f"{stack}/{stack}_norm/scale"] = Tensor(f"{stack}.final_layer_norm.weight", (d,))
  if not cfg.logits_via_embedding:
    out["decoder/logits_dense/kernel"] = _linear("lm_head.weight", cfg.vocab_size, d)
  return out


def _gpt2_map(cfg: Any, prefix: str) -> dict[str, Tensor]:
  d, ff = cfg.d_model, cfg.d_ff
  out: dict[str, Tensor] = {
    "token_embedder/embedding": Tensor(f"{prefix}wte.weight", (cfg.vocab_size, d)),
    "decoder/position_embedder/embedding": Tensor(f"{prefix}wpe.weight", (cfg.max_position_embeddings, d)),
    "decoder/decoder_norm/scale": Tensor(f"{prefix}ln_f.weight", (d,)),
    "decoder/decoder_norm/bias": Tensor(f"{prefix}ln_f.bias", (d,)),
  }
  for i in range(cfg.num_layers):
    mine, hf = f"decoder/layers_{i}", f"{prefix}h.{i}"
    for norm, ln in (("pre_self_attention_layer_norm", "ln_1"), ("pre_mlp_layer_norm", "ln_2")):
      out[f"{mine}/{norm}/scale"] = Tensor(f"{hf}.{ln}.weight", (d,))
      out[f"{mine}/{norm}/bias"] = Tensor(f"{hf}.{ln}.bias", (d,))
    for j, name in enumerate(("query", "key", "value")):
      columns = (j * d, (j + 1) * d)
      out[f"{mine}/self_attention/{name}"] = Tensor(f"{hf}.attn.c_attn.weight", (d, 3 * d), columns=columns)
      out[f"{mine}/self_attention/{name}_bias"] = Tensor(f"{hf}.attn.c_attn.bias", (3 * d,), columns=columns)
    out[f"{mine}/self_attention/out"] = Tensor(f"{hf}.attn.c_proj.weight", (d, d))
    out[f"{mine}/self_attention/out_bias"] = Tensor(f"{hf}.attn.c_proj.bias", (d,))
    out[f"{mine}/mlp/wi"] = Tensor(f"{hf}.mlp.c_fc.weight", (d, ff))
    out[f"{mine}/mlp/wi_bias"] = Tensor(f"{hf}.mlp.c_fc.bias", (ff,))
    out[f"{mine}/mlp/wo"] = Tensor(f"{hf}.mlp.c_proj.weight", (ff, d))
    out[f"{mine}/mlp/wo_bias"] = Tensor(f"{hf}.mlp.c_proj.bias", (d,))
  return out


def _stack_scanned(flat: dict[str, Tensor]) -> dict[str, Source]:
  """Groups 'stack/layers_i/...' entries into 'stack/layers/...' Stacked sources (scan_layers)."""
  out: dict[str, Source] = {}
  stacked: dict[str, list[tuple[int, Tensor]]] = {}
  for path, tensor in flat.items():
    parts = path.split("/")
    if len(parts) > 1 and parts[1].startswith("layers_"):
      key = "/".join([parts[0], "layers"] + parts[2:])
      stacked.setdefault(key, []).append((int(parts[1][len("layers_") :]), tensor))
    else:
      out[path] = tensor
  for key, items in stacked.items():
    out[key] = Stacked(tuple(t for _, t in sorted(items, key=lambda it: it[0])))
  return out


def tensor_map(config: Any, gpt2_prefix: str = "transformer.") -> dict[str, Source]:
  """{t5lite parameter path: its checkpoint source} for a T5Config or GPT-2-style DecoderOnlyConfig.

  `gpt2_prefix`: 'transformer.' (GPT2LMHeadModel's names) or '' (a bare GPT2Model's).
  Raises configs.UnsupportedModelError for a config no Hugging Face family represents.
  """
  kind = configs.check_exportable(config)
  if kind == "bert":
    raise ValueError("an encoder-only model's tensor map depends on its head: use t5lite.hf.bert.tensor_map")
  flat = _t5_map(config) if kind == "t5" else _gpt2_map(config, gpt2_prefix)
  return _stack_scanned(flat) if config.scan_layers else dict(flat)


def ignored_tensors(config: Any, gpt2_prefix: str = "transformer.") -> tuple[str, ...]:
  """Checkpoint tensors an import may leave unread: tied copies of the embedding (T5's embed_tokens, a tied
  lm_head) and GPT-2's attention-mask buffers of older files."""
  kind = configs.check_exportable(config)
  if kind == "bert":
    raise ValueError("an encoder-only model's ignored tensors depend on its head: use t5lite.hf.bert.ignored_tensors")
  if kind == "t5":
    names = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    if config.logits_via_embedding:
      names.append("lm_head.weight")
    return tuple(names)
  names = ["lm_head.weight"]
  for i in range(config.num_layers):
    names += [f"{gpt2_prefix}h.{i}.attn.bias", f"{gpt2_prefix}h.{i}.attn.masked_bias"]
  return tuple(names)


def flat_paths(tree: Any) -> dict[str, Any]:
  """{'a/b/c': leaf} of a nested dict of parameters."""
  out = {}

  def walk(node, prefix):
    if isinstance(node, dict) or hasattr(node, "items"):
      for k, v in node.items():
        walk(v, f"{prefix}/{k}" if prefix else str(k))
    else:
      out[prefix] = node

  walk(tree, "")
  return out

"""Hugging Face BERT checkpoints: which tensor each encoder-only t5lite parameter is, and the vocabulary files.

The names are transformers' `modeling_bert` (5.x), under the prefix 'bert.' (BertForMaskedLM,
BertForSequenceClassification) or none (a bare BertModel):

| t5lite parameter                                   | Hugging Face tensor                                  |
|----------------------------------------------------|------------------------------------------------------|
| token_embedder/embedding                           | embeddings.word_embeddings.weight                    |
| encoder/position_embedder/embedding                | embeddings.position_embeddings.weight                |
| encoder/token_type_embedder/embedding              | embeddings.token_type_embeddings.weight              |
| encoder/embedding_norm/{scale,bias}                | embeddings.LayerNorm.{weight,bias}                   |
| encoder/layers_i/self_attention/{query,key,value}  | encoder.layer.i.attention.self.{query,key,value}     |
|   (kernel [d, heads, d_kv], `_bias` [heads, d_kv]) |   (Linear [heads*d_kv, d] transposed, bias)          |
| encoder/layers_i/self_attention/out(_bias)         | encoder.layer.i.attention.output.dense               |
| encoder/layers_i/post_self_attention_layer_norm    | encoder.layer.i.attention.output.LayerNorm           |
| encoder/layers_i/mlp/wi(_bias), wo(_bias)          | encoder.layer.i.intermediate.dense, .output.dense    |
| encoder/layers_i/post_mlp_layer_norm               | encoder.layer.i.output.LayerNorm                     |
| mlm/transform/{kernel,bias}                        | cls.predictions.transform.dense (no prefix)          |
| mlm/transform_norm/{scale,bias}                    | cls.predictions.transform.LayerNorm                  |
| mlm/output_bias                                    | cls.predictions.bias (the decoder's weight is the    |
|                                                    | word embedding, its bias this one: not stored)       |
| pooler/{kernel,bias}                               | pooler.dense                                         |
| classifier/{kernel,bias}                           | classifier (no prefix)                               |

A scanned stack ('encoder/layers/...') maps to the per-layer tensors (t5lite.hf.names.Stacked). Older files
(converted from the TensorFlow release) name LayerNorm parameters `gamma` / `beta` and may hold the decoder's
copies (`cls.predictions.decoder.weight` / `.bias`), the next-sentence head (`cls.seq_relationship`) and the
`position_ids` buffer: read, or left out when equal to what t5lite ties or unused by the head. Written by hand:
neither library maps BERT between the two layouts.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import numpy as np

from t5lite.hf import configs, names

# Tokenizer files of a Hugging Face BERT directory, copied along by from-hf and to-hf.
VOCAB_TXT = "vocab.txt"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_FILES = (VOCAB_TXT, TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json")


def head_of(params: Mapping[str, Any]) -> tuple[str, Optional[int]]:
  """(head, classes) of an encoder-only parameter tree: ('mlm', None), ('classification', K), ('regression', 1),
  or ('pooler', None) for a tree with a pooler and no classifier (BertModel's tensors)."""
  if "mlm" in params:
    return "mlm", None
  if "classifier" in params:
    classes = int(params["classifier"]["kernel"].shape[-1])
    return ("regression" if classes == 1 else "classification"), classes
  if "pooler" in params:
    return "pooler", None
  raise ValueError(f"an encoder-only parameter tree without a head (top-level names {sorted(params)})")


def checkpoint_prefix(checkpoint: Any) -> str:
  """'bert.' when the checkpoint's tensors are a head model's (BertForMaskedLM, ...), '' for a bare BertModel's."""
  return "" if "embeddings.word_embeddings.weight" in checkpoint else "bert."


def legacy_norm_names(checkpoint: Any, prefix: str) -> bool:
  """Whether the checkpoint names LayerNorm parameters `gamma` / `beta` (files converted from TensorFlow)."""
  return f"{prefix}embeddings.LayerNorm.gamma" in checkpoint


def _linear(name: str, out_features: int, in_features: int) -> names.Tensor:
  return names.Tensor(f"{name}.weight", (out_features, in_features), transpose=True)


def tensor_map(
  config: Any, head: str, classes: Optional[int] = None, prefix: str = "bert.", legacy: bool = False
) -> dict[str, names.Source]:
  """{t5lite parameter path: checkpoint source} of an EncoderOnlyConfig with `head` (see `head_of`; `classes` the
  classifier's outputs). `prefix`: 'bert.' or '' (BertModel); `legacy`: LayerNorm `gamma` / `beta` names.
  Raises configs.UnsupportedModelError for a config BERT cannot represent."""
  configs.check_exportable(config)
  d, ff, inner = config.d_model, config.d_ff, config.num_heads * config.d_kv
  p = prefix
  weight, bias = ("gamma", "beta") if legacy else ("weight", "bias")
  out: dict[str, names.Tensor] = {}

  def norm(mine: str, hf: str) -> None:
    out[f"{mine}/scale"] = names.Tensor(f"{hf}.{weight}", (d,))
    out[f"{mine}/bias"] = names.Tensor(f"{hf}.{bias}", (d,))

  def dense(mine: str, hf: str, out_features: int, in_features: int, kernel: str = "kernel", b: str = "bias") -> None:
    out[f"{mine}{kernel}"] = _linear(hf, out_features, in_features)
    out[f"{mine}{b}"] = names.Tensor(f"{hf}.bias", (out_features,))

  out["token_embedder/embedding"] = names.Tensor(f"{p}embeddings.word_embeddings.weight", (config.vocab_size, d))
  out["encoder/position_embedder/embedding"] = names.Tensor(
    f"{p}embeddings.position_embeddings.weight", (config.max_position_embeddings, d)
  )
  out["encoder/token_type_embedder/embedding"] = names.Tensor(
    f"{p}embeddings.token_type_embeddings.weight", (config.type_vocab_size, d)
  )
  norm("encoder/embedding_norm", f"{p}embeddings.LayerNorm")
  for i in range(config.num_layers):
    mine, hf = f"encoder/layers_{i}", f"{p}encoder.layer.{i}"
    for name in ("query", "key", "value"):
      dense(f"{mine}/self_attention/", f"{hf}.attention.self.{name}", inner, d, name, f"{name}_bias")
    dense(f"{mine}/self_attention/", f"{hf}.attention.output.dense", d, inner, "out", "out_bias")
    norm(f"{mine}/post_self_attention_layer_norm", f"{hf}.attention.output.LayerNorm")
    dense(f"{mine}/mlp/", f"{hf}.intermediate.dense", ff, d, "wi", "wi_bias")
    dense(f"{mine}/mlp/", f"{hf}.output.dense", d, ff, "wo", "wo_bias")
    norm(f"{mine}/post_mlp_layer_norm", f"{hf}.output.LayerNorm")
  if head == "mlm":
    dense("mlm/transform/", "cls.predictions.transform.dense", d, d)
    norm("mlm/transform_norm", "cls.predictions.transform.LayerNorm")
    out["mlm/output_bias"] = names.Tensor("cls.predictions.bias", (config.vocab_size,))
  elif head in ("classification", "regression", "pooler"):
    dense("pooler/", f"{p}pooler.dense", d, d)
    if head != "pooler":
      dense("classifier/", "classifier", classes or 1, d)
  else:
    raise ValueError(f"unknown encoder-only head {head!r}")
  return names._stack_scanned(out) if config.scan_layers else dict(out)  # pylint: disable=protected-access


def ignored_tensors(config: Any, head: str, prefix: str = "bert.") -> tuple[str, ...]:
  """Checkpoint tensors an import may leave unread: the position_ids buffer, the MLM decoder's tied copies (checked
  by `check_mlm_decoder`), and for the MLM head BertForPreTraining's pooler and next-sentence head."""
  out = [f"{prefix}embeddings.position_ids"]
  if head == "mlm":
    out += ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]
    out += [f"{prefix}pooler.dense.weight", f"{prefix}pooler.dense.bias"]
    out += ["cls.seq_relationship.weight", "cls.seq_relationship.bias"]
  return tuple(out)


def check_mlm_decoder(checkpoint: Any, prefix: str = "bert.") -> list[str]:
  """Checks that a stored MLM decoder is the tied one t5lite computes: `cls.predictions.decoder.weight` equal to
  the word embedding, `.decoder.bias` equal to `cls.predictions.bias`. Returns what is left out of the import
  (a pooler or next-sentence head: BertForPreTraining's), for a warning.

  Raises:
    configs.UnsupportedModelError: an untied decoder (t5lite's MLM logits are the word embedding's).
  """
  for name, tied in (
    ("cls.predictions.decoder.weight", f"{prefix}embeddings.word_embeddings.weight"),
    ("cls.predictions.decoder.bias", "cls.predictions.bias"),
  ):
    if name in checkpoint and tied in checkpoint:
      if checkpoint.shape(name) != checkpoint.shape(tied) or not np.array_equal(
        checkpoint.read(name), checkpoint.read(tied)
      ):
        raise configs.UnsupportedModelError(
          f"{checkpoint.directory!r}: {name} differs from {tied}; t5lite's MLM head ties its output to the word "
          "embedding (tie_word_embeddings), an untied decoder is not supported"
        )
  unused = [f"{prefix}pooler.dense.weight", "cls.seq_relationship.weight"]
  return [n.rsplit(".", 1)[0] for n in unused if n in checkpoint]


def vocabulary_files(directory: str) -> list[str]:
  """The tokenizer files (TOKENIZER_FILES) present in `directory`."""
  return [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(str(directory), f))]


def _vocab_txt_ids(path: str) -> dict[str, int]:
  with open(path, encoding="utf-8") as f:
    return {line.rstrip("\n"): i for i, line in enumerate(f)}


def _tokenizer_json_ids(path: str) -> dict[str, int]:
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  ids = dict((data.get("model") or {}).get("vocab") or {})
  ids.update({t["content"]: t["id"] for t in data.get("added_tokens") or [] if "content" in t and "id" in t})
  return ids


def vocabulary_ids(directory: str) -> Optional[dict[str, int]]:
  """{token: id} of the directory's vocab.txt (line numbers) or, without one, of its tokenizer.json (the
  WordPiece model's vocab and the added tokens); None when it has neither."""
  directory = str(directory)
  if os.path.isfile(os.path.join(directory, VOCAB_TXT)):
    return _vocab_txt_ids(os.path.join(directory, VOCAB_TXT))
  if os.path.isfile(os.path.join(directory, TOKENIZER_JSON)):
    return _tokenizer_json_ids(os.path.join(directory, TOKENIZER_JSON))
  return None


def vocabulary_warnings(ids: Optional[Mapping[str, int]], config: Any) -> list[str]:
  """What does not fit between a vocabulary ({token: id}) and the model: more ids than embedding rows, [PAD] not
  0, [SEP] missing or not the config's sep_id, no vocabulary at all."""
  if ids is None:
    return [
      f"no {VOCAB_TXT} or {TOKENIZER_JSON} in the directory: sep_id (which splits a pair's token types when a batch "
      f"has none) is {config.sep_id}; set EncoderOnlyConfig.sep_id to the vocabulary's [SEP]"
    ]
  out = []
  size = max(ids.values()) + 1 if ids else 0
  if size > config.vocab_size:
    out.append(f"the vocabulary has {size} ids but the model only {config.vocab_size} embedding rows")
  if ids.get("[PAD]", 0) != 0:
    out.append(f"[PAD] is id {ids['[PAD]']}, but t5lite treats id 0 as padding")
  if ids.get("[SEP]") != config.sep_id:
    out.append(f"[SEP] is id {ids.get('[SEP]')}, but the model's sep_id is {config.sep_id}")
  return out

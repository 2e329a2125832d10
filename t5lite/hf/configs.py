"""A Hugging Face `config.json` <-> a t5lite model config, for the families t5lite can import and export.

| Hugging Face (`model_type`, architecture)            | t5lite                                             |
|------------------------------------------------------|----------------------------------------------------|
| t5 / mt5, `T5ForConditionalGeneration`,              | `T5Config`: gated-GELU (`feed_forward_proj`        |
| `MT5ForConditionalGeneration` (T5 v1.1, flan-T5, mT5)| 'gated-gelu'), untied `logits_dense`               |
| t5, original T5 (`feed_forward_proj` 'relu')         | `T5Config`: mlp_activations ('relu',), tied output |
|                                                      | scaled by d_model ** -0.5 (`scale_decoder_outputs`)|
| gpt2, `GPT2LMHeadModel`                              | `DecoderOnlyConfig`: LayerNorm, biases, learned    |
|                                                      | absolute positions, GELU, tied unscaled output,    |
|                                                      | logits scaled by d_kv ** -0.5 at run time          |
| bert, `BertForMaskedLM` (`BertForPreTraining`),      | `EncoderOnlyConfig` (post-LayerNorm, token types), |
| `BertForSequenceClassification`, `BertModel`         | with the head `bert_head` names                    |

The field meanings are transformers' (`T5Config`, `GPT2Config`, `BertConfig`): `feed_forward_proj` is 'ACT' or
'gated-ACT' ('gated-gelu' means the tanh approximation, 'gelu_new'); T5's output is tied and scaled unless
`tie_word_embeddings` is false (older files) or `scale_decoder_outputs` is false (transformers 5 writes both);
GPT-2's inner width defaults to 4 * n_embd; BERT's `hidden_act` 'gelu' is the erf GELU. A BERT config also names
the head (`bert_head`); the BERT tensor names, which depend on it, are t5lite.hf.bert's. Runtime fields of the
t5lite config (dtype, scan_layers, remat_policy, attention) are the caller's `overrides`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from t5lite.models import decoder_only, encoder_only, t5

# Architecture name -> t5lite family. A config with none of these is refused.
ARCHITECTURES = {
  "T5ForConditionalGeneration": "t5",
  "T5WithLMHeadModel": "t5",  # the published original T5 configs' name for it
  "MT5ForConditionalGeneration": "t5",
  "GPT2LMHeadModel": "gpt2",
  "BertForMaskedLM": "bert",
  "BertForPreTraining": "bert",  # imported as BertForMaskedLM: the next-sentence head and the pooler are left out
  "BertForSequenceClassification": "bert",
  "BertModel": "bert",
}
MODEL_TYPES = {"t5": "t5", "mt5": "t5", "gpt2": "gpt2", "bert": "bert"}

# transformers activation names (ACT2FN keys) <-> t5lite mlp_activations entries.
_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact", "relu": "relu", "silu": "silu"}
_ACTIVATIONS_BACK = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu"}


class UnsupportedModelError(ValueError):
  """A config.json of an architecture, or with an option, t5lite cannot represent."""


def family(hf_config: Mapping[str, Any], where: str = "config.json") -> str:
  """'t5', 'gpt2' or 'bert' for a Hugging Face config, from `architectures` (or `model_type` when there is none).

  Raises:
    UnsupportedModelError: neither names a supported family (the message lists what was found and what is
      supported).
  """
  architectures = list(hf_config.get("architectures") or [])
  model_type = hf_config.get("model_type")
  known = [ARCHITECTURES[a] for a in architectures if a in ARCHITECTURES]
  if known:
    return known[0]
  if not architectures and model_type in MODEL_TYPES:
    return MODEL_TYPES[model_type]
  raise UnsupportedModelError(
    f"{where}: architectures={architectures} (model_type={model_type!r}) is not a model t5lite can import; "
    f"supported architectures: {sorted(ARCHITECTURES)} (model_type {sorted(MODEL_TYPES)})."
  )


def _activation(name: str, where: str) -> str:
  if name not in _ACTIVATIONS:
    raise UnsupportedModelError(f"{where}: activation {name!r} is not supported; supported: {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def t5_mlp_activations(feed_forward_proj: str, where: str = "config.json") -> tuple[str, ...]:
  """T5's `feed_forward_proj` ('relu', 'gated-gelu', 'gated-silu', ...) as t5lite `mlp_activations`."""
  if feed_forward_proj == "gated-gelu":  # transformers' historical meaning: the tanh approximation
    return ("gelu", "linear")
  parts = str(feed_forward_proj).split("-")
  if len(parts) == 2 and parts[0] == "gated":
    return (_activation(parts[1], where), "linear")
  if len(parts) == 1:
    return (_activation(parts[0], where),)
  raise UnsupportedModelError(f"{where}: feed_forward_proj={feed_forward_proj!r} is neither 'ACT' nor 'gated-ACT'")


def t5_scales_tied_output(hf_config: Mapping[str, Any]) -> bool:
  """Whether a T5 config multiplies the decoder output by d_model ** -0.5 before the output projection."""
  if hf_config.get("model_type") == "mt5":  # mT5 never scales (transformers' MT5 has no such option)
    return False
  if "scale_decoder_outputs" in hf_config:
    return bool(hf_config["scale_decoder_outputs"])
  return hf_config.get("tie_word_embeddings", True) is not False


def to_t5lite(
  hf_config: Mapping[str, Any], *, tied_output: bool, overrides: Optional[Mapping[str, Any]] = None
) -> t5.T5Config | decoder_only.DecoderOnlyConfig | encoder_only.EncoderOnlyConfig:
  """The t5lite config of a Hugging Face config.

  `tied_output`: whether the checkpoint's output projection is the token embedding (no separate
  `lm_head.weight`, or one equal to it; unused for BERT, see `bert_to_t5lite`). `overrides`: t5lite fields set on
  top (dtype, scan_layers, ...).

  Raises:
    UnsupportedModelError: an unknown architecture, activation or option t5lite has no equivalent for (T5
      with an untied but scaled output; GPT-2 with scale_attn_by_inverse_layer_idx, cross-attention or a
      width not divisible by the head count).
    ValueError: a field value the t5lite config refuses.
  """
  kind = family(hf_config)
  overrides = dict(overrides or {})
  c = hf_config
  if kind == "bert":
    return bert_to_t5lite(c, overrides)
  if kind == "t5":
    scaled = t5_scales_tied_output(c)
    if not tied_output and scaled:
      raise UnsupportedModelError(
        "config.json: an untied lm_head.weight with the decoder output scaled by d_model ** -0.5 "
        "(scale_decoder_outputs / tie_word_embeddings true) has no t5lite equivalent; t5lite scales only a tied "
        "output (original T5) and leaves an untied one unscaled (T5 v1.1)."
      )
    fields = dict(
      vocab_size=c["vocab_size"],
      d_model=c["d_model"],
      num_heads=c["num_heads"],
      d_kv=c["d_kv"],
      d_ff=c["d_ff"],
      num_encoder_layers=c["num_layers"],
      num_decoder_layers=c.get("num_decoder_layers") or c["num_layers"],
      relative_attention_num_buckets=c.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=c.get("relative_attention_max_distance", 128),
      dropout_rate=c.get("dropout_rate", 0.1),
      layer_norm_epsilon=c.get("layer_norm_epsilon", 1e-6),
      mlp_activations=t5_mlp_activations(c.get("feed_forward_proj", "relu")),
      logits_via_embedding=tied_output,
      scale_tied_logits=scaled,
    )
    return t5.T5Config(**{**fields, **overrides})
  if c.get("scale_attn_by_inverse_layer_idx"):
    raise UnsupportedModelError("config.json: scale_attn_by_inverse_layer_idx=true (a GPT-2 option) is not supported")
  if c.get("add_cross_attention"):
    raise UnsupportedModelError("config.json: add_cross_attention=true (a GPT-2 option) is not supported")
  d_model, heads = c["n_embd"], c["n_head"]
  if d_model % heads:
    raise UnsupportedModelError(f"config.json: n_embd={d_model} is not divisible by n_head={heads}")
  if not tied_output:
    raise UnsupportedModelError("GPT-2 with an lm_head.weight different from transformer.wte.weight is not supported")
  fields = dict(
    vocab_size=c["vocab_size"],
    d_model=d_model,
    num_heads=heads,
    d_kv=d_model // heads,
    d_ff=c.get("n_inner") or 4 * d_model,
    num_layers=c["n_layer"],
    dropout_rate=c.get("resid_pdrop", 0.1),
    layer_norm_epsilon=c.get("layer_norm_epsilon", 1e-5),
    mlp_activations=(_activation(c.get("activation_function", "gelu_new"), "config.json"),),
    use_bias=True,
    norm_type="layernorm",
    position_embedding="absolute",
    max_position_embeddings=c.get("n_positions", 1024),
    scale_attention_logits=bool(c.get("scale_attn_weights", True)),
    logits_via_embedding=True,
    scale_tied_logits=False,
  )
  return decoder_only.DecoderOnlyConfig(**{**fields, **overrides})


# BertForSequenceClassification's problem_type -> the t5lite head ('multi_label_classification' has none).
_PROBLEM_TYPES = {None: None, "single_label_classification": "classification", "regression": "regression"}
# t5lite's encoder-only head -> the architecture it is exported as; 'pooler' is BertModel (encoder and pooler).
BERT_ARCHITECTURES = {
  "mlm": "BertForMaskedLM",
  "classification": "BertForSequenceClassification",
  "regression": "BertForSequenceClassification",
  "pooler": "BertModel",
}


def bert_num_labels(hf_config: Mapping[str, Any]) -> int:
  """BertConfig's num_labels: the length of `id2label` when the file has one (transformers derives it so), else
  `num_labels`, else 2."""
  if hf_config.get("id2label"):
    return len(hf_config["id2label"])
  return int(hf_config.get("num_labels", 2))


def bert_head(hf_config: Mapping[str, Any], where: str = "config.json") -> tuple[str, int]:
  """(t5lite head, num_classes) of a BERT config.json.

  BertForMaskedLM and BertForPreTraining (and a file with only model_type 'bert'): ('mlm', 2);
  BertForSequenceClassification: ('regression', 2) when problem_type is 'regression' or num_labels is 1, else
  ('classification', num_labels); BertModel: ('pooler', num_labels), read into a classification model whose
  pooler is the checkpoint's and whose classifier is new (t5lite.convert.from_hf).

  Raises:
    UnsupportedModelError: problem_type 'multi_label_classification' (t5lite's classifier picks one class).
  """
  architectures = [a for a in hf_config.get("architectures") or [] if ARCHITECTURES.get(a) == "bert"]
  arch = architectures[0] if architectures else "BertForMaskedLM"
  labels = bert_num_labels(hf_config)
  if arch == "BertModel":
    return "pooler", max(labels, 2)
  if arch != "BertForSequenceClassification":
    return "mlm", 2
  problem = hf_config.get("problem_type")
  if problem not in _PROBLEM_TYPES:
    raise UnsupportedModelError(
      f"{where}: problem_type={problem!r} is not supported; t5lite has single-label classification and regression "
      "heads (problem_type 'single_label_classification' or 'regression')"
    )
  if _PROBLEM_TYPES[problem] == "regression" or labels == 1:
    return "regression", 2
  return "classification", labels


def bert_dropout_warning(hf_config: Mapping[str, Any]) -> Optional[str]:
  """A warning when hidden_dropout_prob and attention_probs_dropout_prob differ (t5lite has one dropout_rate for
  both, set to hidden_dropout_prob), else None."""
  hidden, attn = hf_config.get("hidden_dropout_prob", 0.1), hf_config.get("attention_probs_dropout_prob", 0.1)
  if hidden == attn:
    return None
  return (
    f"config.json: hidden_dropout_prob={hidden} and attention_probs_dropout_prob={attn} differ; t5lite has one "
    f"dropout_rate for both and uses hidden_dropout_prob ({hidden}) (set --dropout_rate to choose; inference is "
    "unaffected)"
  )


def bert_to_t5lite(hf_config: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None) -> Any:
  """The EncoderOnlyConfig of a BertConfig (see `to_t5lite`). `sep_token_id`, when the file has one, is sep_id.

  Raises:
    UnsupportedModelError: naming the field and its value, for what t5lite's encoder cannot express:
      position_embedding_type other than 'absolute', is_decoder or add_cross_attention true, pad_token_id other
      than 0 (t5lite's padding id), hidden_size not divisible by num_attention_heads, an unsupported hidden_act.
  """
  c = hf_config
  refused = [
    ("position_embedding_type", c.get("position_embedding_type", "absolute"), "absolute"),
    ("is_decoder", bool(c.get("is_decoder", False)), False),
    ("add_cross_attention", bool(c.get("add_cross_attention", False)), False),
  ]
  for field, value, needed in refused:
    if value != needed:
      raise UnsupportedModelError(
        f"config.json: {field}={value!r} is not supported (t5lite's encoder-only model needs {needed!r})"
      )
  if c.get("pad_token_id", 0) not in (0, None):
    raise UnsupportedModelError(
      f"config.json: pad_token_id={c['pad_token_id']!r} is not supported: t5lite's padding id is 0 (masks and "
      "losses treat id 0 as padding)"
    )
  d_model, heads = c["hidden_size"], c["num_attention_heads"]
  if d_model % heads:
    raise UnsupportedModelError(f"config.json: hidden_size={d_model} is not divisible by num_attention_heads={heads}")
  fields = dict(
    vocab_size=c["vocab_size"],
    d_model=d_model,
    num_heads=heads,
    d_kv=d_model // heads,
    d_ff=c["intermediate_size"],
    num_layers=c["num_hidden_layers"],
    max_position_embeddings=c.get("max_position_embeddings", 512),
    type_vocab_size=c.get("type_vocab_size", 2),
    layer_norm_epsilon=c.get("layer_norm_eps", 1e-12),
    mlp_activations=(_activation(c.get("hidden_act", "gelu"), "config.json: hidden_act"),),
    dropout_rate=c.get("hidden_dropout_prob", 0.1),
    initializer_range=c.get("initializer_range", 0.02),
    classifier_dropout_rate=c.get("classifier_dropout"),
  )
  if c.get("sep_token_id") is not None:
    fields["sep_id"] = c["sep_token_id"]
  return encoder_only.EncoderOnlyConfig(**{**fields, **dict(overrides or {})})


def bert_from_t5lite(config: Any, head: str = "mlm", num_classes: int = 2) -> dict[str, Any]:
  """The BertConfig `config.json` of an EncoderOnlyConfig with `head` (a key of BERT_ARCHITECTURES; `num_classes`
  for 'classification'). Raises UnsupportedModelError as `check_exportable`, ValueError for another head."""
  check_exportable(config)
  if head not in BERT_ARCHITECTURES:
    raise ValueError(f"head={head!r} for a BERT export; valid: {sorted(BERT_ARCHITECTURES)}")
  out = {
    "architectures": [BERT_ARCHITECTURES[head]],
    "model_type": "bert",
    "vocab_size": config.vocab_size,
    "hidden_size": config.d_model,
    "num_hidden_layers": config.num_layers,
    "num_attention_heads": config.num_heads,
    "intermediate_size": config.d_ff,
    "hidden_act": _ACTIVATIONS_BACK[config.mlp_activations[0]],
    "hidden_dropout_prob": config.dropout_rate,
    "attention_probs_dropout_prob": config.dropout_rate,
    "max_position_embeddings": config.max_position_embeddings,
    "type_vocab_size": config.type_vocab_size,
    "initializer_range": config.initializer_range,
    "layer_norm_eps": config.layer_norm_epsilon,
    "classifier_dropout": config.classifier_dropout_rate,
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "sep_token_id": config.sep_id,
  }
  if head in ("classification", "regression"):
    labels = num_classes if head == "classification" else 1
    out["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
    out["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
    out["problem_type"] = "single_label_classification" if head == "classification" else "regression"
  return out


def _differences(config: Any, wanted: Mapping[str, Any]) -> list[str]:
  return [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(config, k) != v]


def check_exportable(config: Any) -> str:
  """The Hugging Face family ('t5', 'gpt2' or 'bert') a t5lite config can be written as.

  Raises:
    UnsupportedModelError: a config no supported Hugging Face architecture represents, naming the fields
      that differ (e.g. the T5-style decoder-only model, whose relative position bias GPT-2 lacks).
  """
  if isinstance(config, t5.T5Config):
    wrong = _differences(
      config,
      dict(
        norm_type="rmsnorm",
        norm_placement="pre",
        position_embedding="relative",
        use_bias=False,
        scale_attention_logits=False,
        num_experts=0,
      ),
    )
    acts = tuple(config.mlp_activations)
    if not (len(acts) == 1 or (len(acts) == 2 and acts[1] == "linear")) or acts[0] not in _ACTIVATIONS_BACK:
      wrong.append(f"mlp_activations={acts} (needs (ACT,) or (ACT, 'linear'), ACT in {sorted(_ACTIVATIONS_BACK)})")
    elif acts == ("gelu_exact", "linear"):  # 'gated-gelu' means the tanh approximation in transformers
      wrong.append("mlp_activations=('gelu_exact', 'linear') (Hugging Face T5's 'gated-gelu' is the tanh GELU)")
    if wrong:
      raise UnsupportedModelError(f"this T5 model has no Hugging Face T5 equivalent: {'; '.join(wrong)}")
    return "t5"
  if isinstance(config, decoder_only.DecoderOnlyConfig):
    wanted = dict(
      norm_type="layernorm",
      norm_placement="pre",
      position_embedding="absolute",
      use_bias=True,
      logits_via_embedding=True,
      num_experts=0,
    )
    if config.logits_via_embedding:
      wanted["scale_tied_logits"] = False
    wrong = _differences(config, wanted)
    if config.d_kv * config.num_heads != config.d_model:
      wrong.append(f"d_kv * num_heads = {config.d_kv * config.num_heads} != d_model = {config.d_model}")
    acts = tuple(config.mlp_activations)
    if len(acts) != 1 or acts[0] not in _ACTIVATIONS_BACK:
      wrong.append(f"mlp_activations={acts} (needs one of {sorted((a,) for a in _ACTIVATIONS_BACK)})")
    if wrong:
      raise UnsupportedModelError(
        "this decoder-only model has no Hugging Face equivalent (GPT-2 is the supported one): " + "; ".join(wrong)
      )
    return "gpt2"
  if isinstance(config, encoder_only.EncoderOnlyConfig):
    wanted = dict(
      norm_type="layernorm", norm_placement="post", use_bias=True, scale_attention_logits=True, num_experts=0
    )
    wrong = _differences(config, wanted)
    if config.d_kv * config.num_heads != config.d_model:
      wrong.append(f"d_kv * num_heads = {config.d_kv * config.num_heads} != d_model = {config.d_model}")
    acts = tuple(config.mlp_activations)
    if len(acts) != 1 or acts[0] not in _ACTIVATIONS_BACK:
      wrong.append(f"mlp_activations={acts} (needs one of {sorted((a,) for a in _ACTIVATIONS_BACK)})")
    if config.type_vocab_size < 1:
      wrong.append("type_vocab_size=0 (BERT has at least one token type row)")
    if wrong:
      raise UnsupportedModelError("this encoder-only model has no Hugging Face BERT equivalent: " + "; ".join(wrong))
    return "bert"
  raise UnsupportedModelError(f"{type(config).__name__} models cannot be exported to Hugging Face")


def from_t5lite(
  config: Any, model_type: Optional[str] = None, *, head: str = "mlm", num_classes: int = 2
) -> dict[str, Any]:
  """The `config.json` contents of a t5lite config (see `check_exportable`).

  `model_type`: 't5' (default for T5) or 'mt5' (same architecture, MT5ForConditionalGeneration); GPT-2
  configs are always 'gpt2', encoder-only ones 'bert' (`head` and `num_classes`: `bert_from_t5lite`).
  Raises UnsupportedModelError as `check_exportable`, ValueError for another model_type.
  """
  kind = check_exportable(config)
  if kind == "bert":
    if model_type not in (None, "bert"):
      raise ValueError(f"model_type={model_type!r} for an encoder-only model; valid: 'bert'")
    return bert_from_t5lite(config, head, num_classes)
  if kind == "t5":
    model_type = model_type or "t5"
    if model_type not in ("t5", "mt5"):
      raise ValueError(f"model_type={model_type!r} for a T5 model; valid: 't5', 'mt5'")
    acts = tuple(config.mlp_activations)
    act = _ACTIVATIONS_BACK[acts[0]]
    if acts == ("gelu", "linear"):
      proj = "gated-gelu"
    else:
      proj = f"gated-{act}" if len(acts) == 2 else act
    tied = bool(config.logits_via_embedding)
    scaled = tied and bool(config.scale_tied_logits)
    if scaled and model_type == "mt5":
      raise ValueError("model_type='mt5' never scales a tied output; use model_type='t5' for this model")
    return {
      "architectures": ["MT5ForConditionalGeneration" if model_type == "mt5" else "T5ForConditionalGeneration"],
      "model_type": model_type,
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "d_kv": config.d_kv,
      "d_ff": config.d_ff,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "feed_forward_proj": proj,
      "is_encoder_decoder": True,
      "tie_word_embeddings": tied,
      "scale_decoder_outputs": scaled,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "use_cache": True,
    }
  if model_type not in (None, "gpt2"):
    raise ValueError(f"model_type={model_type!r} for a decoder-only model; valid: 'gpt2'")
  return {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "vocab_size": config.vocab_size,
    "n_embd": config.d_model,
    "n_head": config.num_heads,
    "n_layer": config.num_layers,
    "n_inner": config.d_ff,
    "n_positions": config.max_position_embeddings,
    "activation_function": _ACTIVATIONS_BACK[config.mlp_activations[0]],
    "layer_norm_epsilon": config.layer_norm_epsilon,
    "resid_pdrop": config.dropout_rate,
    "embd_pdrop": config.dropout_rate,
    "attn_pdrop": config.dropout_rate,
    "scale_attn_weights": bool(config.scale_attention_logits),
    "tie_word_embeddings": True,
    "use_cache": True,
  }


# Fields that decide what a checkpoint's numbers mean (not dropout, not how the model runs).
ARCHITECTURE_FIELDS = (
  "vocab_size",
  "d_model",
  "num_heads",
  "d_kv",
  "d_ff",
  "num_encoder_layers",
  "num_decoder_layers",
  "num_layers",
  "relative_attention_num_buckets",
  "relative_attention_max_distance",
  "layer_norm_epsilon",
  "mlp_activations",
  "use_bias",
  "norm_type",
  "position_embedding",
  "max_position_embeddings",
  "scale_attention_logits",
  "logits_via_embedding",
  "scale_tied_logits",
  "norm_placement",
  "type_vocab_size",
)


def check_same_architecture(checkpoint_config: Any, model_config: Any, where: str) -> None:
  """Raises UnsupportedModelError naming every architecture field (ARCHITECTURE_FIELDS) in which the model a run
  builds differs from the checkpoint's (from its config.json), so weights are never read into a model that
  computes something else with them (a tied output where the checkpoint has its own lm_head, another
  activation, another output scaling)."""
  if type(checkpoint_config) is not type(model_config):
    raise UnsupportedModelError(
      f"{where} holds a {type(checkpoint_config).__name__} model; this run builds a {type(model_config).__name__}"
    )
  wrong = [
    f"{f}: checkpoint {getattr(checkpoint_config, f)!r}, this run {getattr(model_config, f)!r}"
    for f in ARCHITECTURE_FIELDS
    if hasattr(model_config, f) and getattr(checkpoint_config, f) != getattr(model_config, f)
  ]
  if model_config.logits_via_embedding is False:
    wrong = [w for w in wrong if not w.startswith("scale_tied_logits")]  # unused without tied logits
  if model_config.position_embedding == "absolute":
    wrong = [w for w in wrong if not w.startswith("relative_attention")]  # unused with absolute positions
  else:
    wrong = [w for w in wrong if not w.startswith("max_position_embeddings")]
  if wrong:
    raise UnsupportedModelError(
      f"{where}: this run's model differs from the checkpoint's config.json in {'; '.join(wrong)}. Use the model "
      "gin file `t5lite convert from-hf` writes (model.gin), or set these fields to the checkpoint's values."
    )


def describe(config: Any) -> dict[str, Any]:
  """The config's fields as a JSON-able dict (for the conversion record)."""
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}

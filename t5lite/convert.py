"""`t5lite convert from-hf` / `to-hf`: a Hugging Face model directory <-> a t5lite checkpoint directory.

from-hf writes a directory laid out like a training run, so that everything that takes a run accepts it:

    OUTPUT/checkpoints/0/{params,meta}   orbax parameters (float32) and their meta (shapes, vocabulary size)
    OUTPUT/model.gin                     the model (include it in a fine-tuning gin file)
    OUTPUT/config.gin                    model.gin plus task settings, for `t5lite infer` and inference.load
    OUTPUT/spiece.model                  the checkpoint's SentencePiece model, when the directory has one
    OUTPUT/vocab.txt, tokenizer.json     a BERT directory's WordPiece vocabulary files, when it has them
    OUTPUT/conversion.json               where it came from, and the t5lite config

`INITIAL_CHECKPOINT_PATH=OUTPUT` fine-tunes from it. to-hf reads a run directory (its config.gin and a
checkpoint) and writes `config.json` and `model.safetensors` that transformers' `from_pretrained` loads.
Both write into a temporary sibling directory and rename it into place at the end, so an interrupted
conversion leaves no half-written output; an existing non-empty output directory is refused, never
overwritten. The tensor mapping is t5lite.hf; this module is the directories around it.

BERT (t5lite.hf.bert): BertForMaskedLM (and BertForPreTraining, without its next-sentence head) becomes an
EncoderOnlyModel with the 'mlm' head; BertForSequenceClassification one with the 'classification' head
(num_labels classes) or 'regression' (num_labels 1); a bare BertModel (encoder and pooler) one with the
'classification' head whose pooler is the checkpoint's and whose classifier is new (initialised as training
initialises it, seed 0): ready to fine-tune, and exported back as BertModel (conversion.json remembers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax

from t5lite import checkpointing, inference
from t5lite.hf import bert, configs, files, weights
from t5lite.models import encoder_model, encoder_only, lora, model as model_lib, params as params_lib, t5

# Fields written to model.gin: the architecture and the checkpoint's dropout (runtime fields keep
# their defaults unless overridden).
_ARCH_FIELDS = (
  *configs.ARCHITECTURE_FIELDS,
  "dropout_rate",
  "sep_id",
  "initializer_range",
  "classifier_dropout_rate",
)


def check_output_dir(output: str, what: str = "--output") -> str:
  """The absolute output path; raises FileExistsError when it exists and is not an empty directory."""
  output = os.path.abspath(os.path.expanduser(os.fspath(output)))
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise FileExistsError(f"{what} {output!r} exists and is not empty; choose a new directory (nothing is overwritten)")
  return output


def staging_dir(output: str) -> str:
  """A new temporary sibling of `output` to write into (then `publish` it)."""
  staging = f"{output}.partial-{os.getpid()}-{int(time.time())}"
  os.makedirs(staging)
  return staging


@contextlib.contextmanager
def staged(output: str) -> Iterator[str]:
  """Yields a new temporary sibling of `output` to write into; renames it to `output` when the block
  ends normally, removes it when the block raises (an interrupted write leaves nothing half-written)."""
  staging = staging_dir(output)
  try:
    yield staging
    publish(staging, output)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def publish(staging: str, output: str) -> None:
  """Renames the finished `staging` directory to `output` (which is absent or empty)."""
  if os.path.isdir(output):
    os.rmdir(output)  # empty (checked before the work started)
  os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
  os.rename(staging, output)


def model_for(config: Any, head: str = "mlm", num_classes: int = 2) -> model_lib.BaseModel:
  """The t5lite model of a config (EncoderDecoderModel for T5, EncoderOnlyModel with `head` and `num_classes`
  for an encoder-only config ('pooler', BertModel's, is 'classification'), DecoderOnlyModel otherwise)."""
  if isinstance(config, t5.T5Config):
    return model_lib.EncoderDecoderModel(config=config)
  if isinstance(config, encoder_only.EncoderOnlyConfig):
    head = "classification" if head == "pooler" else head
    return encoder_model.EncoderOnlyModel(config=config, head=head, num_classes=num_classes)
  return model_lib.DecoderOnlyModel(config=config)


def _lengths(model: model_lib.BaseModel, lengths: Optional[Mapping[str, int]] = None) -> dict[str, int]:
  """TASK_FEATURE_LENGTHS for a model: `lengths`, else the family's default (T5: inputs 512 / targets 128;
  encoder-only: inputs up to 512 within the position table, targets the same for MLM, 1 otherwise; else
  targets 512)."""
  if lengths:
    return dict(lengths)
  if isinstance(model, model_lib.EncoderDecoderModel):
    return {"inputs": 512, "targets": 128}
  if isinstance(model, encoder_model.EncoderOnlyModel):
    length = min(512, model.config.max_position_embeddings)
    return {"inputs": length, "targets": length if model.head == "mlm" else 1}
  return {"targets": 512}


def abstract_params(model: model_lib.BaseModel, placed: bool = False) -> Any:
  """The model's parameters as unboxed ShapeDtypeStructs: without shardings, or (`placed`) on this
  process's first device, the target a restore needs whatever mesh the checkpoint was saved from."""
  lengths = {"targets": 8} if isinstance(model, model_lib.DecoderOnlyModel) else {"inputs": 8, "targets": 8}
  abstract = params_lib.strip_boxes(model.abstract_params(model.input_shapes(1, lengths)))
  if not placed:
    return abstract
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)


def _gin_value(value: Any) -> str:
  if isinstance(value, tuple):
    return "(" + ", ".join(_gin_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value)


def model_gin(config: Any, source: str = "", head: str = "mlm", num_classes: int = 2) -> str:
  """A gin file that builds `config`'s model (MODEL), like gin/models/*/*.gin (an encoder-only model with
  `head` and `num_classes`, as gin/models/bert/*.gin)."""
  model_module = "model"
  if isinstance(config, t5.T5Config):
    module, cls, model_cls = "t5", "T5Config", "EncoderDecoderModel"
  elif isinstance(config, encoder_only.EncoderOnlyConfig):
    module, cls, model_cls, model_module = "encoder_only", "EncoderOnlyConfig", "EncoderOnlyModel", "encoder_model"
  else:
    module, cls, model_cls = "decoder_only", "DecoderOnlyConfig", "DecoderOnlyModel"
  defaults = type(config)()
  lines = [f"# {source}" if source else "# Converted model", "from __gin__ import dynamic_registration", ""]
  lines += [f"from t5lite.models import {module}", "", f"{module}.{cls}:"]
  for field in _ARCH_FIELDS:
    if hasattr(config, field):
      lines.append(f"  {field} = {_gin_value(getattr(config, field))}")
  for field in ("dtype", "scan_layers", "remat_policy", "attention"):
    if getattr(config, field) != getattr(defaults, field):
      lines.append(f"  {field} = {_gin_value(getattr(config, field))}")
  lines += ["", f"from t5lite.models import {model_module}", "", f"MODEL = @{model_module}.{model_cls}()"]
  lines.append(f"{model_module}.{model_cls}.config = @{module}.{cls}()")
  if model_module == "encoder_model":
    lines.append(f"{model_module}.{model_cls}.head = {('classification' if head == 'pooler' else head)!r}")
    if head in ("classification", "pooler"):
      lines.append(f"{model_module}.{model_cls}.num_classes = {num_classes}")
  return "\n".join(lines) + "\n"


def save_checkpoint(run_dir: str, params: Any, meta: Mapping[str, Any], step: int = 0) -> None:
  """Writes `params` (orbax) and `meta` (JSON) as RUN_DIR/checkpoints/STEP, as a training run would."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  step_dir = os.path.join(run_dir, "checkpoints", str(step))
  os.makedirs(step_dir)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(step_dir, "params"), params)
  ocp.Checkpointer(ocp.JsonCheckpointHandler()).save(os.path.join(step_dir, "meta"), dict(meta))


def _import(
  checkpoint: files.Checkpoint, hf_config: Mapping[str, Any], family: str, overrides: Optional[Mapping[str, Any]]
) -> tuple[Any, str, int, Any, list[str]]:
  """(config, head, num_classes, params, warnings) of a Hugging Face checkpoint (head 'mlm' and 2 for T5 and
  GPT-2, where they mean nothing). A BERT model takes sep_id from the directory's vocabulary (unless
  overridden); a BertModel gets a new classifier next to its pooler."""
  config = configs.to_t5lite(hf_config, tied_output=weights.output_is_tied(checkpoint, family), overrides=overrides)
  head, num_classes, warnings = "mlm", 2, []
  if family == "bert":
    head, num_classes = configs.bert_head(hf_config)
    ids = bert.vocabulary_ids(checkpoint.directory)
    if ids and "[SEP]" in ids and "sep_id" not in (overrides or {}) and ids["[SEP]"] < config.vocab_size:
      config = dataclasses.replace(config, sep_id=ids["[SEP]"])
    warnings += [w for w in [configs.bert_dropout_warning(hf_config)] if w]
    warnings += bert.vocabulary_warnings(ids, config)
    if head == "mlm":
      left_out = bert.check_mlm_decoder(checkpoint, bert.checkpoint_prefix(checkpoint))
      if left_out:
        warnings.append(f"left out (the MLM head has no place for them): {left_out}")
  model = model_for(config, head, num_classes)
  abstract = abstract_params(model)
  if head == "pooler":
    params = weights.import_params(checkpoint, config, {k: v for k, v in abstract.items() if k != "classifier"})
    shapes = model.input_shapes(1, {"inputs": 8, "targets": 1})
    params["classifier"] = model.init_params(
      jax.random.key(0), shapes, select=lambda t: {"classifier": t["classifier"]}
    )["classifier"]
    warnings.append(
      f"BertModel has no classifier: the model is a {num_classes}-class classifier whose classifier is new "
      "(fine-tune it; another num_classes makes a new one of that size)"
    )
  else:
    params = weights.import_params(checkpoint, config, abstract)
  return config, head, num_classes, params, warnings


def from_hf(
  hf_dir: str,
  output: str,
  *,
  overrides: Optional[Mapping[str, Any]] = None,
  task_feature_lengths: Optional[Mapping[str, int]] = None,
) -> dict[str, Any]:
  """Converts a local Hugging Face directory into a t5lite checkpoint directory (see module doc).

  overrides: t5lite config fields on top of the converted ones (dtype, scan_layers, dropout_rate, ...).
  task_feature_lengths: written into config.gin (default inputs 512 / targets 128 for T5, targets 512 for GPT-2,
  inputs 512 (at most the position table) and targets the same (MLM) or 1 for BERT).
  Returns {'output', 'family', 'config', 'head', 'vocabulary_size', 'vocabulary_files', 'seconds', 'bytes_read',
  'warnings'} (warnings: a spiece.model with more ids than the model has rows; for BERT, dropout rates that
  differ, a vocabulary that does not fit, a new classifier, tensors left out). 'head' is the encoder-only head
  (None for the other families); 'vocabulary_files' the BERT tokenizer files copied.

  Raises:
    FileNotFoundError: no config.json, no safetensors weights (a pytorch_model.bin is named with how to
      convert it), a missing shard.
    FileExistsError: `output` exists and is not empty (checked first).
    configs.UnsupportedModelError: an architecture or option t5lite cannot represent (listing the supported,
      or naming the field and its value).
    ValueError: a tensor of another shape than config.json implies (naming both), a missing or unexpected
      tensor.
  """
  start = time.perf_counter()
  output = check_output_dir(output)
  hf_dir = os.path.abspath(os.path.expanduser(os.fspath(hf_dir)))
  hf_config = files.read_config(hf_dir)
  family = configs.family(hf_config, where=os.path.join(hf_dir, files.CONFIG))
  with files.Checkpoint(hf_dir) as checkpoint:
    config, head, num_classes, params, warnings = _import(checkpoint, hf_config, family, overrides)
    bytes_read = checkpoint.bytes_read
  model = model_for(config, head, num_classes)
  spiece = os.path.join(hf_dir, files.SPIECE)
  vocab_size = files.spiece_vocabulary_size(hf_dir)
  if vocab_size is not None and vocab_size > config.vocab_size:
    warnings.append(
      f"{files.SPIECE} gives {vocab_size} ids (its pieces + {files.SENTINELS} sentinels) but the model has only "
      f"{config.vocab_size} embedding rows: the vocabulary does not fit this checkpoint, and training with it "
      "will be refused"
    )
  vocab_files = bert.vocabulary_files(hf_dir) if family == "bert" else []
  lengths = _lengths(model, task_feature_lengths)
  with staged(output) as staging:
    meta = {
      "step": 0,
      "param_shapes": checkpointing.param_shapes(params),
      "model": type(model).__name__,
      "source": {"hf_dir": os.path.abspath(hf_dir), "model_type": hf_config.get("model_type")},
    }
    if vocab_size is not None:
      meta["vocabulary_size"] = vocab_size
    save_checkpoint(staging, params, meta)
    gin_text = model_gin(
      config, f"Converted from {os.path.abspath(hf_dir)} by `t5lite convert from-hf`.", head, num_classes
    )
    with open(os.path.join(staging, "model.gin"), "w", encoding="utf-8") as f:
      f.write(gin_text)
    run_lines = [
      gin_text,
      f"MODEL_DIR = {output!r}  # where `t5lite infer` / `eval` with this file find the checkpoint",
      "MIXTURE_OR_TASK_NAME = None",
      f"TASK_FEATURE_LENGTHS = {lengths!r}",
    ]
    if vocab_size is not None:
      shutil.copyfile(spiece, os.path.join(staging, files.SPIECE))
      run_lines.append(f"VOCABULARY_MODEL = {os.path.join(output, files.SPIECE)!r}")
    for name in vocab_files:
      shutil.copyfile(os.path.join(hf_dir, name), os.path.join(staging, name))
    if vocab_files:
      run_lines.append(f"# WordPiece vocabulary: {os.path.join(output, vocab_files[0])}")
    with open(os.path.join(staging, "config.gin"), "w", encoding="utf-8") as f:
      f.write("\n".join(run_lines) + "\n")
    record = {
      "source": os.path.abspath(hf_dir),
      "family": family,
      "hf_config": hf_config,
      "config": configs.describe(config),
      "vocabulary_size": vocab_size,
    }
    if family == "bert":
      record.update(head=head, num_classes=num_classes, vocabulary_files=vocab_files, warnings=warnings)
    with open(os.path.join(staging, "conversion.json"), "w", encoding="utf-8") as f:
      json.dump(record, f, indent=2, sort_keys=True, default=str)
  return {
    "output": output,
    "family": family,
    "config": config,
    "head": head if family == "bert" else None,
    "vocabulary_size": vocab_size,
    "vocabulary_files": vocab_files,
    "seconds": time.perf_counter() - start,
    "bytes_read": bytes_read,
    "warnings": warnings,
  }


# config.json keys a conversion carries back to Hugging Face: token ids and generation defaults, which t5lite's
# config does not hold (the architecture comes from the t5lite config itself).
_CARRIED = (
  "bos_token_id",
  "eos_token_id",
  "pad_token_id",
  "decoder_start_token_id",
  "task_specific_params",
  "n_ctx",
)


def _conversion_record(run_dir: str) -> dict[str, Any]:
  """The source config.json of a `from-hf` directory (its conversion.json), or {}."""
  path = os.path.join(run_dir, "conversion.json")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return dict(json.load(f).get("hf_config") or {})


def _carried_fields(source: Mapping[str, Any], family: str, config: Any) -> dict[str, Any]:
  carried = {k: source[k] for k in _CARRIED if k in source}
  if family == "gpt2":  # GPT-2's default token ids (50256) do not exist in a smaller vocabulary
    for key in ("bos_token_id", "eos_token_id"):
      if carried.get(key, 50256) is not None and carried.get(key, 50256) >= config.vocab_size:
        carried[key] = None
  return carried


def run_dir_of(checkpoint: str) -> str:
  """The run directory holding config.gin for a run, checkpoints/ or step directory path."""
  path = os.path.abspath(checkpoint)
  for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    if os.path.isfile(os.path.join(candidate, "config.gin")):
      return candidate
  raise FileNotFoundError(
    f"--checkpoint {checkpoint!r}: no config.gin in it or above it; give a run directory written by "
    "`t5lite train` or `t5lite convert from-hf`"
  )


def _task_vocabularies(run: Mapping[str, Any], register_tasks: Optional[Callable[[], Any]]) -> tuple[Any, Any]:
  """(text vocabulary, class-label vocabulary or None) of the run's task, or (None, None) when the
  run names no task or the task is not registered. `register_tasks` (e.g. importing the task
  package, which starts TensorFlow) is called only for a run that names a task."""
  name = run.get("mixture_or_task_name")
  if not name:
    return None, None
  if register_tasks is not None:
    register_tasks()
  try:
    return inference.task_vocabulary(name), inference.task_vocabulary(name, labels=True)
  except ValueError:
    return None, None


def to_hf(
  checkpoint: str,
  output: str,
  *,
  step: Optional[int] = None,
  model_type: Optional[str] = None,
  dtype: Optional[str] = None,
  register_tasks: Optional[Callable[[], Any]] = None,
) -> dict[str, Any]:
  """Writes a t5lite run's checkpoint as a Hugging Face directory (config.json, model.safetensors, and the
  run's spiece.model when it has one; for an encoder-only run, BertForMaskedLM or BertForSequenceClassification
  by its head (BertModel for a from-hf directory made from one) and the run directory's BERT tokenizer files).

  checkpoint: a run directory (or its checkpoints/ or a step directory); `step`: which (default the latest).
  model_type: 't5' or 'mt5' for T5 models (default: the model_type a `from-hf` directory came from, else 't5').
  dtype: None/'float32', 'bfloat16' or 'float16' for the file. Token ids and generation defaults of the
  Hugging Face config a `from-hf` directory came from are carried back; the SentencePiece model goes along
  (the run's spiece.model, else its VOCABULARY_MODEL, else its task's). A run that names a task exports
  the task's vocabulary files (and a classifier its class names, as id2label) when they are not in the
  run directory; `register_tasks` registers the task first (`t5lite convert to-hf` imports t5lite_tasks),
  called only for such a run.
  Returns {'output', 'family', 'step', 'seconds'}.

  Raises:
    FileExistsError: `output` exists and is not empty (checked first).
    FileNotFoundError: no config.gin or no checkpoint.
    configs.UnsupportedModelError: a model no Hugging Face family represents (naming the fields that differ).
  """
  start = time.perf_counter()
  output = check_output_dir(output)
  checkpoint = os.path.expanduser(os.fspath(checkpoint))
  run_dir = run_dir_of(checkpoint)
  run = inference.read_run_config(run_dir)
  model = run["model"]
  if model.config.prompt_tuning is not None:
    raise configs.UnsupportedModelError(
      f"{run_dir} is a prompt-tuning run: Hugging Face's T5 and GPT-2 have no soft prompt to export it to; "
      "serve it with its checkpoint and config.gin"
    )
  lora_config = model.config.lora  # a LoRA run is exported with its adapters folded into the kernels
  family = configs.check_exportable(dataclasses.replace(model.config, lora=None))
  source = _conversion_record(run_dir)
  if model_type is None and source.get("model_type") in ("t5", "mt5"):
    model_type = source["model_type"]
  head, num_classes = getattr(model, "head", "mlm"), getattr(model, "num_classes", 2)
  if family == "bert" and head == "classification" and source.get("architectures") == ["BertModel"]:
    head = "pooler"  # a converted BertModel goes back as one (its classifier is the conversion's new one)
  exported = configs.from_t5lite(model.config, model_type, head=head, num_classes=num_classes)
  hf_config = {**_carried_fields(source, family, model.config), **exported}
  task_vocab, task_labels = _task_vocabularies(run, register_tasks)
  names = getattr(task_labels, "names", None)
  if family == "bert" and names and len(names) == len(exported.get("id2label") or {}):  # the task's class names
    hf_config.update(id2label={str(i): n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)})
  if family == "bert" and len(source.get("id2label") or {}) == len(exported.get("id2label") or {}) > 0:
    hf_config.update({k: source[k] for k in ("id2label", "label2id") if k in source})  # the label names
  found_step, params_dir = checkpointing.resolve_checkpoint(checkpoint, step, what="--checkpoint")
  params = checkpointing.load_params(os.path.dirname(params_dir), abstract_params(model, True), what="--checkpoint")
  if lora_config is not None:
    params = lora.merge(params, lora_config)
  if head == "pooler":
    params = {k: v for k, v in params.items() if k != "classifier"}
  tensors = weights.export_tensors(dataclasses.replace(model.config, lora=None), jax.device_get(params))
  with staged(output) as staging:
    files.write(staging, tensors, hf_config, dtype=dtype)
    spiece = os.path.join(run_dir, files.SPIECE)
    if not os.path.isfile(spiece) and run.get("vocabulary_model"):
      spiece = os.path.abspath(os.path.expanduser(str(run["vocabulary_model"])))
    if not os.path.isfile(spiece) and family != "bert":  # the task's SentencePiece model (the default one too)
      spiece = getattr(task_vocab, "sentencepiece_model_file", None) or ""
    if os.path.isfile(spiece):
      shutil.copyfile(spiece, os.path.join(staging, files.SPIECE))
    run_vocab_files = bert.vocabulary_files(run_dir) if family == "bert" else []
    for name in run_vocab_files:
      shutil.copyfile(os.path.join(run_dir, name), os.path.join(staging, name))
    tokenizer = getattr(task_vocab, "tokenizer_file", None)
    if family == "bert" and not run_vocab_files and tokenizer:  # the task's WordPiece files
      from t5lite.data import wordpiece  # pylint: disable=g-import-not-at-top  (starts TensorFlow: here only)

      vocab_txt = wordpiece.output_paths(tokenizer)[1]  # train_wordpiece writes it beside the tokenizer file
      shutil.copyfile(tokenizer, os.path.join(staging, "tokenizer.json"))
      if os.path.isfile(vocab_txt):
        shutil.copyfile(vocab_txt, os.path.join(staging, "vocab.txt"))
      # transformers' BertTokenizer lowercases unless told: say what the vocabulary does.
      tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(getattr(task_vocab, "lowercase", False)),
      }
      tokenizer_config["model_max_length"] = model.config.max_position_embeddings
      with open(os.path.join(staging, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f, indent=2)
  return {"output": output, "family": family, "step": found_step, "seconds": time.perf_counter() - start}

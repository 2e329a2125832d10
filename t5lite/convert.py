"""`t5lite convert from-hf` / `to-hf`: a Hugging Face model directory <-> a t5lite checkpoint directory.

from-hf writes a directory laid out like a training run, so that everything that takes a run accepts it:

    OUTPUT/checkpoints/0/{params,meta}   orbax parameters (float32) and their meta (shapes, vocabulary size)
    OUTPUT/model.gin                     the model (include it in a fine-tuning gin file)
    OUTPUT/config.gin                    model.gin plus task settings, for `t5lite infer` and inference.load
    OUTPUT/spiece.model                  the checkpoint's SentencePiece model, when the directory has one
    OUTPUT/conversion.json               where it came from, and the t5lite config

`INITIAL_CHECKPOINT_PATH=OUTPUT` fine-tunes from it. to-hf reads a run directory (its config.gin and a
checkpoint) and writes `config.json` and `model.safetensors` that transformers' `from_pretrained` loads.
Both write into a temporary sibling directory and rename it into place at the end, so an interrupted
conversion leaves no half-written output; an existing non-empty output directory is refused, never
overwritten. The tensor mapping is t5lite.hf; this module is the directories around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Any, Iterator, Mapping, Optional

import jax

from t5lite import checkpointing, inference
from t5lite.hf import configs, files, weights
from t5lite.models import lora, model as model_lib, params as params_lib, t5

# Fields written to model.gin: the architecture and the checkpoint's dropout (runtime fields keep
# their defaults unless overridden).
_ARCH_FIELDS = (*configs.ARCHITECTURE_FIELDS, "dropout_rate")


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


def model_for(config: Any) -> model_lib.BaseModel:
  """The t5lite model of a config (EncoderDecoderModel for T5, DecoderOnlyModel otherwise)."""
  if isinstance(config, t5.T5Config):
    return model_lib.EncoderDecoderModel(config=config)
  return model_lib.DecoderOnlyModel(config=config)


def abstract_params(model: model_lib.BaseModel, placed: bool = False) -> Any:
  """The model's parameters as unboxed ShapeDtypeStructs: without shardings, or (`placed`) on this
  process's first device, the target a restore needs whatever mesh the checkpoint was saved from."""
  lengths = {"inputs": 8, "targets": 8} if isinstance(model, model_lib.EncoderDecoderModel) else {"targets": 8}
  abstract = params_lib.strip_boxes(model.abstract_params(model.input_shapes(1, lengths)))
  if not placed:
    return abstract
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)


def _gin_value(value: Any) -> str:
  if isinstance(value, tuple):
    return "(" + ", ".join(_gin_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value)


def model_gin(config: Any, source: str = "") -> str:
  """A gin file that builds `config`'s model (MODEL), like gin/models/*/*.gin."""
  if isinstance(config, t5.T5Config):
    module, cls, model_cls = "t5", "T5Config", "EncoderDecoderModel"
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
  lines += ["", "from t5lite.models import model", "", f"MODEL = @model.{model_cls}()"]
  lines.append(f"model.{model_cls}.config = @{module}.{cls}()")
  return "\n".join(lines) + "\n"


def save_checkpoint(run_dir: str, params: Any, meta: Mapping[str, Any], step: int = 0) -> None:
  """Writes `params` (orbax) and `meta` (JSON) as RUN_DIR/checkpoints/STEP, as a training run would."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  step_dir = os.path.join(run_dir, "checkpoints", str(step))
  os.makedirs(step_dir)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(step_dir, "params"), params)
  ocp.Checkpointer(ocp.JsonCheckpointHandler()).save(os.path.join(step_dir, "meta"), dict(meta))


def from_hf(
  hf_dir: str,
  output: str,
  *,
  overrides: Optional[Mapping[str, Any]] = None,
  task_feature_lengths: Optional[Mapping[str, int]] = None,
) -> dict[str, Any]:
  """Converts a local Hugging Face directory into a t5lite checkpoint directory (see module doc).

  overrides: t5lite config fields on top of the converted ones (dtype, scan_layers, dropout_rate, ...).
  task_feature_lengths: written into config.gin (default inputs 512 / targets 128 for T5, targets 512 else).
  Returns {'output', 'family', 'config', 'vocabulary_size', 'seconds', 'bytes_read', 'warnings'} (warnings: a
  spiece.model with more ids than the model has rows).

  Raises:
    FileNotFoundError: no config.json, no safetensors weights (a pytorch_model.bin is named with how to
      convert it), a missing shard.
    FileExistsError: `output` exists and is not empty (checked first).
    configs.UnsupportedModelError: an architecture or option t5lite cannot represent (listing the supported).
    ValueError: a tensor of another shape than config.json implies (naming both), a missing or unexpected
      tensor.
  """
  start = time.perf_counter()
  output = check_output_dir(output)
  hf_dir = os.path.abspath(os.path.expanduser(os.fspath(hf_dir)))
  hf_config = files.read_config(hf_dir)
  family = configs.family(hf_config, where=os.path.join(hf_dir, files.CONFIG))
  with files.Checkpoint(hf_dir) as checkpoint:
    tied = weights.output_is_tied(checkpoint, family)
    config = configs.to_t5lite(hf_config, tied_output=tied, overrides=overrides)
    model = model_for(config)
    params = weights.import_params(checkpoint, config, abstract_params(model))
    bytes_read = checkpoint.bytes_read
  spiece = os.path.join(hf_dir, files.SPIECE)
  vocab_size = files.spiece_vocabulary_size(hf_dir)
  warnings = []
  if vocab_size is not None and vocab_size > config.vocab_size:
    warnings.append(
      f"{files.SPIECE} gives {vocab_size} ids (its pieces + {files.SENTINELS} sentinels) but the model has only "
      f"{config.vocab_size} embedding rows: the vocabulary does not fit this checkpoint, and training with it "
      "will be refused"
    )
  if isinstance(config, t5.T5Config):
    lengths = dict(task_feature_lengths or {"inputs": 512, "targets": 128})
  else:
    lengths = dict(task_feature_lengths or {"targets": 512})
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
    gin_text = model_gin(config, f"Converted from {os.path.abspath(hf_dir)} by `t5lite convert from-hf`.")
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
    with open(os.path.join(staging, "config.gin"), "w", encoding="utf-8") as f:
      f.write("\n".join(run_lines) + "\n")
    record = {
      "source": os.path.abspath(hf_dir),
      "family": family,
      "hf_config": hf_config,
      "config": configs.describe(config),
      "vocabulary_size": vocab_size,
    }
    with open(os.path.join(staging, "conversion.json"), "w", encoding="utf-8") as f:
      json.dump(record, f, indent=2, sort_keys=True, default=str)
  return {
    "output": output,
    "family": family,
    "config": config,
    "vocabulary_size": vocab_size,
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


def to_hf(
  checkpoint: str,
  output: str,
  *,
  step: Optional[int] = None,
  model_type: Optional[str] = None,
  dtype: Optional[str] = None,
) -> dict[str, Any]:
  """Writes a t5lite run's checkpoint as a Hugging Face directory (config.json, model.safetensors, and the
  run's spiece.model when it has one).

  checkpoint: a run directory (or its checkpoints/ or a step directory); `step`: which (default the latest).
  model_type: 't5' or 'mt5' for T5 models (default: the model_type a `from-hf` directory came from, else 't5').
  dtype: None/'float32', 'bfloat16' or 'float16' for the file. Token ids and generation defaults of the
  Hugging Face config a `from-hf` directory came from are carried back; the SentencePiece model goes along
  (the run's spiece.model, else its VOCABULARY_MODEL).
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
  hf_config = {**_carried_fields(source, family, model.config), **configs.from_t5lite(model.config, model_type)}
  found_step, params_dir = checkpointing.resolve_checkpoint(checkpoint, step, what="--checkpoint")
  params = checkpointing.load_params(os.path.dirname(params_dir), abstract_params(model, True), what="--checkpoint")
  if lora_config is not None:
    params = lora.merge(params, lora_config)
  tensors = weights.export_tensors(dataclasses.replace(model.config, lora=None), jax.device_get(params))
  with staged(output) as staging:
    files.write(staging, tensors, hf_config, dtype=dtype)
    spiece = os.path.join(run_dir, files.SPIECE)
    if not os.path.isfile(spiece) and run.get("vocabulary_model"):
      spiece = os.path.abspath(os.path.expanduser(str(run["vocabulary_model"])))
    if os.path.isfile(spiece):
      shutil.copyfile(spiece, os.path.join(staging, files.SPIECE))
  return {"output": output, "family": family, "step": found_step, "seconds": time.perf_counter() - start}

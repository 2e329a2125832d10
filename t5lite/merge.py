"""`t5lite lora merge`: a LoRA run's checkpoint -> a run directory whose kernels hold the adapters.

Reads a LoRA run (its config.gin and a checkpoint of adapters, whose base
checkpoint it names), folds every adapter into its kernel (W + (alpha / r) A B,
t5lite.models.lora.merge) and writes a directory laid out like a training run
of the base model, so that everything that takes a run accepts it (inference,
`t5lite eval`, `t5lite convert to-hf`, INITIAL_CHECKPOINT_PATH):

    OUTPUT/checkpoints/STEP/{params,meta}   the merged parameters (orbax, float32) and their meta
    OUTPUT/config.gin                       the run's config.gin with the model's `lora` set to None
    OUTPUT/merge.json                       what was merged: the adapter checkpoint, its base, the LoRA settings

The output is written into a temporary sibling directory and renamed into place
at the end; an existing non-empty output directory is refused, never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional

import jax

from t5lite import checkpointing, convert, inference
from t5lite.models import lora, t5


def merge_lora(checkpoint: str, output: str, *, step: Optional[int] = None) -> dict[str, Any]:
  """Writes the LoRA run at `checkpoint` (a run directory, its checkpoints/ or a step directory; `step`:
  which, default the latest) with its adapters folded into the base kernels, as the run directory `output`.

  Returns {'output', 'step', 'base', 'seconds'}.

  Raises:
    FileExistsError: `output` exists and is not empty (checked first).
    FileNotFoundError: no config.gin or no checkpoint (or the base checkpoint is gone).
    ValueError: the run has no LoRA adapters, or has a soft prompt (prompt tuning adds
      parameters that no kernel can absorb: serve it with its adapter checkpoint).
  """
  start = time.perf_counter()
  output = convert.check_output_dir(output)
  checkpoint = os.path.expanduser(os.fspath(checkpoint))
  run_dir = convert.run_dir_of(checkpoint)
  run = inference.read_run_config(run_dir)
  model = run["model"]
  cfg = model.config
  if cfg.prompt_tuning is not None:
    raise ValueError(
      f"{run_dir} is a prompt-tuning run: a soft prompt cannot be folded into the weights; serve it with "
      "its checkpoint and config.gin (inference loads the base and the prompt)."
    )
  if cfg.lora is None:
    raise ValueError(f"{run_dir}'s model has no LoRA adapters (its config sets no lora): there is nothing to merge.")
  found_step, params_dir = checkpointing.resolve_checkpoint(checkpoint, step, what="--checkpoint")
  meta = checkpointing.read_checkpoint_meta(os.path.dirname(params_dir), "--checkpoint")
  params = checkpointing.load_params(
    os.path.dirname(params_dir), convert.abstract_params(model, True), what="--checkpoint"
  )
  merged = jax.device_get(lora.merge(params, cfg.lora))
  base_config = dataclasses.replace(cfg, lora=None)
  module, cls = ("t5", "T5Config") if isinstance(cfg, t5.T5Config) else ("decoder_only", "DecoderOnlyConfig")
  with open(os.path.join(run_dir, "config.gin"), encoding="utf-8") as f:
    config_gin = f.read()
  config_gin += (
    f"\n# t5lite lora merge: the LoRA adapters of {params_dir} are folded into the kernels.\n"
    f"from t5lite.models import {module}\n{module}.{cls}.lora = None\n"
    f"MODEL_DIR = {output!r}\n"
  )
  new_meta = {k: v for k, v in meta.items() if k in ("vocabulary_size", "model", "rows_consumed", "batch_size", "data")}
  new_meta.update(step=found_step, param_shapes=checkpointing.param_shapes(merged))
  record = {
    "adapters": os.path.dirname(params_dir),
    "base": meta.get("base_checkpoint"),
    "lora": dataclasses.asdict(cfg.lora),
    "merged_config": repr(base_config),
  }
  with convert.staged(output) as staging:
    convert.save_checkpoint(staging, merged, new_meta, step=found_step)
    with open(os.path.join(staging, "config.gin"), "w", encoding="utf-8") as f:
      f.write(config_gin)
    with open(os.path.join(staging, "merge.json"), "w", encoding="utf-8") as f:
      json.dump(record, f, indent=2, default=str)
  return {
    "output": output,
    "step": found_step,
    "base": meta.get("base_checkpoint"),
    "seconds": time.perf_counter() - start,
  }

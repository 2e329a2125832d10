"""Sharded training steps under each rule preset and mesh: time, memory per device, compile.

    python -m t5lite.bench.scaling [--preset small] [--steps 3] [--batch 8]

Runs on 8 simulated CPU devices unless real accelerators are present (the
flag below is set before jax is imported). Prints one JSON line per mesh:
median step time, per-device parameter and optimizer-state bytes (from the
shardings the trainer uses), and the compile time of the train step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Optional, Sequence

# (rules preset, data, fsdp, model)
MESHES = (
  ("data_parallel", -1, 1, 1),
  ("fsdp", 1, -1, 1),
  ("tensor_parallel", 1, 1, -1),
  ("fsdp_tensor_parallel", 2, 2, -1),
  ("fsdp_tensor_parallel", -1, 1, 2),
)


def _random_batch(model, batch_size, lengths, seed=0):
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  vocab = model.config.vocab_size
  shapes = model.input_shapes(batch_size, lengths)
  if "encoder_input_tokens" in shapes:
    lt = lengths["targets"]
    tgt = rng.integers(3, vocab, (batch_size, lt), dtype=np.int32)
    return {
      "encoder_input_tokens": rng.integers(3, vocab, shapes["encoder_input_tokens"], dtype=np.int32),
      "decoder_target_tokens": tgt,
      "decoder_input_tokens": np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], 1),
      "decoder_loss_weights": np.ones_like(tgt),
    }
  length = shapes["decoder_input_tokens"][1]
  tgt = rng.integers(3, vocab, (batch_size, length), dtype=np.int32)
  return {
    "decoder_target_tokens": tgt,
    "decoder_input_tokens": np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], 1),
    "decoder_loss_weights": np.ones_like(tgt),
  }


def run_mesh(model, rules, mesh, batch_size, lengths, steps) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  from t5lite import partitioning, trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from t5lite.optim import adafactor, schedules  # pylint: disable=g-import-not-at-top

  part = partitioning.Partitioner(*mesh, rules=rules)
  cfg = trainer_lib.TrainerConfig(
    train_steps=steps, batch_size=batch_size, task_feature_lengths=lengths, progress=False, async_checkpointing=False
  )
  with tempfile.TemporaryDirectory() as tmp:
    tr = trainer_lib.Trainer(model, adafactor.adafactor, schedules.constant(0.01), cfg, tmp, partitioner=part)
    state = tr.fresh_state()
    batch = part.global_batch(_random_batch(model, batch_size, lengths), batch_size)
    rng = jax.random.key(0)
    t0 = time.perf_counter()
    with part.context():
      compiled = tr.compile_train_step(state, batch, rng)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      state, metrics = compiled(state, batch, rng)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
    result = {
      "bench": "scaling",
      "rules": rules,
      "mesh": {k: v for k, v in part.mesh.shape.items() if k != "expert"},
      "median_step_s": round(statistics.median(times), 4),
      "compile_s": round(compile_s, 2),
      "param_bytes_total": partitioning.total_bytes(tr.abstract_params),
      "param_bytes_per_device": partitioning.bytes_per_device(tr.abstract_params),
      "opt_bytes_total": partitioning.total_bytes(tr.abstract_opt_state),
      "opt_bytes_per_device": partitioning.bytes_per_device(tr.abstract_opt_state),
      "loss": round(float(metrics["loss"]), 4),
      "notes": part.notes,
    }
    tr.close()
  return result


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="small")
  p.add_argument("--model", default="t5", choices=["t5", "decoder_only"])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=512)
  p.add_argument("--targets", type=int, default=114)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--devices", type=int, default=8, help="simulated CPU devices when no accelerator")
  a = p.parse_args(argv)
  if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={a.devices}"
    ).strip()

  from t5lite.models import decoder_only, model as model_lib, t5  # pylint: disable=g-import-not-at-top

  if a.model == "t5":
    model = model_lib.EncoderDecoderModel(config=t5.t5_config(a.preset))
    lengths = {"inputs": a.inputs, "targets": a.targets}
  else:
    model = model_lib.DecoderOnlyModel(config=decoder_only.decoder_only_config(a.preset))
    lengths = {"targets": a.inputs + a.targets}
  for rules, *mesh in MESHES:
    print(json.dumps(dict(run_mesh(model, rules, tuple(mesh), a.batch, lengths, a.steps), preset=a.preset)), flush=True)


if __name__ == "__main__":
  main()

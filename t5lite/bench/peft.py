"""Full fine-tuning against LoRA and prompt tuning: what trains, optimizer bytes, step time, memory (issue 16).

    python -m t5lite.bench.peft --preset small --batch_size 8 --inputs_length 128 --targets_length 32 \\
      --steps 5 --output runs/bench-peft.jsonl
    python -m t5lite.bench.peft --preset tiny --variants lora_r8,prompt_20   # a subset

Variants (`VARIANTS`), each on the encoder-decoder T5 of `--preset` (t5.t5_config):
  full_adafactor  every parameter trains, Adafactor with T5's defaults (t5lite.optim.adafactor)
  full_adamw      every parameter trains, AdamW (t5lite.optim.adamw, weight_decay 0): the
                  like-for-like optimizer-state baseline of the LoRA runs
  lora_r8/r16     LoRA rank r on the 'attention' kernels (query, key, value, out of every self-
                  and cross-attention), alpha = 2r, no dropout; AdamW, weight_decay 0
  prompt_20/100   a soft prompt of N tokens before the encoder input; Adafactor with
                  multiply_by_parameter_scale=False (Lester et al. 2021)
Under LoRA and prompt tuning only the adapters train (t5lite.models.peft): the optimizer
and its state see only them, and the base passes through the step unchanged.

The state is made directly, without the base checkpoint a PEFT run reads
(`TrainStateInitializer.fresh` needs one): every parameter, base and adapters,
is drawn from PRNG key `--seed` into its shardings (BaseModel.init_params; LoRA
B = 0), the optimizer state is the optimizer's init of the trained part, in its
shardings. The step is `t5lite.trainer.train_step`, jitted with the state's
in/out shardings and `donate_argnums=(0,)` as t5lite.trainer.Trainer does, on
one device, called inside the partitioner's context. Batches are random packed
token ids (t5lite.bench.train_step.make_batches) with a constant learning rate.

Each variant gives one JSON line (printed; with `--output FILE`, also appended
to FILE as it comes, t5lite.bench.jsonl) with:
  trainable_params   parameters the optimizer updates (count)
  total_params       every parameter of the state, base and adapters (count)
  opt_state_bytes    bytes of the abstract optimizer state (partitioning.total_bytes: every
                     leaf's elements x its dtype's bytes, counters included)
  compile_s          seconds to lower and compile the train step ahead of time
  warmup_step_s      seconds of the first run of the compiled step (not in the median)
  median_step_s      median wall seconds of the `--steps` steps after it (each to completion)
  tokens_per_s       batch_size x (inputs_length + targets_length) / median_step_s: real tokens
                     (a soft prompt's N positions per row are extra work, not counted)
  peak_bytes         of the compiled step, from `compiled.memory_analysis()`:
                     argument_size_in_bytes + output_size_in_bytes + temp_size_in_bytes
                     - alias_size_in_bytes (the donated state, counted once: an output that
                     reuses an argument's buffer), in bytes; null where the backend gives no
                     analysis. `memory` holds the four terms (and generated code bytes) as reported.
and the first and last step's loss. `--count_only` gives the counts and
optimizer-state bytes alone (from abstract shapes: nothing is allocated,
compiled or run; "timed": false). A variant that fails (e.g. a model feature
not built yet) gives a line with "status": "error" and the error, and the next
variant runs. Each stage goes to stderr as it starts and ends (`[peft] lora_r8:
compile 12.3 s`), so a run cut off shows where it was. Imports only
jax/flax/optax/numpy and t5lite (no TensorFlow, seqio or gin).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

from t5lite import runtime
from t5lite.bench import jsonl


def stage(message: str) -> None:
  """One progress line on stderr, flushed at once (stdout carries the JSON)."""
  print(f"[peft] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Variant:
  """One fine-tuning setup: its optimizer ('adafactor', 'adafactor_no_scale' or 'adamw') and adapters."""

  name: str
  optimizer: str
  lora_rank: Optional[int] = None
  prompt_length: Optional[int] = None


VARIANTS = (
  Variant("full_adafactor", "adafactor"),
  Variant("full_adamw", "adamw"),
  Variant("lora_r8", "adamw", lora_rank=8),
  Variant("lora_r16", "adamw", lora_rank=16),
  Variant("prompt_20", "adafactor_no_scale", prompt_length=20),
  Variant("prompt_100", "adafactor_no_scale", prompt_length=100),
)
LORA_TARGETS = "attention"


def optimizer_factory(name: str) -> Callable[..., Any]:
  """The optimizer factory of a variant (called by TrainStateInitializer with the learning rate and,
  for Adafactor, the logical axes)."""
  from t5lite.optim import adafactor, adamw  # pylint: disable=g-import-not-at-top

  if name == "adafactor":
    return adafactor.adafactor
  if name == "adafactor_no_scale":
    return functools.partial(adafactor.adafactor, multiply_by_parameter_scale=False)
  if name == "adamw":
    return functools.partial(adamw.adamw, weight_decay=0.0)
  raise ValueError(f"unknown optimizer {name!r}")


def build_model(variant: Variant, preset: str, vocab_size: int):
  """The EncoderDecoderModel of `preset` with the variant's LoRA or prompt tuning."""
  from t5lite.models import lora, model as model_lib, prompt_tuning, t5  # pylint: disable=g-import-not-at-top

  overrides: dict[str, Any] = {"vocab_size": vocab_size}
  if variant.lora_rank is not None:
    r = variant.lora_rank
    overrides["lora"] = lora.LoraConfig(rank=r, alpha=2.0 * r, dropout_rate=0.0, targets=LORA_TARGETS)
  if variant.prompt_length is not None:
    overrides["prompt_tuning"] = prompt_tuning.PromptTuningConfig(length=variant.prompt_length)
  return model_lib.EncoderDecoderModel(config=t5.t5_config(preset, **overrides))


def count(tree: Any) -> int:
  """Elements of all leaves of a tree of arrays or ShapeDtypeStructs."""
  import jax  # pylint: disable=g-import-not-at-top

  return int(sum(int(x.size) for x in jax.tree.leaves(tree)))


def memory(compiled: Any) -> tuple[Optional[int], Optional[dict]]:
  """(peak bytes, the terms as reported) of a compiled program's memory analysis; (None, None) without one.

  peak = argument + output + temp - alias bytes (see the module docstring)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # backends without the analysis raise
    return None, None
  if stats is None:
    return None, None
  names = ("argument", "output", "temp", "alias", "generated_code")
  terms = {n: getattr(stats, f"{n}_size_in_bytes", None) for n in names}
  terms = {n: int(v) for n, v in terms.items() if v is not None}
  if not all(n in terms for n in ("argument", "output", "temp")):
    return None, terms
  peak = terms["argument"] + terms["output"] + terms["temp"] - terms.get("alias", 0)
  return peak, terms


def run_variant(variant: Variant, args) -> dict:
  """Builds, compiles and times one variant; its JSON line."""
  import jax  # pylint: disable=g-import-not-at-top

  from t5lite import partitioning, trainer  # pylint: disable=g-import-not-at-top
  from t5lite.bench import train_step as train_step_bench  # pylint: disable=g-import-not-at-top
  from t5lite.optim import schedules  # pylint: disable=g-import-not-at-top
  from t5lite.train_state import TrainState, TrainStateInitializer  # pylint: disable=g-import-not-at-top

  name = variant.name
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  stage(f"{name}: building the model and its state ...")
  model = build_model(variant, args.preset, args.vocab_size)
  part = partitioning.Partitioner(num_devices=1)
  learning_rate = schedules.constant(args.learning_rate)
  shapes = model.input_shapes(args.batch_size, lengths)
  init = TrainStateInitializer(model, optimizer_factory(variant.optimizer), learning_rate, part, shapes)
  total, trainable = count(init.params.abstract), count(init.trained_abstract)
  opt_bytes = partitioning.total_bytes(init.abstract_opt_state)
  stage(f"{name}: {trainable:,} of {total:,} parameters train; optimizer state {opt_bytes:,} bytes")
  line: dict[str, Any] = {
    "part": "variant",
    "variant": name,
    "status": "ok",
    "optimizer": variant.optimizer,
    "lora_rank": variant.lora_rank,
    "lora_alpha": None if variant.lora_rank is None else 2.0 * variant.lora_rank,
    "lora_targets": None if variant.lora_rank is None else LORA_TARGETS,
    "prompt_length": variant.prompt_length,
    "trainable_params": trainable,
    "total_params": total,
    "trainable_fraction": trainable / total,
    "opt_state_bytes": opt_bytes,
    "timed": not args.count_only,
  }
  if args.count_only:
    return line

  t0 = time.perf_counter()
  with part.context():
    params = model.init_params(jax.random.key(args.seed), shapes, init.params.shardings)
    opt_state = jax.jit(init.optimizer.init, out_shardings=init.opt_shardings)(init.trained(params))
    state = TrainState(step=init.step_array(0), params=params, opt_state=opt_state)
  jax.block_until_ready(state)
  line["init_s"] = round(time.perf_counter() - t0, 3)
  stage(f"{name}: state init {line['init_s']:.2f} s")

  host = train_step_bench.make_batches(
    "encoder_decoder",
    args.batch_size,
    args.inputs_length,
    args.targets_length,
    args.vocab_size,
    1 + args.steps,
    seed=args.seed + 1,
  )
  batches = [part.global_batch(b, args.batch_size) for b in host]
  rng = jax.random.key(args.seed + 1)
  step_fn = jax.jit(
    functools.partial(
      trainer.train_step, model=model, optimizer=init.optimizer, learning_rate=learning_rate, num_microbatches=1
    ),
    in_shardings=(init.state_shardings, part.batch_sharding(), part.replicated),
    out_shardings=(init.state_shardings, part.replicated),
    donate_argnums=(0,),
  )

  stage(f"{name}: compiling the train step ...")
  t0 = time.perf_counter()
  with part.context():
    compiled = step_fn.lower(state, batches[0], rng).compile()
  compile_s = time.perf_counter() - t0
  peak, terms = memory(compiled)
  stage(f"{name}: compile {compile_s:.2f} s; peak {peak if peak is None else f'{peak / 1e6:.1f} MB'}")

  losses, times = [], []
  load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  for i in range(1 + args.steps):
    t0 = time.perf_counter()
    with part.context():
      state, metrics = compiled(state, batches[i], rng)
    jax.block_until_ready((state, metrics))
    wall = time.perf_counter() - t0
    losses.append(float(metrics["loss"]))
    if i == 0:
      warmup = wall
      stage(f"{name}: warm-up step {wall:.3f} s")
    else:
      times.append(wall)
      stage(f"{name}: step {i}/{args.steps} {wall:.3f} s")
  median = statistics.median(times)
  tokens = model.tokens_per_step(args.batch_size, lengths)
  stage(f"{name}: median step {median:.3f} s, {tokens / median:,.0f} tokens/s")
  line.update(
    compile_s=round(compile_s, 3),
    warmup_step_s=round(warmup, 6),
    median_step_s=round(median, 6),
    step_s=[round(t, 6) for t in times],
    tokens_per_step=tokens,
    tokens_per_s=round(tokens / median, 1),
    peak_bytes=peak,
    memory=terms,
    first_loss=round(losses[0], 4),
    last_loss=round(losses[-1], 4),
    loadavg_1m_start_end=[
      None if load_start is None else round(load_start, 2),
      round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    ],
  )
  return line


def environment(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  return {
    "part": "env",
    "preset": args.preset,
    "batch_size": args.batch_size,
    "inputs_length": args.inputs_length,
    "targets_length": args.targets_length,
    "steps": args.steps,
    "vocab_size": args.vocab_size,
    "learning_rate": args.learning_rate,
    "variants": [v.name for v in args.variants],
    "count_only": args.count_only,
    "device": device.device_kind,
    "platform": device.platform,
    "cpu_count": os.cpu_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "jax": jax.__version__,
    "python": platform.python_version(),
  }


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="small", help="a T5 preset (t5.T5_PRESETS): tiny, small, base, ...")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--inputs_length", type=int, default=128)
  p.add_argument("--targets_length", type=int, default=32)
  p.add_argument("--steps", type=int, default=5, help="timed steps after the one warm-up step")
  p.add_argument(
    "--variants",
    default=",".join(v.name for v in VARIANTS),
    help="comma-separated subset of %(default)s",
  )
  p.add_argument("--vocab_size", type=int, default=32128)
  p.add_argument("--learning_rate", type=float, default=1e-3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output", default=None, help="also write the JSON lines to this file")
  p.add_argument(
    "--count_only",
    action="store_true",
    help="only the parameter counts and optimizer-state bytes (abstract shapes: no state, compile or steps)",
  )
  runtime.add_flags(p)
  args = p.parse_args(argv)
  if args.steps < 1:
    p.error("--steps must be >= 1")
  for flag in ("batch_size", "inputs_length", "targets_length"):
    if getattr(args, flag) < 1:
      p.error(f"--{flag} must be >= 1")
  by_name = {v.name: v for v in VARIANTS}
  names = [n.strip() for n in args.variants.split(",") if n.strip()]
  unknown = [n for n in names if n not in by_name]
  if unknown or not names:
    p.error(f"--variants: unknown {unknown or names!r}; valid: {', '.join(by_name)}")
  args.variants = [by_name[n] for n in names]
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the variants; 0 when all ran, 1 when one failed (its line says why)."""
  args = parse_args(argv)
  if "jax" not in sys.modules:  # a fresh process: t5lite's malloc and XLA:CPU settings, as the other benchmarks
    runtime.apply_flags(args)
  emit = jsonl.Emitter(args.output)
  failed = 0
  start = time.perf_counter()
  try:
    emit(environment(args))
    for variant in args.variants:
      t0 = time.perf_counter()
      try:
        line = run_variant(variant, args)
      except Exception as e:  # pylint: disable=broad-except  # reported, and the next variant runs
        failed += 1
        stage(f"{variant.name}: FAILED: {type(e).__name__}: {e}")
        line = {"part": "variant", "variant": variant.name, "status": "error", "error": f"{type(e).__name__}: {e}"}
      line["wall_s"] = round(time.perf_counter() - t0, 1)
      emit(line)
    stage(f"done in {time.perf_counter() - start:.1f} s ({failed} failed)")
  finally:
    emit.close()
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())

"""Training-step throughput of t5lite's real train step on random packed batches.

    python -m t5lite.bench.train_step --preset small --batch 8 --inputs 512 --targets 114 --steps 10
    python -m t5lite.bench.train_step --model decoder_only --preset tiny --batch 8

Builds the model wrapper (`EncoderDecoderModel` / `DecoderOnlyModel`), Adafactor
with the model's logical axes and a constant learning rate, and jits
`t5lite.trainer.train_step` with `donate_argnums=(0,)` exactly as
`t5lite.trainer.Trainer` does. Batches are random token ids in [2, vocab) laid
out like seqio's feature-converter output (EncDec, or LM for decoder-only:
length = inputs + targets), with segment ids (all 1) and positions, as packed
training batches have. Reported: init_s (building the state), compile_s (the
Trainer's ahead-of-time compile of the step), first_step_s (its first run),
time_to_first_step_s (from the import of this module to the end of that first
step), and tokens_per_s from the median of the following `--steps` steps.
Each stage is announced on stderr as it starts and timed when it ends
(`[train_step] step compile 30.2 s`), so a run cut off shows where it was.

The persistent compilation cache is off by default so that a plain run
measures a cold compile; `--compilation_cache_dir DIR` turns it on (see
`t5lite.runtime.setup_compilation_cache`), and a second run with the same DIR
measures the time to the first step with a warm cache. On GPU/TPU
`peak_device_bytes` is the device's peak memory in use (null where the backend
keeps no memory statistics, as on CPU).

Process settings (reported in the JSON; see t5lite.runtime): by default glibc malloc keeps freed memory
(`--malloc default` leaves it alone) and, on CPU-only hosts, XLA_FLAGS gets
`--xla_cpu_experimental_ynn_fusion_type=-individual_dot` (`--xla_cpu_flags ''`
adds nothing). Neither changes what is computed.

Prints ONE JSON line. Imports only jax/flax/optax/numpy and t5lite (no
TensorFlow, seqio or gin), so it runs on any JAX backend.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Optional, Sequence

import numpy as np

from t5lite import runtime

# "Process start" for time_to_first_step_s: this module is imported before
# jax, so only Python's own start-up (a fraction of a second) is left out.
_IMPORTED_AT = time.perf_counter()


def stage(message: str) -> None:
  """One progress line on stderr, flushed at once (stdout carries the JSON)."""
  print(f"[train_step] {message}", file=sys.stderr, flush=True)


def attention_implementations() -> tuple[str, ...]:
  """The model's valid `attention` names (t5lite.models.config.ATTENTION_IMPLEMENTATIONS)."""
  from t5lite.models import config  # pylint: disable=g-import-not-at-top  # imports jax: after the process settings

  return tuple(config.ATTENTION_IMPLEMENTATIONS)


def make_batches(
  model_kind: str, batch: int, inputs: int, targets: int, vocab: int, count: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
  """Random packed-format batches (numpy int32, float32 weights), pre-generated."""
  rng = np.random.default_rng(seed)

  def seq(length):
    return {
      "segment_ids": np.ones((batch, length), np.int32),
      "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
    }

  out = []
  for _ in range(count):
    if model_kind == "encoder_decoder":
      enc = rng.integers(2, vocab, (batch, inputs), dtype=np.int32)
      tgt = rng.integers(2, vocab, (batch, targets), dtype=np.int32)
      e, d = seq(inputs), seq(targets)
      out.append(
        {
          "encoder_input_tokens": enc,
          "encoder_segment_ids": e["segment_ids"],
          "encoder_positions": e["positions"],
          # seqio shifts right within each segment; 0 is the BOS/pad id.
          "decoder_input_tokens": np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1),
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": np.ones((batch, targets), np.float32),
          "decoder_segment_ids": d["segment_ids"],
          "decoder_positions": d["positions"],
        }
      )
    else:
      length = inputs + targets
      tgt = rng.integers(2, vocab, (batch, length), dtype=np.int32)
      d = seq(length)
      out.append(
        {
          "decoder_input_tokens": np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1),
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": np.ones((batch, length), np.float32),
          "decoder_segment_ids": d["segment_ids"],
          "decoder_positions": d["positions"],
        }
      )
  return out


def build_model(args):
  from t5lite.models import decoder_only, model as model_lib, t5  # pylint: disable=g-import-not-at-top

  overrides = dict(
    vocab_size=args.vocab_size,
    dtype=args.dtype,
    scan_layers=args.scan_layers,
    remat_policy=args.remat_policy,
    attention=args.attention,
  )
  if args.model == "encoder_decoder":
    cfg = t5.t5_config(args.preset, **overrides)
    model = model_lib.EncoderDecoderModel(config=cfg)
    lengths = {"inputs": args.inputs, "targets": args.targets}
  else:
    cfg = decoder_only.decoder_only_config(args.preset, **overrides)
    model = model_lib.DecoderOnlyModel(config=cfg)
    lengths = {"targets": args.inputs + args.targets}
  return model, lengths


class StepRunner:
  """The benchmark's model, state and batches; `compile()` compiles the step
  ahead of time and `step(i)` runs batch i (compiling first if `compile()` was
  not called).

  Shared with t5lite.bench.paired, which interleaves these steps with another
  implementation's.
  """

  def __init__(self, args):
    import jax  # pylint: disable=g-import-not-at-top

    from t5lite import partitioning, trainer  # pylint: disable=g-import-not-at-top
    from t5lite.optim import adafactor, schedules  # pylint: disable=g-import-not-at-top

    stage(f"building {args.model} {args.preset} and its trainer ...")
    self.model, self.lengths = build_model(args)
    # Exactly what `t5lite train` runs: the Trainer's jitted step (in/out
    # shardings, donated state) on a Partitioner's mesh, called inside the
    # partitioner's context so that the model's logical-axis constraints apply.
    self.part = partitioning.Partitioner(num_devices=args.devices)
    config = trainer.TrainerConfig(
      train_steps=1 + args.steps,
      batch_size=args.batch,
      task_feature_lengths=self.lengths,
      num_microbatches=args.microbatches,
      seed=args.seed,
      progress=False,
      async_checkpointing=False,
    )
    self.workdir = tempfile.mkdtemp(prefix="t5lite-bench-")
    self.trainer = trainer.Trainer(
      self.model,
      adafactor.adafactor,
      schedules.constant(args.learning_rate),
      config,
      self.workdir,
      partitioner=self.part,
    )
    stage("initialising the state ...")
    t0 = time.perf_counter()
    self.state = self.trainer.fresh_state()
    jax.block_until_ready(self.state)
    self.init_s = time.perf_counter() - t0
    stage(f"state init {self.init_s:.2f} s")
    self.n_params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))

    stage("making the batches ...")
    kind = "encoder_decoder" if args.model == "encoder_decoder" else "decoder_only"
    host_batches = make_batches(
      kind, args.batch, args.inputs, args.targets, args.vocab_size, 1 + args.steps, seed=args.seed + 1
    )
    self.batches = [self.part.global_batch(b, args.batch) for b in host_batches]
    jax.block_until_ready(self.batches)
    self.step_rng = jax.random.key(args.seed + 1)
    self.losses: list[float] = []
    self.compile_s: Optional[float] = None

  def compile(self) -> float:
    """Lowers and compiles the train step for these shapes; returns seconds."""
    stage("compiling the train step ...")
    t0 = time.perf_counter()
    self.trainer.compile_train_step(self.state, self.batches[0], self.step_rng)
    self.compile_s = time.perf_counter() - t0
    stage(f"step compile {self.compile_s:.2f} s")
    return self.compile_s

  def step(self, i: int) -> tuple[float, float]:
    """Runs batch i to completion; returns (wall seconds, process CPU seconds).

    Without a `compile()` before, step 0's time includes the compile.
    """
    import jax  # pylint: disable=g-import-not-at-top

    t0, c0 = time.perf_counter(), time.process_time()
    if self.compile_s is None:
      self.compile()
    self.state, metrics = self.trainer.train_step(self.state, self.batches[i], self.step_rng)
    jax.block_until_ready((self.state, metrics))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    self.losses.append(float(metrics["loss"]))
    return wall, cpu

  def close(self) -> None:
    self.trainer.close()
    shutil.rmtree(self.workdir, ignore_errors=True)


def peak_device_bytes() -> Optional[int]:
  """Peak bytes in use on the first device, where the backend keeps memory
  statistics (GPU, TPU); None elsewhere (CPU)."""
  import jax  # pylint: disable=g-import-not-at-top

  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  # backends without the statistics raise
    return None
  return None if not stats else stats.get("peak_bytes_in_use")


def setup_compilation_cache(directory: str, min_compile_time_s: float) -> Optional[str]:
  """Turns the persistent compilation cache on in `directory`, or off for
  'none'; returns the directory in use or None."""
  import jax  # pylint: disable=g-import-not-at-top

  path = runtime.setup_compilation_cache(directory, min_compile_time_s=min_compile_time_s)
  if path is None:  # off also when JAX_COMPILATION_CACHE_DIR is set: a cold compile is measured
    jax.config.update("jax_enable_compilation_cache", False)
  return path


def run(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  from t5lite import throughput  # pylint: disable=g-import-not-at-top

  cache_dir = setup_compilation_cache(args.compilation_cache_dir, args.compilation_cache_min_compile_s)
  runner = StepRunner(args)
  model, lengths, part = runner.model, runner.lengths, runner.part
  init_s, n_params = runner.init_s, runner.n_params

  load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  compile_s = runner.compile()
  stage("running the first step ...")
  first_step_s = runner.step(0)[0]
  time_to_first_step_s = time.perf_counter() - _IMPORTED_AT
  stage(f"first step {first_step_s:.2f} s (time to first step {time_to_first_step_s:.2f} s)")
  stage(f"timing {args.steps} steps ...")
  times, cpu = [], []
  for i in range(1, 1 + args.steps):
    wall, c = runner.step(i)
    times.append(wall)
    cpu.append(c)
  first_loss, last_loss = runner.losses[0], runner.losses[-1]
  runner.close()

  median = statistics.median(times)
  stage(f"{args.steps} steps, median {median:.4f} s")
  tokens_per_step = model.tokens_per_step(args.batch, lengths)
  flops_per_step = model.flops_per_step(args.batch, lengths)
  flops_per_s = flops_per_step / median
  device = jax.devices()[0]
  return {
    "impl": "t5lite",
    "preset": args.preset,
    "model": args.model,
    "batch": args.batch,
    "inputs": args.inputs,
    "targets": args.targets,
    "dtype": args.dtype,
    "tokens_per_s": round(tokens_per_step / median, 1),
    "median_step_s": round(median, 6),
    "min_step_s": round(min(times), 6),
    "mean_step_s": round(sum(times) / len(times), 6),
    "compile_s": round(compile_s, 3),
    "init_s": round(init_s, 3),
    "first_step_s": round(first_step_s, 3),
    "time_to_first_step_s": round(time_to_first_step_s, 2),
    "compilation_cache_dir": cache_dir,
    "params": n_params,
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    "peak_device_bytes": peak_device_bytes(),
    "mfu": throughput.mfu(flops_per_s),
    "flops_per_s": round(flops_per_s, 1),
    "flops_per_step": flops_per_step,
    "steps": len(times),
    "microbatches": args.microbatches,
    "scan_layers": args.scan_layers,
    "remat_policy": args.remat_policy,
    "attention": args.attention,
    "vocab_size": args.vocab_size,
    "cpu_per_wall": round(sum(cpu) / sum(times), 2),
    "median_cpu_s": round(statistics.median(cpu), 4),
    "loadavg_1m_start_end": [
      None if load_start is None else round(load_start, 2),
      round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    ],
    "first_loss": round(first_loss, 4),
    "last_loss": round(last_loss, 4),
    "malloc_tuned": getattr(args, "malloc_tuned", False),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "device": device.device_kind,
    "platform": device.platform,
    "num_devices": part.mesh.size,
    "jax": jax.__version__,
    "python": platform.python_version(),
  }


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", choices=("encoder_decoder", "decoder_only"), default="encoder_decoder")
  p.add_argument(
    "--preset", default="small", help="encoder_decoder: tiny/small/base/large/xl/xxl; decoder_only: tiny/small/base/1b"
  )
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=512)
  p.add_argument("--targets", type=int, default=114)
  p.add_argument("--steps", type=int, default=10, help="timed steps after the first (compile) step")
  p.add_argument(
    "--devices",
    type=int,
    default=1,
    help="devices of the data-parallel mesh (default 1: one CPU device or one accelerator)",
  )
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--microbatches", type=int, default=1)
  p.add_argument("--scan_layers", action="store_true")
  p.add_argument("--remat_policy", default="none", choices=("none", "full", "dots_saveable", "minimal"))
  p.add_argument(
    "--attention",
    choices=attention_implementations(),
    default="auto",
    help="attention implementation (t5lite.kernels.backend); auto picks the one for this backend",
  )
  p.add_argument(
    "--compilation_cache_dir",
    default="none",
    help="persistent compilation cache directory; 'none' (default) measures a cold compile",
  )
  p.add_argument(
    "--compilation_cache_min_compile_s",
    type=float,
    default=1.0,
    help="programs that took at least this long to compile are cached (jax's "
    "jax_persistent_cache_min_compile_time_secs; 0 caches every program)",
  )
  p.add_argument("--vocab_size", type=int, default=32128)
  p.add_argument("--learning_rate", type=float, default=1e-3)
  p.add_argument("--seed", type=int, default=0)
  runtime.add_flags(p)
  args = p.parse_args(argv)
  if args.steps < 1:
    p.error("--steps must be >= 1")
  if args.batch % args.microbatches:
    p.error(f"--batch {args.batch} is not divisible by --microbatches {args.microbatches}")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  # The process settings go first: parse_args reads the attention names from
  # the model code, which imports jax.
  early = argparse.ArgumentParser(add_help=False)
  runtime.add_flags(early)
  malloc_tuned = runtime.apply_flags(early.parse_known_args(argv)[0])["malloc_tuned"]
  args = parse_args(argv)
  args.malloc_tuned = malloc_tuned
  print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
  main()

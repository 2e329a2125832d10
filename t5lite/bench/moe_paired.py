"""The Switch and dense train steps of `t5lite.bench.moe` run alternately in one process (issue 15).

Runs made one after the other on a machine shared with other jobs can differ by tens of percent
in tokens/s for reasons of load alone; alternating the two compiled steps (the order swapped
every pair) exposes both to the same drift, so the median per-pair time ratio is the routing's
cost. Also the quickstart constants and the progress helpers `t5lite.bench.moe` shares.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any, Optional

# name -> (gin experiment file, the T5 preset it builds). Both experiment files bind
# T5Config.vocab_size = QUICKSTART_VOCAB and share every other setting.
MODELS = {
  "dense": ("experiments/quickstart.gin", "tiny"),
  "switch": ("experiments/quickstart_switch.gin", "switch_tiny"),
}
QUICKSTART_VOCAB = 8192
QUICKSTART_BATCH = 16
QUICKSTART_LENGTHS = {"inputs": 256, "targets": 58}


def stage(message: str) -> None:
  """One progress line on stderr, flushed at once (stdout carries the JSON)."""
  print(f"[moe] {message}", file=sys.stderr, flush=True)


def loadavg() -> Optional[float]:
  return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def r(x: Optional[float], digits: int = 4) -> Optional[float]:
  """x rounded for the JSON lines (None stays None)."""
  return None if x is None else round(float(x), digits)


# ---- part 'paired': the two train steps alternately, in one process ----------


def _step_args(preset: str, args) -> argparse.Namespace:
  """t5lite.bench.train_step's settings for one model of the pair (the quickstart's shapes)."""
  return argparse.Namespace(
    model="encoder_decoder",
    preset=preset,
    vocab_size=QUICKSTART_VOCAB,
    dtype="float32",
    scan_layers=False,
    remat_policy="none",
    attention="auto",
    batch=args.batch or QUICKSTART_BATCH,
    inputs=args.inputs or QUICKSTART_LENGTHS["inputs"],
    targets=args.targets or QUICKSTART_LENGTHS["targets"],
    devices=1,
    microbatches=1,
    seed=args.seed,
    steps=args.pairs,
    learning_rate=1e-3,
  )


def run_paired(args) -> dict:
  """Dense and Switch train steps (t5lite.bench.train_step.StepRunner: the Trainer's compiled step on random
  packed batches of the quickstart's shapes) one after the other, `--pairs` times, the order swapped every pair:
  the machine's drift hits both alike, so the median of the per-pair time ratios is the routing's cost."""
  from t5lite.bench import train_step  # pylint: disable=g-import-not-at-top

  runners = {}
  for name in ("dense", "switch"):
    stage(f"paired: building {MODELS[name][1]} ...")
    runners[name] = train_step.StepRunner(_step_args(MODELS[name][1], args))
  try:
    first = {}
    for name, runner in runners.items():
      runner.compile()
      first[name] = runner.step(0)[0]
    stage(f"paired: {args.pairs} pairs of steps ...")
    load_start = loadavg()
    times: dict[str, list[float]] = {"dense": [], "switch": []}
    cpu: dict[str, list[float]] = {"dense": [], "switch": []}
    for i in range(1, 1 + args.pairs):
      for name in ("dense", "switch") if i % 2 else ("switch", "dense"):
        wall, c = runners[name].step(i)
        times[name].append(wall)
        cpu[name].append(c)
  finally:
    for runner in runners.values():
      runner.close()
  ratios = [s / d for s, d in zip(times["switch"], times["dense"])]
  tokens = runners["dense"].model.tokens_per_step(args.batch or QUICKSTART_BATCH, runners["dense"].lengths)
  line: dict[str, Any] = {"part": "paired", "pairs": args.pairs, "tokens_per_step": tokens}
  for name, runner in runners.items():
    median = statistics.median(times[name])
    line[name] = {
      "preset": MODELS[name][1],
      "params": runner.n_params,
      "init_s": r(runner.init_s, 2),
      "compile_s": r(runner.compile_s, 2),
      "first_step_s": r(first[name], 3),
      "median_step_s": r(median),
      "tokens_per_s": r(tokens / median, 1),
      "cpu_per_wall": r(sum(cpu[name]) / sum(times[name]), 2),
      "first_last_loss": [r(runner.losses[0]), r(runner.losses[-1])],
    }
  line["switch_over_dense_step_time_median"] = r(statistics.median(ratios))
  line["switch_over_dense_step_time_min_max"] = [r(min(ratios)), r(max(ratios))]
  line["pairs_switch_faster"] = sum(r < 1 for r in ratios)
  line["loadavg_1m_start_end"] = [load_start, loadavg()]
  stage(f"paired: switch / dense step time {line['switch_over_dense_step_time_median']} (median of {args.pairs})")
  return line

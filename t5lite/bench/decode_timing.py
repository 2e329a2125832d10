"""What the two decoding benchmarks share: method names, flags, the timing loop
and the common fields of a result line.

`t5lite.bench.decode` (JAX) and `t5lite.bench.hf_generate` (PyTorch) measure
the same thing the same way. This module is plain Python (no jax, no torch,
nothing else from t5lite), so that both import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import resource
import statistics
import time
from typing import Any, Callable, Optional

ALPHA = 0.6  # GNMT length penalty of beam search (T5X's default)


def parse_methods(spec: str) -> list[tuple[str, int]]:
  """'greedy,beam4' -> [('greedy', 1), ('beam', 4)].

  Raises:
    ValueError: a name other than 'greedy' or 'beamN' (N >= 1), or no name.
  """
  out = []
  for name in (s.strip() for s in spec.split(",")):
    if not name:
      continue
    if name == "greedy":
      out.append(("greedy", 1))
      continue
    m = re.fullmatch(r"beam(\d+)", name)
    if not m or int(m.group(1)) < 1:
      raise ValueError(f"unknown decoding method {name!r}; use 'greedy' or 'beamN' (N >= 1 beams)")
    out.append(("beam", int(m.group(1))))
  if not out:
    raise ValueError("no decoding method given")
  return out


def add_flags(p: argparse.ArgumentParser, *, inputs_help: str, first_call: str) -> None:
  """The flags both benchmarks take: --batch, --inputs, --max_decode_len,
  --methods, --repeats, --dtype, --vocab_size, --seed. `first_call` names the
  untimed first call in --repeats' help ('compile', 'warm-up')."""
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=512, help=inputs_help)
  p.add_argument("--max_decode_len", type=int, default=64)
  p.add_argument("--methods", default="greedy,beam4", help="comma list of 'greedy' and 'beamN'")
  p.add_argument("--repeats", type=int, default=3, help=f"timed calls after the first ({first_call}) call")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--vocab_size", type=int, default=32128)
  p.add_argument("--seed", type=int, default=0)


def check_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Exits through `p.error` for sizes < 1, --vocab_size < 3 or bad --methods."""
  for name in ("batch", "inputs", "max_decode_len", "repeats"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1")
  if args.vocab_size < 3:
    p.error("--vocab_size must be >= 3 (ids 0 and 1 are pad and EOS)")
  try:
    parse_methods(args.methods)
  except ValueError as e:
    p.error(str(e))


def _loadavg() -> Optional[float]:
  return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


@dataclasses.dataclass
class Timing:
  """One method's calls: the first (compile or warm-up) call's seconds, each
  timed call's wall and process CPU seconds, the 1-minute load average before
  the first call, and the last call's output."""

  first_s: float
  times: list[float]
  cpu: list[float]
  load_start: Optional[float]
  output: Any


def time_calls(call: Callable[[], Any], repeats: int) -> Timing:
  """Runs `call` (which returns when its work is done) once untimed, then
  `repeats` times timed."""
  load_start = _loadavg()
  t0 = time.perf_counter()
  out = call()
  first_s = time.perf_counter() - t0
  times, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    out = call()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return Timing(first_s, times, cpu, load_start, out)


def result_fields(
  args: argparse.Namespace,
  method: str,
  beams: int,
  timing: Timing,
  *,
  decoded_tokens: int,
  init_s: float,
  params: int,
) -> dict[str, Any]:
  """The fields both benchmarks report for one method, in their order:
  decoded_tokens_per_s = batch * max_decode_len / median_s."""
  median = statistics.median(timing.times)
  return {
    "preset": args.preset,
    "method": method,
    "batch": args.batch,
    "inputs": args.inputs,
    "max_decode_len": args.max_decode_len,
    "beam_size": beams,
    "alpha": ALPHA if method == "beam" else None,
    "decoded_tokens": decoded_tokens,
    "decoded_tokens_per_s": round(args.batch * args.max_decode_len / median, 1),
    "median_s": round(median, 6),
    "min_s": round(min(timing.times), 6),
    "repeats": len(timing.times),
    "compile_s": round(timing.first_s, 2),
    "init_s": round(init_s, 2),
    "params": params,
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    "cpu_per_wall": round(sum(timing.cpu) / sum(timing.times), 2) if sum(timing.times) > 0 else None,
    "loadavg_1m_start_end": [timing.load_start, _loadavg()],
    "vocab_size": args.vocab_size,
    "dtype": args.dtype,
  }

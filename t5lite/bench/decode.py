"""Decoding throughput of t5lite's `predict_batch` (greedy and beam search).

    python -m t5lite.bench.decode --preset tiny
    python -m t5lite.bench.decode --preset small --batch 8 --inputs 512 --max_decode_len 64 --methods greedy,beam4
    python -m t5lite.bench.decode --model decoder_only --preset tiny --inputs 512

Builds the model wrapper (`EncoderDecoderModel` for `--model t5`,
`DecoderOnlyModel` for `--model decoder_only`) with randomly initialised
parameters and runs `predict_batch` through `inference.Predictor` (jitted with
the `DecodeOptions` static, on a one-device mesh, inside the partitioner's
context), exactly as `t5lite infer` and `t5lite eval` do. Inputs are random token ids in [2, vocab) with no
padding: `--inputs` is the encoder input length (T5) or the prompt length
(decoder-only, which prefills the prompt into the cache first). Decoding uses
`eos_id=-1`, an id no model ever emits, so every sequence runs all
`--max_decode_len` steps and the number of decoded tokens is exactly
batch * max_decode_len (under beam search this counts the batch's output
tokens, not beams * batch).

For each method of `--methods` (`greedy`, or `beamN`: beam search with N beams
and length penalty alpha 0.6) the first call, compilation included, is
reported as compile_s; the median of the following `--repeats` calls gives
decoded_tokens_per_s = batch * max_decode_len / median_s. The time covers
the whole call: the encoder pass (or the prompt prefill) plus all decoding
steps.

Process settings (reported in the JSON as process_settings; see
t5lite.runtime) are applied before JAX starts, as in
t5lite.bench.train_step. The HuggingFace/PyTorch counterpart is
t5lite/bench/hf_generate.py.

Prints ONE JSON line per method. Imports only jax/flax/numpy and t5lite (no
TensorFlow, seqio or gin), so it runs on any JAX backend.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import time
from typing import Optional, Sequence

import numpy as np

from t5lite import runtime

ALPHA = 0.6  # GNMT length penalty of beam search (T5X's default)
EOS_NEVER = -1  # no model emits it: every sequence decodes max_decode_len tokens


def parse_methods(spec: str) -> list[tuple[str, int]]:
  """'greedy,beam4' -> [('greedy', 1), ('beam', 4)]."""
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


def build_model(args):
  from t5lite.models import decoder_only, model as model_lib, t5  # pylint: disable=g-import-not-at-top

  overrides = dict(vocab_size=args.vocab_size, dtype=args.dtype)
  if args.model == "t5":
    model = model_lib.EncoderDecoderModel(config=t5.t5_config(args.preset, **overrides))
    init_lengths = {"inputs": 8, "targets": 8}
  else:
    model = model_lib.DecoderOnlyModel(config=decoder_only.decoder_only_config(args.preset, **overrides))
    init_lengths = {"targets": 8}
  return model, model.input_shapes(1, init_lengths)


def run(args) -> list[dict]:
  """Measures every method of args.methods; returns one result dict per method.

  Does not apply process settings (main() does); tests call this directly.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from t5lite import inference, partitioning  # pylint: disable=g-import-not-at-top
  from t5lite.models import model as model_lib, params as params_lib  # pylint: disable=g-import-not-at-top

  methods = parse_methods(args.methods)
  model, shapes = build_model(args)

  # What `t5lite infer` runs: the Predictor's jitted decode on a Partitioner's
  # mesh (one device), called inside the partitioner's context.
  part = partitioning.Partitioner(num_devices=1)
  _, shardings = inference.Predictor.shardings(model, part)
  t0 = time.perf_counter()
  key = jax.random.key(args.seed, impl=args.prng_impl or None)
  with part.context():
    params = model.init_params(key, shapes, shardings)
  jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  n_params = params_lib.count_params(params)
  predictor = inference.Predictor(model, params, batch_size=args.batch, partitioner=part)

  rng = np.random.default_rng(args.seed + 1)
  host_inputs = rng.integers(2, args.vocab_size, (args.batch, args.inputs), dtype=np.int32)
  inputs = part.global_batch({"inputs": host_inputs}, args.batch)["inputs"]
  jax.block_until_ready(inputs)
  sample_key = jax.random.key(0)

  def predict(params, inputs, opts):
    with part.context():
      return predictor.jitted("predict", opts)(params, inputs, sample_key)

  device = jax.devices()[0]
  results = []
  for method, beams in methods:
    opts = model_lib.DecodeOptions(
      method=method, max_decode_len=args.max_decode_len, beam_size=beams, alpha=ALPHA, eos_id=EOS_NEVER
    )
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    tokens, _ = predict(params, inputs, opts)
    jax.block_until_ready(tokens)
    compile_s = time.perf_counter() - t0

    times, cpu = [], []
    for _ in range(args.repeats):
      t0, c0 = time.perf_counter(), time.process_time()
      out = predict(params, inputs, opts)
      jax.block_until_ready(out)
      times.append(time.perf_counter() - t0)
      cpu.append(time.process_time() - c0)
    tokens = np.asarray(out[0])
    decoded_tokens = int(tokens.shape[0] * tokens.shape[1])  # best hypothesis of each row
    median = statistics.median(times)
    results.append(
      {
        "impl": "t5lite",
        "model": args.model,
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
        "min_s": round(min(times), 6),
        "repeats": len(times),
        "compile_s": round(compile_s, 2),
        "init_s": round(init_s, 2),
        "params": n_params,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "cpu_per_wall": round(sum(cpu) / sum(times), 2) if sum(times) > 0 else None,
        "loadavg_1m_start_end": [
          None if load_start is None else round(load_start, 2),
          round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        ],
        "vocab_size": args.vocab_size,
        "dtype": args.dtype,
        "prng_impl": args.prng_impl or None,
        "process_settings": getattr(args, "process_settings", None),
        "device": device.device_kind,
        "platform": device.platform,
        "num_devices": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
      }
    )
  return results


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", choices=("t5", "decoder_only"), default="t5")
  p.add_argument("--preset", default="tiny", help="t5: tiny/small/base/large/xl/xxl; decoder_only: tiny/small/base/1b")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=512, help="encoder input length (t5) or prompt length (decoder_only)")
  p.add_argument("--max_decode_len", type=int, default=64)
  p.add_argument("--methods", default="greedy,beam4", help="comma list of 'greedy' and 'beamN'")
  p.add_argument("--repeats", type=int, default=3, help="timed calls after the first (compile) call")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--vocab_size", type=int, default=32128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--prng_impl",
    default="",
    help="PRNG of the parameter init, e.g. 'unsafe_rbg' (compiles several times faster on "
    "CPU than threefry); default: JAX's. Only init_s depends on it",
  )
  runtime.add_flags(p)
  args = p.parse_args(argv)
  for name in ("batch", "inputs", "max_decode_len", "repeats"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1")
  if args.vocab_size < 3:
    p.error("--vocab_size must be >= 3 (ids 0 and 1 are pad and EOS)")
  try:
    parse_methods(args.methods)
  except ValueError as e:
    p.error(str(e))
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  args.process_settings = runtime.apply_flags(args)  # before JAX starts
  for result in run(args):
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()

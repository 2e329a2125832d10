"""Decoding throughput of HuggingFace `T5ForConditionalGeneration.generate`
(PyTorch, CPU): the baseline for t5lite.bench.decode.

    /tmp/hfvenv/bin/python t5lite/bench/hf_generate.py --preset tiny
    /tmp/hfvenv/bin/python t5lite/bench/hf_generate.py --preset small --batch 8 --inputs 512 \
        --max_decode_len 64 --methods greedy,beam4 --repeats 3

Needs torch and transformers (tested with torch 2.13.0, transformers 5.24.0),
e.g. `python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch
transformers numpy`. A standalone script, never imported by t5lite or its
tests.

Same shapes and measurement as t5lite.bench.decode --model t5: a randomly
initialised T5 v1.1 model of the same architecture (`tiny`: d_model 128,
d_ff 512, 4 heads of 32, 2+2 layers; `small`: d_model 512, d_ff 1024, 6 heads
of 64, 8+8 layers; gated-GELU, vocab 32128, 32 relative-position buckets up
to distance 128, no dropout, and an output projection of its own, untied from
the input embedding, which transformers 5 ties by default), random input ids
in [2, vocab) without padding, decoding from start id 0. `generate` runs with
max_new_tokens = min_new_tokens = --max_decode_len (EOS is suppressed until
then), so every sequence decodes exactly max_decode_len tokens, as t5lite's
eos_id=-1 does; `greedy` is num_beams=1, `beamN` is beam search with N beams,
length_penalty 0.6 and early_stopping=False; KV caching on, under
torch.inference_mode().

The first call (warm-up) is reported as compile_s; the median of the following
`--repeats` calls gives decoded_tokens_per_s = batch * max_decode_len /
median_s (the batch's output tokens, not beams * batch). Denormals are flushed
to zero by default (`--no-flush-denormal` keeps them); `--threads` sets
torch's intra-op threads (default: torch's own choice).

Prints ONE JSON line per method, with the keys of t5lite.bench.decode.
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
import torch
import transformers

ALPHA = 0.6  # length penalty of beam search, as t5lite.bench.decode

# T5 v1.1 sizes, as t5lite.models.t5.T5_PRESETS.
PRESETS = {
  "tiny": dict(d_model=128, d_ff=512, num_heads=4, d_kv=32, num_layers=2, num_decoder_layers=2),
  "small": dict(d_model=512, d_ff=1024, num_heads=6, d_kv=64, num_layers=8, num_decoder_layers=8),
}


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


def build_model(preset: str, vocab_size: int, dtype: str):
  config = transformers.T5Config(
    vocab_size=vocab_size,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    tie_word_embeddings=False,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
    **PRESETS[preset],
  )
  model = transformers.T5ForConditionalGeneration(config)
  if model.lm_head.weight is model.shared.weight:
    # transformers 5 always ties lm_head to the input embedding when it builds
    # a T5 (`tie_word_embeddings=False` only turns off the output scaling);
    # T5 v1.1 has its own output projection, as t5lite: give it one (same
    # init as HF's untied lm_head, normal with std 1).
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
  model.eval()
  if dtype == "bfloat16":
    model = model.to(torch.bfloat16)
  return model


def generate_kwargs(method: str, beams: int, max_decode_len: int) -> dict:
  kwargs = dict(
    max_new_tokens=max_decode_len,
    min_new_tokens=max_decode_len,
    num_beams=beams,
    do_sample=False,
    use_cache=True,
    early_stopping=False,
  )
  if method == "beam":
    kwargs["length_penalty"] = ALPHA
  return kwargs


def run(args) -> list[dict]:
  methods = parse_methods(args.methods)
  if args.flush_denormal:
    torch.set_flush_denormal(True)
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)

  t0 = time.perf_counter()
  model = build_model(args.preset, args.vocab_size, args.dtype)
  init_s = time.perf_counter() - t0
  n_params = sum(p.numel() for p in model.parameters())

  rng = np.random.default_rng(args.seed + 1)
  input_ids = torch.from_numpy(rng.integers(2, args.vocab_size, (args.batch, args.inputs), dtype=np.int64))
  attention_mask = torch.ones_like(input_ids)

  results = []
  for method, beams in methods:
    kwargs = generate_kwargs(method, beams, args.max_decode_len)

    def call():
      with torch.inference_mode():
        return model.generate(input_ids, attention_mask=attention_mask, **kwargs)

    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    out = call()
    compile_s = time.perf_counter() - t0

    times, cpu = [], []
    for _ in range(args.repeats):
      t0, c0 = time.perf_counter(), time.process_time()
      out = call()
      times.append(time.perf_counter() - t0)
      cpu.append(time.process_time() - c0)
    # generate returns the decoder start token followed by the new tokens.
    new_tokens = out.shape[1] - 1
    if out.shape[0] != args.batch or new_tokens != args.max_decode_len:
      raise RuntimeError(
        f"generate returned shape {tuple(out.shape)}; expected ({args.batch}, {args.max_decode_len + 1})"
      )
    median = statistics.median(times)
    results.append(
      {
        "impl": "hf_torch",
        "model": "t5",
        "preset": args.preset,
        "method": method,
        "batch": args.batch,
        "inputs": args.inputs,
        "max_decode_len": args.max_decode_len,
        "beam_size": beams,
        "alpha": ALPHA if method == "beam" else None,
        "decoded_tokens": int(out.shape[0] * new_tokens),
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
        "threads": torch.get_num_threads(),
        "flush_denormal": args.flush_denormal,
        "device": "cpu",
        "platform": "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
      }
    )
  return results


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=512, help="encoder input length")
  p.add_argument("--max_decode_len", type=int, default=64)
  p.add_argument("--methods", default="greedy,beam4", help="comma list of 'greedy' and 'beamN'")
  p.add_argument("--repeats", type=int, default=3, help="timed calls after the first (warm-up) call")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--vocab_size", type=int, default=32128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--flush-denormal",
    dest="flush_denormal",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="torch.set_flush_denormal(True) (default: on)",
  )
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
  args = p.parse_args(argv)
  for name in ("batch", "inputs", "max_decode_len", "repeats"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1")
  if args.vocab_size < 3:
    p.error("--vocab_size must be >= 3 (ids 0 and 1 are pad and EOS)")
  if args.threads < 0:
    p.error("--threads must be >= 0")
  try:
    parse_methods(args.methods)
  except ValueError as e:
    p.error(str(e))
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  for result in run(args):
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()

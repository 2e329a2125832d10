"""Decoding throughput of HuggingFace `T5ForConditionalGeneration.generate`
(PyTorch, CPU): the baseline for t5lite.bench.decode.

    cd REPO && /tmp/hfvenv/bin/python -m t5lite.bench.hf_generate --preset tiny
    cd REPO && /tmp/hfvenv/bin/python -m t5lite.bench.hf_generate --preset small --batch 8 --inputs 512 \
        --max_decode_len 64 --methods greedy,beam4 --repeats 3

Needs torch and transformers (tested with torch 2.13.0, transformers 5.24.0),
e.g. `python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch
transformers numpy`; from t5lite it imports only `t5lite.bench.decode_timing`
(plain Python), so t5lite need not be installed there: run it from the
repository root. Never imported by t5lite or its tests.

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
import platform
import time
from typing import Optional, Sequence

import numpy as np
import torch
import transformers

from t5lite.bench import decode_timing
from t5lite.bench.decode_timing import ALPHA, parse_methods

# T5 v1.1 sizes, as t5lite.models.t5.T5_PRESETS.
PRESETS = {
  "tiny": dict(d_model=128, d_ff=512, num_heads=4, d_kv=32, num_layers=2, num_decoder_layers=2),
  "small": dict(d_model=512, d_ff=1024, num_heads=6, d_kv=64, num_layers=8, num_decoder_layers=8),
}


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

    timing = decode_timing.time_calls(call, args.repeats)
    out = timing.output
    # generate returns the decoder start token followed by the new tokens.
    new_tokens = out.shape[1] - 1
    if out.shape[0] != args.batch or new_tokens != args.max_decode_len:
      raise RuntimeError(
        f"generate returned shape {tuple(out.shape)}; expected ({args.batch}, {args.max_decode_len + 1})"
      )
    common = decode_timing.result_fields(
      args, method, beams, timing, decoded_tokens=int(out.shape[0] * new_tokens), init_s=init_s, params=n_params
    )
    results.append(
      {
        "impl": "hf_torch",
        "model": "t5",
        **common,
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
  decode_timing.add_flags(p, inputs_help="encoder input length", first_call="warm-up")
  p.add_argument(
    "--flush-denormal",
    dest="flush_denormal",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="torch.set_flush_denormal(True) (default: on)",
  )
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
  args = p.parse_args(argv)
  decode_timing.check_flags(p, args)
  if args.threads < 0:
    p.error("--threads must be >= 0")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  for result in run(args):
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()

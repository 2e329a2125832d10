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
t5lite.bench.hf_generate; the flags, the timing loop and the common result
fields of both are t5lite.bench.decode_timing's.

Prints ONE JSON line per method. Imports only jax/flax/numpy and t5lite (no
TensorFlow, seqio or gin), so it runs on any JAX backend.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Optional, Sequence

import numpy as np

from t5lite import runtime
from t5lite.bench import decode_timing
from t5lite.bench.decode_timing import ALPHA, parse_methods

EOS_NEVER = -1  # no model emits it: every sequence decodes max_decode_len tokens


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
    timing = decode_timing.time_calls(lambda: jax.block_until_ready(predict(params, inputs, opts)), args.repeats)
    tokens = np.asarray(timing.output[0])
    decoded_tokens = int(tokens.shape[0] * tokens.shape[1])  # best hypothesis of each row
    common = decode_timing.result_fields(
      args, method, beams, timing, decoded_tokens=decoded_tokens, init_s=init_s, params=n_params
    )
    results.append(
      {
        "impl": "t5lite",
        "model": args.model,
        **common,
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
  decode_timing.add_flags(
    p, inputs_help="encoder input length (t5) or prompt length (decoder_only)", first_call="compile"
  )
  p.add_argument(
    "--prng_impl",
    default="",
    help="PRNG of the parameter init, e.g. 'unsafe_rbg' (compiles several times faster on "
    "CPU than threefry); default: JAX's. Only init_s depends on it",
  )
  runtime.add_flags(p)
  args = p.parse_args(argv)
  decode_timing.check_flags(p, args)
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  args.process_settings = runtime.apply_flags(args)  # before JAX starts
  for result in run(args):
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()

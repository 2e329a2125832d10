"""Tests for t5lite/bench/decode.py: a tiny in-process run of each model kind.

Calls `run` directly, so the process settings of `main` (malloc, XLA_FLAGS)
are never applied in the test process.
"""

import json

import pytest

from t5lite.bench import decode

BATCH, INPUTS, LENGTH, VOCAB = 2, 16, 4, 128


def test_parse_methods():
  assert decode.parse_methods("greedy,beam4") == [("greedy", 1), ("beam", 4)]
  assert decode.parse_methods(" beam1 ,") == [("beam", 1)]
  for bad in ("beam", "beam0", "sample", "", "greedy,beamx"):
    with pytest.raises(ValueError):
      decode.parse_methods(bad)


def test_parse_args_rejects_bad_methods():
  with pytest.raises(SystemExit):
    decode.parse_args(["--methods", "beam0"])


@pytest.mark.parametrize("model", ["t5", "decoder_only"])
def test_decode_bench_tiny(model):
  args = decode.parse_args(
    [
      "--model",
      model,
      "--preset",
      "tiny",
      "--vocab_size",
      str(VOCAB),
      "--batch",
      str(BATCH),
      "--inputs",
      str(INPUTS),
      "--max_decode_len",
      str(LENGTH),
      "--repeats",
      "1",
      "--methods",
      "greedy,beam2",
      "--prng_impl",
      "unsafe_rbg",  # init compiles several times faster than with threefry on CPU
    ]
  )
  results = decode.run(args)
  assert [(r["method"], r["beam_size"]) for r in results] == [("greedy", 1), ("beam", 2)]
  for r in results:
    json.loads(json.dumps(r))  # one JSON line each
    assert r["impl"] == "t5lite"
    assert r["model"] == model and r["preset"] == "tiny"
    assert (r["batch"], r["inputs"], r["max_decode_len"]) == (BATCH, INPUTS, LENGTH)
    assert r["decoded_tokens"] == BATCH * LENGTH  # eos_id=-1: every row decodes all steps
    assert r["decoded_tokens_per_s"] > 0
    assert r["decoded_tokens_per_s"] == pytest.approx(BATCH * LENGTH / r["median_s"], rel=0.02)
    assert r["median_s"] > 0 and r["compile_s"] > 0 and r["repeats"] == 1
    assert r["params"] > 0 and r["peak_rss_mb"] > 0
    assert r["dtype"] == "float32" and r["vocab_size"] == VOCAB
    assert r["platform"] == "cpu" and r["device"] and r["jax"]
    assert r["process_settings"] is None  # run() alone applies none
  assert results[0]["params"] == results[1]["params"]

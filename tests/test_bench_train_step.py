"""t5lite/bench/train_step.py: a tiny in-process run through the Trainer's step."""

import json

import pytest

from t5lite.bench import train_step


def test_train_step_bench_tiny():
  args = train_step.parse_args(
    [
      "--preset",
      "tiny",
      "--vocab_size",
      "128",
      "--batch",
      "2",
      "--inputs",
      "16",
      "--targets",
      "8",
      "--steps",
      "2",
    ]
  )
  r = train_step.run(args)
  json.loads(json.dumps(r))
  assert r["impl"] == "t5lite" and r["steps"] == 2 and r["num_devices"] == 1
  assert r["tokens_per_s"] > 0 and r["median_step_s"] > 0 and r["compile_s"] > 0
  assert r["tokens_per_s"] == pytest.approx(2 * (16 + 8) / r["median_step_s"], rel=1e-2)
  assert r["params"] > 0 and r["flops_per_step"] > 0
  # A fresh model starts near ln(vocabulary) and the two updated steps change the loss.
  assert abs(r["first_loss"] - 4.85) < 1.0 and r["last_loss"] != r["first_loss"]

"""Input pipeline throughput: tokenize, objective and packing, end to end.

    python -m t5lite.bench.data --task pydocs_span_corruption --examples 2000

Prints one JSON line: for the encoder-decoder feature converter and for the
decoder-only one (PrefixLM for tasks with inputs, LM otherwise), the task
examples per second and the non-padding tokens per second that come out as
packed batches. The dataset and vocabulary are prepared before timing starts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Mapping, Optional, Sequence


def _measure(task_name: str, lengths: Mapping[str, int], converter: type, examples: int, batch: int, seed: int) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top

  from t5lite.data import pipeline  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  ds = pipeline.get_dataset(
    task_name,
    lengths,
    split="train",
    batch_size=batch,
    converter=converter,
    shuffle=True,
    seed=seed,
    num_epochs=None,
  )
  it = ds.as_numpy_iterator()
  first = next(it)  # graph building and the first batch
  start = time.perf_counter()
  setup_s = start - t0
  seen = tokens = rows = 0
  seg_keys = [k for k in first if k.endswith("segment_ids")]
  tok_keys = [k for k in first if k.endswith("target_tokens") or k == "encoder_input_tokens"]
  while seen < examples:
    b = next(it)
    seen += int(b[seg_keys[0]].max(axis=1).sum()) if seg_keys else len(b[tok_keys[0]])
    tokens += int(sum(np.count_nonzero(b[k]) for k in tok_keys))
    rows += len(b[tok_keys[0]])
  elapsed = time.perf_counter() - start
  return {
    "converter": pipeline.converter_name(converter),
    "examples_per_s": round(seen / elapsed, 1),
    "tokens_per_s": round(tokens / elapsed, 1),
    "examples_per_row": round(seen / rows, 2),
    "examples": seen,
    "seconds": round(elapsed, 2),
    "setup_s": round(setup_s, 2),
  }


def run(task: str, examples: int, inputs: int, targets: int, batch: int, seed: int = 0) -> dict:
  """The benchmark's JSON record for the registered task or mixture `task` (see the module docstring).

  Raises:
    ValueError: `task` is not registered (import the module that registers it first).
  """
  import seqio  # pylint: disable=g-import-not-at-top

  from t5lite.data import registration  # pylint: disable=g-import-not-at-top

  t = registration.get_task_or_mixture(task)
  has_inputs = "inputs" in t.output_features
  # Build the corpus and vocabulary before any timing.
  for sub in getattr(t, "tasks", [t]):
    if hasattr(sub.source, "prepare"):
      sub.source.prepare()
    vocabulary = sub.output_features["targets"].vocabulary
    if hasattr(vocabulary, "load_model"):
      vocabulary.load_model()
  result = {"bench": "data", "task": task, "batch": batch, "cpus": os.cpu_count()}
  if has_inputs:
    lengths = {"inputs": inputs, "targets": targets}
    result["enc_dec"] = _measure(task, lengths, seqio.EncDecFeatureConverter, examples, batch, seed)
    result["decoder_only"] = _measure(task, lengths, seqio.PrefixLMFeatureConverter, examples, batch, seed)
  else:
    result["decoder_only"] = _measure(
      task, {"targets": inputs + targets}, seqio.LMFeatureConverter, examples, batch, seed
    )
  return result


def main(argv: Optional[Sequence[str]] = None) -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--task", default="pydocs_span_corruption")
  p.add_argument("--examples", type=int, default=2000)
  p.add_argument("--inputs", type=int, default=512)
  p.add_argument("--targets", type=int, default=114)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  from t5lite import gin_entry  # pylint: disable=g-import-not-at-top

  gin_entry.import_task_modules()  # the built-in tasks (a command line, as train/infer/eval)
  print(json.dumps(run(a.task, a.examples, a.inputs, a.targets, a.batch, a.seed)))


if __name__ == "__main__":
  main()

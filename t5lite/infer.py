"""Inference entry point: decode (or score) a task split or a file into JSONL.

    python -m t5lite.infer --gin_file=runs/quickstart_finetune/config.gin \\
        --gin_file=runs/infer.gin --gin.INFER_OUTPUT_DIR=\\"/tmp/infer\\"

The first gin file defines the model and the task (a run's config.gin, or a
model file plus --gin.MIXTURE_OR_TASK_NAME/TASK_FEATURE_LENGTHS);
gin/runs/infer.gin lists the settings (mode, decoding method, input file, ...).

Output: one JSON object per line, `{"inputs", "prediction", "score"}` (plus
`"targets"` when the data has them) in predict mode, `{"inputs", "targets",
"score"}` in score mode, where score is the log-likelihood of the prediction
or target. Each process writes its own shard of the examples to
`INFER_OUTPUT_DIR/{name}-{mode}-{step}.jsonl-{process:05d}-of-{count:05d}`
(T5X's layout) and flushes after every batch. Running the same command again
resumes: the complete batches of lines are kept (a torn last line or a partial
batch is dropped) and decoding continues with the first example after them, so
nothing is lost or duplicated and the file ends up the same as an
uninterrupted run's. A `.done` file next to the shard records a finished shard.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterator, Mapping, Optional, Sequence

import jax

from t5lite import inference, partitioning
from t5lite.models.model import BaseModel, DecodeOptions

MODES = ("predict", "score")
REQUIRED_MACROS = ("INFER_OUTPUT_DIR", "CHECKPOINT_PATH", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "MODEL")


# ----------------------------------------------------------------------------
# Examples: (inputs text, targets text or None), this process's share.
# ----------------------------------------------------------------------------
def file_examples(path: str, mode: str) -> Iterator[tuple[int, str, Optional[str]]]:
  """(line number, inputs, targets) of a .jsonl file ({"inputs", "targets"?}) or a
  text file (one input per line)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"INFER_INPUT_FILE={path!r} does not exist.")
  is_jsonl = path.endswith((".jsonl", ".json"))
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if is_jsonl:
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{n}: not a JSON object ({e})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), str):
          raise ValueError(f"{path}:{n}: each line needs a string field 'inputs' (and 'targets' to score)")
        targets = obj.get("targets")
        if mode == "score" and not isinstance(targets, str):
          raise ValueError(f"{path}:{n}: score mode needs a string field 'targets'")
        yield n, obj["inputs"], targets
      else:
        if mode == "score":
          raise ValueError(f"score mode needs targets: give a .jsonl file with 'inputs' and 'targets', not {path!r}")
        yield n, line, None


def task_examples(name: str, split: str, lengths: Mapping[str, int], seed: int = 0) -> Iterator[tuple[int, Any, Any]]:
  """(index, inputs, targets) of a task split, as token-id lists (pretokenized
  text where the task keeps it is used only for the output file)."""
  import seqio  # pylint: disable=g-import-not-at-top

  import t5lite_tasks  # pylint: disable=g-import-not-at-top,unused-import
  from t5lite.data import registration  # pylint: disable=g-import-not-at-top

  task = registration.get_task_or_mixture(name)
  if split not in task.splits:
    raise ValueError(f"Split {split!r} is not in {name!r}; valid: {sorted(task.splits)}.")
  tasks = task.tasks if isinstance(task, seqio.Mixture) else [task]  # a mixture: each task in turn
  i = 0
  for t in tasks:
    ds = t.get_dataset(dict(lengths), split=split, shuffle=False, seed=seed, num_epochs=1, use_cached=False,
                       trim_output_features=False)
    for ex in ds.as_numpy_iterator():
      yield i, ex, None
      i += 1


def _shard(items: Iterator, index: int, count: int) -> Iterator:
  for i, x in enumerate(items):
    if i % count == index:
      yield x


# ----------------------------------------------------------------------------
# Resumable output.
# ----------------------------------------------------------------------------
def shard_path(output_dir: str, name: str, mode: str, step: Optional[int]) -> str:
  step_part = "" if step is None or step < 0 else f"-{step}"
  return os.path.join(
      output_dir, f"{name}-{mode}{step_part}.jsonl-{jax.process_index():05d}-of-{jax.process_count():05d}")


def completed_lines(path: str, multiple_of: int = 1) -> int:
  """Lines already in `path` that a resumed run keeps: complete lines, cut back
  to a multiple of `multiple_of` (the batch size, so that every example is
  decoded in the same batch as in an uninterrupted run, which keeps the
  output identical to the bit). The rest is truncated away."""
  if not os.path.exists(path):
    return 0
  with open(path, "rb+") as f:
    data = f.read()
    ends = [i + 1 for i, b in enumerate(data) if b == 0x0A]
    keep_lines = len(ends) // multiple_of * multiple_of
    keep = ends[keep_lines - 1] if keep_lines else 0
    if keep != len(data):
      f.truncate(keep)
  return keep_lines


def infer(
    *,
    model: BaseModel,
    checkpoint_path: str,
    output_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    split: str = "validation",
    input_file: Optional[str] = None,
    mode: str = "predict",
    batch_size: int = 8,
    method: str = "greedy",
    max_decode_len: Optional[int] = None,
    beam_size: int = 4,
    alpha: float = 0.6,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    on_long_input: str = "truncate",
    max_examples: Optional[int] = None,
    checkpoint_step: Optional[int] = None,
    data_dir: Optional[str] = None,
    partitioner: Optional[partitioning.Partitioner] = None,
) -> dict[str, Any]:
  """Writes this process's share of predictions/scores; returns a summary."""
  if mode not in MODES:
    raise ValueError(f"INFER_MODE={mode!r}; valid modes are {MODES}")
  options = DecodeOptions(method=method, max_decode_len=max_decode_len or task_feature_lengths.get("targets", 64),
                          beam_size=beam_size, alpha=alpha, temperature=temperature, top_k=top_k, top_p=top_p)
  if data_dir:
    from t5lite.data import sources  # pylint: disable=g-import-not-at-top

    sources.set_data_dir(data_dir)
  vocabulary = inference.task_vocabulary(mixture_or_task_name)
  predictor = inference.Predictor.restore(
      model, checkpoint_path, step=checkpoint_step, partitioner=partitioner, batch_size=batch_size,
      vocabulary=vocabulary, task_feature_lengths=task_feature_lengths, options=options,
      on_long_input=on_long_input, seed=seed,
      add_eos_to_inputs=inference.task_adds_eos_to_inputs(mixture_or_task_name, model))
  if input_file:
    name = os.path.splitext(os.path.basename(input_file))[0]
    source = file_examples(input_file, mode)
  else:
    name = f"{mixture_or_task_name}-{split}"
    source = task_examples(mixture_or_task_name, split, task_feature_lengths, seed)
  if max_examples is not None:
    source = (x for i, x in enumerate(source) if i < max_examples)
  os.makedirs(output_dir, exist_ok=True)
  path = shard_path(output_dir, name, mode, predictor.step)
  done_marker = path + ".done"
  if os.path.exists(done_marker) and os.path.exists(path):
    with open(done_marker, encoding="utf-8") as f:
      finished = json.load(f).get("lines")
    with open(path, "rb") as f:
      if f.read().count(b"\n") == finished:  # a finished shard: nothing to do
        return {"output": path, "lines": finished, "resumed_after": finished, "written": 0, "seconds": 0.0,
                "checkpoint_step": predictor.step, "truncated": 0}
    os.remove(done_marker)
  already = completed_lines(path, batch_size)
  local = _shard(source, jax.process_index(), jax.process_count())
  for _ in range(already):  # resume: skip what has a line
    next(local, None)
  written, start = 0, time.time()
  with open(path, "a", encoding="utf-8") as out:
    for chunk in _chunks_agreed(local, batch_size):
      lines = _run_chunk(predictor, chunk, mode, input_file is None)
      for line in lines:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
      out.flush()
      os.fsync(out.fileno())
      written += len(lines)
  with open(done_marker, "w", encoding="utf-8") as f:
    json.dump({"lines": already + written, "checkpoint_step": predictor.step}, f)
  summary = {
      "output": path, "lines": already + written, "resumed_after": already, "written": written,
      "seconds": round(time.time() - start, 2), "checkpoint_step": predictor.step,
      "truncated": predictor.truncated,
  }
  return summary


def _chunks_agreed(items: Iterator, size: int) -> Iterator[list]:
  """Chunks of `size` items until every process has run out (processes must
  call the jitted steps together, so one with fewer items runs empty chunks)."""
  while True:
    chunk = [x for _, x in zip(range(size), items)]
    if inference._agreed_count(len(chunk)) == 0:  # pylint: disable=protected-access
      return
    yield chunk


def _run_chunk(predictor: inference.Predictor, chunk: Sequence, mode: str, from_task: bool) -> list[dict]:
  vocab = predictor.vocabulary
  lengths = predictor.task_feature_lengths
  if from_task:
    texts_in, texts_tgt, ids_in, ids_tgt = [], [], [], []
    for i, ex, _ in chunk:
      if "inputs" in ex:
        ids_in.append(predictor.fit_length(ex["inputs"].tolist(), lengths.get("inputs"), "inputs", i))
        texts_in.append(_text(ex, "inputs", vocab))
      else:
        ids_in.append([])
        texts_in.append("")
      ids_tgt.append(predictor.fit_length(ex["targets"].tolist(), lengths.get("targets"), "targets", i))
      texts_tgt.append(_text(ex, "targets", vocab))
  else:
    texts_in = [x[1] for x in chunk]
    texts_tgt = [x[2] for x in chunk]
    ids_in = predictor.encode_inputs(texts_in) if chunk else []
    ids_tgt = predictor.encode_targets(texts_tgt) if mode == "score" and chunk else None
  if mode == "score":
    scores = predictor.score_examples(predictor.score_features(ids_in, ids_tgt)) if chunk else \
        predictor.score_examples(predictor.score_features([[1]], [[1]]))[:0]
    return [{"inputs": a, "targets": b, "score": float(s)} for a, b, s in zip(texts_in, texts_tgt, scores)]
  tokens, scores = predictor.predict_tokens(predictor.pad(ids_in) if chunk else predictor.pad([[1]])[:0])
  preds = predictor.decode_tokens(tokens)
  lines = []
  for a, b, p, s in zip(texts_in, texts_tgt, preds, scores):
    line = {"inputs": a, "prediction": p, "score": float(s)}
    if b is not None:
      line["targets"] = b
    lines.append(line)
  return lines


def _text(ex: Mapping[str, Any], key: str, vocab) -> str:
  pre = ex.get(f"{key}_pretokenized")
  if pre is not None:
    return pre.decode("utf-8") if isinstance(pre, bytes) else str(pre)
  ids = [int(t) for t in ex[key] if int(t) > 1]
  return vocab.decode(ids)


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
  from t5lite import train  # pylint: disable=g-import-not-at-top

  rc, summary = train.run_gin_entry(argv, "t5lite.infer", "infer", REQUIRED_MACROS, "infer")
  if rc == 0:
    print(json.dumps(summary))
  return rc


if __name__ == "__main__":
  from t5lite import runtime  # pylint: disable=g-import-not-at-top

  runtime.apply_process_settings()
  sys.exit(main())

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

from t5lite import checks, evaluation, inference, partitioning
from t5lite.models.model import BaseModel, EncoderDecoderModel

MODES = ("predict", "score")


# ----------------------------------------------------------------------------
# Examples: (inputs text, targets text or None), this process's share.
# ----------------------------------------------------------------------------
MAX_REPORTED_LINES = 10  # bad lines listed in one error


def _check_line(text: str, is_jsonl: bool, mode: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
  """(inputs, targets, None) of one line, or (None, None, what is wrong with it)."""
  if not is_jsonl:
    if not text.strip():
      return None, None, "empty line (a text file holds one input per line)"
    return text, None, None
  if not text.strip():
    return None, None, "empty line (each line of a .jsonl file must be a JSON object)"
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    return None, None, f"not valid JSON ({e.msg} at column {e.colno})"
  if not isinstance(obj, dict):
    return None, None, f"a JSON {type(obj).__name__}, not an object with 'inputs'"
  keys = ["inputs"] + (["targets"] if mode == "score" else [])
  for key in keys:
    if key not in obj:
      why = " (score mode scores the targets)" if key == "targets" else ""
      return None, None, f"missing key '{key}'{why}; the line has keys {sorted(obj)}"
    if not isinstance(obj[key], str):
      return None, None, f"'{key}' is a JSON {type(obj[key]).__name__}, not a string"
  if not obj["inputs"].strip():
    return None, None, "'inputs' is empty"
  return obj["inputs"], obj.get("targets"), None


def read_input_file(path: str, mode: str) -> list[tuple[int, str, Optional[str]]]:
  """Every (line number, inputs, targets) of an input file, checked whole.

  A `.jsonl`/`.json` file holds one JSON object per line with a string
  'inputs' (and 'targets', required in score mode); any other file holds one
  input per line. Line numbers are 1-based, as an editor shows them. Blank
  lines at the end of the file are ignored; a blank line before the last
  input is an error (its output line would be missing). The whole file is
  read before anything is decoded or written, so a bad line 11 stops the run
  before line 1 is decoded.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: bad lines (empty, not UTF-8, not valid JSON, not an object,
      a missing or non-string 'inputs'/'targets'), each named
      `path:line: what is wrong` (the first MAX_REPORTED_LINES), or score
      mode on a text file.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"INFER_INPUT_FILE={path!r} does not exist.")
  is_jsonl = path.endswith((".jsonl", ".json"))
  if mode == "score" and not is_jsonl:
    raise ValueError(f"score mode needs targets: give a .jsonl file with 'inputs' and 'targets', not {path!r}")
  with open(path, "rb") as f:
    raw_lines = f.read().split(b"\n")
  if raw_lines and raw_lines[-1] == b"":
    raw_lines.pop()  # the newline that ends the last line
  while raw_lines and not raw_lines[-1].strip():
    raw_lines.pop()  # blank lines at the end
  examples, problems = [], []
  for n, raw in enumerate(raw_lines, 1):
    try:
      text = raw.rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError as e:
      problems.append(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start})")
      continue
    inputs, targets, problem = _check_line(text, is_jsonl, mode)
    if problem:
      problems.append(f"{path}:{n}: {problem}")
    else:
      examples.append((n, inputs, targets))
  if problems:
    more = f"; ... and {len(problems) - MAX_REPORTED_LINES} more" if len(problems) > MAX_REPORTED_LINES else ""
    # One line (the entry point prints errors on one line): the bad lines separated by ' | '.
    raise ValueError(
      f"INFER_INPUT_FILE={path!r} has {len(problems)} bad line(s); nothing was decoded or written: "
      + " | ".join(problems[:MAX_REPORTED_LINES])
      + more
    )
  if not examples:
    raise ValueError(
      f"INFER_INPUT_FILE={path!r} holds no input: give one input per line (.jsonl: {{\"inputs\": ...}})."
    )
  return examples


def task_examples(name: str, split: str, lengths: Mapping[str, int], seed: int = 0) -> Iterator[tuple[int, Any, Any]]:
  """(index, inputs, targets) of a task split, as token-id lists (pretokenized
  text where the task keeps it is used only for the output file)."""
  import seqio  # pylint: disable=g-import-not-at-top

  from t5lite.data import registration  # pylint: disable=g-import-not-at-top

  task = registration.get_task_or_mixture(name)
  if split not in task.splits:
    raise ValueError(f"Split {split!r} is not in {name!r}; valid: {sorted(task.splits)}.")
  tasks = task.tasks if isinstance(task, seqio.Mixture) else [task]  # a mixture: each task in turn
  i = 0
  for t in tasks:
    ds = t.get_dataset(
      dict(lengths), split=split, shuffle=False, seed=seed, num_epochs=1, use_cached=False, trim_output_features=False
    )
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
    output_dir, f"{name}-{mode}{step_part}.jsonl-{jax.process_index():05d}-of-{jax.process_count():05d}"
  )


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
  vocabulary_model: Optional[str] = None,
  partitioner: Optional[partitioning.Partitioner] = None,
) -> dict[str, Any]:
  """Writes this process's share of predictions/scores; returns a summary.

  Every setting is checked before the checkpoint is read, and an input file is
  read and encoded whole before anything is decoded or written; errors name
  the gin setting (INFER_BATCH_SIZE, BEAM_SIZE, ...) or the file and line.
  The task or mixture must be registered (`import t5lite_tasks`, or the
  module that registers it); with no task (None: a converted checkpoint's
  config.gin), an input file is decoded with VOCABULARY_MODEL's vocabulary. `vocabulary_model` (macro VOCABULARY_MODEL,
  which a run's config.gin carries): the SentencePiece model the default
  vocabulary uses, as in `train.train` (see `vocab.use_model_file`); None:
  the default.

  Raises:
    ValueError: an unknown mode or method, a number of the wrong type or range
      (a bool, NaN, infinity, BEAM_SIZE=0, TOP_P=2, ...), a bad input line,
      a VOCABULARY_MODEL that is not a T5 SentencePiece model, no task
      without both an input file and VOCABULARY_MODEL.
    FileNotFoundError: no input file, no checkpoint, no VOCABULARY_MODEL file.
  """
  if mode not in MODES:
    raise ValueError(f"INFER_MODE={mode!r}; valid modes are {MODES}")
  if mode == "score" and getattr(model, "head", None) is not None:
    raise ValueError(
      "INFER_MODE='score' scores target text, which an encoder-only model does not generate; use "
      "INFER_MODE='predict' (a classifier predicts a class name, an MLM model each position's token)"
    )
  # Every setting before the checkpoint is read; decoding settings whatever DECODE_METHOD is
  # (a BEAM_SIZE=0 left in a gin file is an error before someone switches to beam search).
  checks.check_lengths("TASK_FEATURE_LENGTHS", task_feature_lengths)
  batch_size = checks.check_int("INFER_BATCH_SIZE", batch_size, minimum=1)
  options = evaluation.decode_options(
    task_feature_lengths,
    method=method,
    max_decode_len=max_decode_len,
    beam_size=beam_size,
    alpha=alpha,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
  )
  seed = checks.check_int("INFER_SEED", seed, minimum=0)
  max_examples = checks.check_int("INFER_MAX_EXAMPLES", max_examples, minimum=1, allow_none=True, hint=" (None: all)")
  checkpoint_step = checks.check_int(
    "CHECKPOINT_STEP", checkpoint_step, minimum=0, allow_none=True, hint=" (None: the latest)"
  )
  examples = None
  if input_file:  # the whole file, before the checkpoint is read or anything written
    examples = read_input_file(input_file, mode)
    if max_examples is not None:
      examples = examples[:max_examples]
  from t5lite.data import vocab  # pylint: disable=g-import-not-at-top

  vocab.use_model_file(vocabulary_model)  # before any task vocabulary is used
  if data_dir:
    from t5lite.data import data_dirs  # pylint: disable=g-import-not-at-top

    data_dirs.set_data_dir(data_dir)
  if mixture_or_task_name:
    vocabulary = inference.task_vocabulary(mixture_or_task_name)
    labels = inference.task_vocabulary(mixture_or_task_name, labels=True)
    add_eos = inference.task_adds_eos_to_inputs(mixture_or_task_name, model)
  else:  # a converted checkpoint's config.gin: no task, the checkpoint's own SentencePiece model
    if examples is None or vocabulary_model is None:
      raise ValueError(
        "MIXTURE_OR_TASK_NAME is None: give INFER_INPUT_FILE and VOCABULARY_MODEL (a `t5lite convert from-hf` "
        "directory's config.gin sets VOCABULARY_MODEL when the checkpoint ships spiece.model), or a task."
      )
    vocabulary = vocab.sentencepiece_vocabulary(vocab.model_file_setting())
    labels = None
    add_eos = isinstance(model, EncoderDecoderModel)
  predictor = inference.Predictor.restore(
    model,
    checkpoint_path,
    step=checkpoint_step,
    partitioner=partitioner,
    batch_size=batch_size,
    vocabulary=vocabulary,
    task_feature_lengths=task_feature_lengths,
    options=options,
    on_long_input=on_long_input,
    seed=seed,
    add_eos_to_inputs=add_eos,
    labels=labels,
  )
  if examples is not None:
    name = os.path.splitext(os.path.basename(input_file))[0]
    rows = _file_rows(predictor, input_file, examples, mode)  # every line encoded: errors before any output
  else:
    name = f"{mixture_or_task_name}-{split}"
    source = task_examples(mixture_or_task_name, split, task_feature_lengths, seed)
    if max_examples is not None:
      source = (x for i, x in enumerate(source) if i < max_examples)
    rows = (_task_row(predictor, i, ex) for i, ex, _ in source)
  os.makedirs(output_dir, exist_ok=True)
  path = shard_path(output_dir, name, mode, predictor.step)
  done_marker = path + ".done"
  if os.path.exists(done_marker) and os.path.exists(path):
    with open(done_marker, encoding="utf-8") as f:
      finished = json.load(f).get("lines")
    with open(path, "rb") as f:
      if f.read().count(b"\n") == finished:  # a finished shard: nothing to do
        return {
          "output": path,
          "lines": finished,
          "resumed_after": finished,
          "written": 0,
          "seconds": 0.0,
          "checkpoint_step": predictor.step,
          "truncated": 0,
        }
    os.remove(done_marker)
  already = completed_lines(path, batch_size)
  local = _shard(rows, jax.process_index(), jax.process_count())
  for _ in range(already):  # resume: skip what has a line
    next(local, None)
  written, start = 0, time.time()
  with open(path, "a", encoding="utf-8") as out:
    for chunk in _chunks_agreed(local, batch_size):
      lines = _run_chunk(predictor, chunk, mode)
      for line in lines:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
      out.flush()
      os.fsync(out.fileno())
      written += len(lines)
  with open(done_marker, "w", encoding="utf-8") as f:
    json.dump({"lines": already + written, "checkpoint_step": predictor.step}, f)
  summary = {
    "output": path,
    "lines": already + written,
    "resumed_after": already,
    "written": written,
    "seconds": round(time.time() - start, 2),
    "checkpoint_step": predictor.step,
    "truncated": predictor.truncated,
  }
  return summary


def _chunks_agreed(items: Iterator, size: int) -> Iterator[list]:
  """Chunks of `size` items until every process has run out (processes must
  call the jitted steps together, so one with fewer items runs empty chunks)."""
  while True:
    chunk = [x for _, x in zip(range(size), items)]
    if inference.agreed_count(len(chunk)) == 0:
      return
    yield chunk


# A row to decode or score: (inputs text, targets text or None, inputs ids, targets ids or None).
Row = tuple[str, Optional[str], list[int], Optional[list[int]]]


def _file_rows(
  predictor: inference.Predictor, path: str, examples: Sequence[tuple[int, str, Optional[str]]], mode: str
) -> list[Row]:
  """Rows of an input file's examples, encoded as the predictor does for predict/score."""
  labels = [f"{path}:{n}" for n, _, _ in examples]
  texts_in = [x[1] for x in examples]
  texts_tgt = [x[2] for x in examples]
  ids_in = predictor.encode_inputs(texts_in, labels=labels)
  if mode == "score":
    ids_tgt = predictor.encode_targets(texts_tgt, labels=[f"{label} (targets)" for label in labels])
  else:
    ids_tgt = [None] * len(examples)
  return list(zip(texts_in, texts_tgt, ids_in, ids_tgt))


def _fit_task_ids(predictor: inference.Predictor, ids: list[int], what: str, label: str) -> list[int]:
  """A task's ids (EOS already appended where the feature adds it) cut as training cuts them."""
  eos = bool(ids) and ids[-1] == inference.EOS_ID
  return predictor.fit_length(ids[:-1] if eos else ids, what, label, append_eos=eos)


def _task_row(predictor: inference.Predictor, i: int, ex: Mapping[str, Any]) -> Row:
  vocab = predictor.vocabulary
  if "inputs" in ex:
    ids_in = _fit_task_ids(predictor, ex["inputs"].tolist(), "inputs", f"example {i} inputs")
    text_in = _text(ex, "inputs", vocab)
  else:
    ids_in, text_in = [], ""
  ids_tgt = _fit_task_ids(predictor, ex["targets"].tolist(), "targets", f"example {i} targets")
  return text_in, _text(ex, "targets", vocab), ids_in, ids_tgt


def _run_chunk(predictor: inference.Predictor, chunk: Sequence[Row], mode: str) -> list[dict]:
  texts_in = [r[0] for r in chunk]
  texts_tgt = [r[1] for r in chunk]
  ids_in = [r[2] for r in chunk]
  ids_tgt = [r[3] for r in chunk]
  if mode == "score":
    scores = (
      predictor.score_examples(predictor.score_features(ids_in, ids_tgt))
      if chunk
      else predictor.score_examples(predictor.score_features([[1]], [[1]]))[:0]
    )
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
  """`python -m t5lite.infer` / `t5lite infer`: infer() as the gin files configure it.

  Prints the summary as a JSON line; returns the exit code (0, or 1 after a
  one-line error, see gin_entry.run_gin_entry).
  """
  from t5lite import gin_entry  # pylint: disable=g-import-not-at-top

  rc, summary = gin_entry.run_gin_entry(argv, "infer")
  if rc == 0:
    print(json.dumps(summary))
  return rc


if __name__ == "__main__":
  from t5lite import runtime  # pylint: disable=g-import-not-at-top

  runtime.apply_process_settings()
  sys.exit(main())

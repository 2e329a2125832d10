"""`t5lite infer` input files and settings (t5lite/infer.py): checked whole before anything is decoded or written.

A tiny T5 with random parameters is saved as a checkpoint and a text-to-text
task over a SentencePiece vocabulary trained here is registered, so that the
run would get as far as decoding and writing if the checks were missing.
"""

import json
import math

import jax
import pytest
import seqio
import tensorflow as tf
from pydoc_data.topics import topics

from t5lite import checkpointing, infer as infer_lib, partitioning
from t5lite.data import registration, vocab as vocab_lib
from t5lite.models import model as model_lib, t5

TASK = "tinfer_copy"
LENGTHS = {"inputs": 16, "targets": 8}
GOOD = [f"copy: word number {i}" for i in range(1, 13)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A checkpoint of a tiny T5 (random parameters) whose task has a 600-piece vocabulary."""
  root = tmp_path_factory.mktemp("infer_run")
  texts = [topics[k] for k in sorted(topics)][:40]
  vocab = vocab_lib.sentencepiece_vocabulary(
    vocab_lib.train_sentencepiece(texts, str(root / "spm.model"), vocab_size=600)
  )

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": GOOD, "targets": GOOD})

  registration.register_text_to_text_task(TASK, seqio.FunctionDataSource(dataset_fn, splits=["validation"]), vocab)
  model = model_lib.EncoderDecoderModel(config=t5.t5_config("tiny", vocab_size=vocab.vocab_size))
  params = model.init_params(jax.random.key(0), model.input_shapes(1, LENGTHS))
  ckpt = checkpointing.Checkpointer(str(root / "checkpoints"), async_save=False)
  ckpt.save(1, params, {"count": jax.numpy.zeros((), jax.numpy.int32)}, {})  # inference reads only params
  ckpt.close()
  return str(root), model


def _infer(run_dir, out, **kwargs):
  path, model = run_dir
  args = dict(
    model=model,
    checkpoint_path=path,
    output_dir=str(out),
    mixture_or_task_name=TASK,
    task_feature_lengths=LENGTHS,
    batch_size=4,
    max_decode_len=3,
    partitioner=partitioning.Partitioner(num_devices=1),
  )
  args.update(kwargs)
  return infer_lib.infer(**args)


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


@pytest.mark.parametrize(
  "bad_line, suffix, message",
  [
    ("", ".txt", "empty line"),
    ("   ", ".txt", "empty line"),
    ("", ".jsonl", "empty line"),
    ('{"inputs": "copy: a", ', ".jsonl", "not valid JSON"),
    ('{"input": "copy: a"}', ".jsonl", "missing key 'inputs'; the line has keys ['input']"),
    ('{"inputs": 7}', ".jsonl", "'inputs' is a JSON int, not a string"),
    ('["copy: a"]', ".jsonl", "a JSON list, not an object"),
    ("[NLU]", ".txt", "is only the UL2 mode token [NLU]"),  # found by encoding every line up front
  ],
)
def test_bad_line_11_is_named_before_anything_is_written(run_dir, tmp_path, bad_line, suffix, message):
  good = GOOD if suffix == ".txt" else [json.dumps({"inputs": g}) for g in GOOD]
  src = _write(tmp_path / f"in{suffix}", good[:10] + [bad_line] + good[10:])
  out = tmp_path / "out"
  with pytest.raises(ValueError) as e:
    _infer(run_dir, out, input_file=src)
  assert f"{src}:11: {message}" in str(e.value) or f"{src}:11 {message}" in str(e.value)
  assert f"{src}:1:" not in str(e.value) and ":12:" not in str(e.value)  # only the bad line is named
  # Before the fix the first two batches of 4 (8 lines) were written, then "input 2 is empty".
  assert not out.exists()


def test_every_bad_line_is_listed_and_score_mode_needs_targets(run_dir, tmp_path):
  lines = [json.dumps({"inputs": g, "targets": g}) for g in GOOD[:5]]
  lines[1] = json.dumps({"inputs": "copy: x"})  # line 2: no targets (score mode)
  lines[3] = "not json"  # line 4
  src = _write(tmp_path / "pairs.jsonl", lines)
  with pytest.raises(ValueError) as e:
    _infer(run_dir, tmp_path / "out", input_file=src, mode="score")
  msg = str(e.value)
  assert msg.startswith(f"INFER_INPUT_FILE={src!r} has 2 bad line(s); nothing was decoded or written:")
  assert f"{src}:2: missing key 'targets' (score mode scores the targets); the line has keys ['inputs']" in msg
  assert f"{src}:4: not valid JSON" in msg
  assert not (tmp_path / "out").exists()
  # The same file predicts: targets are optional there, and line 4 is still bad.
  with pytest.raises(
    ValueError, match=r"(?s)has 1 bad line\(s\).*pairs.jsonl:4: not valid JSON \(Expecting value at column 1\)"
  ):
    _infer(run_dir, tmp_path / "out", input_file=src)


def test_too_long_line_is_refused_up_front(run_dir, tmp_path):
  long = "copy: " + " ".join(["word number"] * 20)
  src = _write(tmp_path / "in.txt", GOOD[:10] + [long])
  with pytest.raises(
    ValueError,
    match=rf"{src}:11 has \d+ tokens \(EOS included\), more than the model's inputs "
    r"length 16",
  ):
    _infer(run_dir, tmp_path / "out", input_file=src, on_long_input="error")
  assert not (tmp_path / "out").exists()


def test_good_file_writes_one_line_per_input(run_dir, tmp_path):
  # Blank lines at the end of the file are not inputs.
  src = _write(tmp_path / "in.txt", GOOD[:11] + ["", "  "])
  summary = _infer(run_dir, tmp_path / "out", input_file=src)
  rows = [json.loads(x) for x in open(summary["output"], encoding="utf-8")]
  assert [r["inputs"] for r in rows] == GOOD[:11]
  assert summary["lines"] == 11 and summary["truncated"] == 0 and summary["checkpoint_step"] == 1
  assert all(isinstance(r["prediction"], str) and r["score"] <= 0.0 for r in rows)
  limited = _infer(run_dir, tmp_path / "out3", input_file=src, max_examples=3)
  assert limited["lines"] == 3


@pytest.mark.parametrize(
  "setting, value, message",
  [
    ("batch_size", True, "INFER_BATCH_SIZE=True must be an integer >= 1, not a bool"),
    ("batch_size", 0, "INFER_BATCH_SIZE=0 must be an integer >= 1"),
    ("batch_size", 2.5, "INFER_BATCH_SIZE=2.5 must be an integer >= 1, not a float"),
    ("max_decode_len", math.inf, "MAX_DECODE_LEN=inf must be an integer >= 1, not a float"),
    ("max_decode_len", 0, "MAX_DECODE_LEN=0 must be an integer >= 1"),
    ("beam_size", 0, "BEAM_SIZE=0 must be an integer >= 1"),  # refused with the default greedy method too
    ("beam_size", False, "BEAM_SIZE=False must be an integer >= 1, not a bool"),
    ("alpha", -0.1, "LENGTH_PENALTY_ALPHA=-0.1 must be a finite number >= 0.0 (the GNMT length penalty; 0: none)"),
    ("temperature", math.nan, "TEMPERATURE=nan must be a finite number >= 0.0 (0: greedy)"),
    ("temperature", math.inf, "TEMPERATURE=inf must be a finite number >= 0.0 (0: greedy)"),
    ("top_k", -1, "TOP_K=-1 must be an integer >= 0 (0: no top-k filtering)"),
    ("top_p", math.nan, "TOP_P=nan must be a finite number in (0.0, 1.0] (1: no nucleus filtering)"),
    ("top_p", 0.0, "TOP_P=0.0 must be a finite number in (0.0, 1.0] (1: no nucleus filtering)"),
    ("top_p", "0.9", "TOP_P='0.9' must be a finite number in (0.0, 1.0], not a string"),
    ("seed", -1, "INFER_SEED=-1 must be an integer >= 0"),
    ("max_examples", 0, "INFER_MAX_EXAMPLES=0 must be None or an integer >= 1 (None: all)"),
    ("checkpoint_step", -5, "CHECKPOINT_STEP=-5 must be None or an integer >= 0 (None: the latest)"),
    ("task_feature_lengths", {"inputs": 0, "targets": 8}, "TASK_FEATURE_LENGTHS['inputs']=0 must be an integer >= 1"),
    (
      "task_feature_lengths",
      {"inputs": 16, "targets": True},
      "TASK_FEATURE_LENGTHS['targets']=True must be an integer >= 1, not a bool",
    ),
  ],
)
def test_numeric_settings_are_checked_before_the_checkpoint(tmp_path, setting, value, message):
  # No checkpoint and no task exist: the setting is the first thing reported.
  args = dict(
    model=None,
    checkpoint_path=str(tmp_path / "none"),
    output_dir=str(tmp_path / "out"),
    mixture_or_task_name="no_such_task",
    task_feature_lengths=LENGTHS,
  )
  args[setting] = value
  with pytest.raises(ValueError) as e:
    infer_lib.infer(**args)
  assert str(e.value).startswith(message)
  assert not (tmp_path / "out").exists()


def test_read_input_file_line_numbers(tmp_path):
  src = _write(tmp_path / "in.jsonl", [json.dumps({"inputs": "a", "targets": "b"}), json.dumps({"inputs": "c"})])
  assert infer_lib.read_input_file(src, "predict") == [(1, "a", "b"), (2, "c", None)]
  crlf = tmp_path / "crlf.txt"
  crlf.write_bytes(b"first\r\nsecond\r\n\r\n")
  assert infer_lib.read_input_file(str(crlf), "predict") == [(1, "first", None), (2, "second", None)]
  latin = tmp_path / "latin.txt"
  latin.write_bytes(b"ok\ncaf\xe9\n")
  with pytest.raises(ValueError, match=r"latin.txt:2: not UTF-8 text"):
    infer_lib.read_input_file(str(latin), "predict")
  empty = _write(tmp_path / "empty.txt", ["", ""])
  with pytest.raises(ValueError, match="holds no input"):
    infer_lib.read_input_file(empty, "predict")
  with pytest.raises(ValueError, match="score mode needs targets: give a .jsonl file"):
    infer_lib.read_input_file(_write(tmp_path / "x.txt", ["a"]), "score")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    infer_lib.read_input_file(str(tmp_path / "missing.txt"), "predict")

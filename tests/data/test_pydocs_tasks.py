"""End to end over the real embedded corpus: tasks/pydocs.py, sources.py and the default vocabulary."""

import os

import pytest
import seqio

from t5lite import cli
from t5lite.data import pydocs, sources, vocab as vocab_lib


@pytest.mark.slow
def test_pydocs_tasks_build_everything_locally(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  monkeypatch.delenv(vocab_lib.VOCAB_ENV, raising=False)
  seqio.set_tfds_data_dir_override(None)
  import t5lite_tasks  # noqa: F401  pylint: disable=unused-import

  task = seqio.get_mixture_or_task("pydocs_span_corruption")
  ex = next(task.get_dataset({"inputs": 512, "targets": 114}, split="train", shuffle=False).as_numpy_iterator())
  assert ex["inputs"].shape == (512,) and ex["targets"].shape == (114,)
  # The corpus and the default vocabulary were built under the data dir.
  vocab_path = vocab_lib.default_vocab_path()
  assert vocab_path.startswith(str(tmp_path)) and os.path.exists(vocab_path)
  assert os.path.isdir(tmp_path / "pydocs" / pydocs.CONFIG_NAME / "1.0.0")
  v = task.output_features["targets"].vocabulary
  assert v.vocab_size == vocab_lib.DEFAULT_VOCAB_SIZE + 100
  assert ex["targets"][0] == v.vocab_size - 1  # <extra_id_0> opens the targets
  # Every character of the corpus the vocabulary was trained on has a piece:
  # nothing of its own text encodes to <unk> (Q ! @ ^ & are rare in it).
  code = "if a != b: return Queue() @wraps(f) x ^= y & z"
  assert vocab_lib.UNK_ID not in v.encode(code) and v.decode(v.encode(code)) == code
  chars = set()
  for text in vocab_lib.texts_from_source(sources.PydocsSource(), "train"):
    chars.update(text)
  chars -= set(" \n\t\r\x0b\x0c")
  tokenizer = v.tokenizer
  # (after SentencePiece's NFKC normalization, e.g. '…' -> '...'), and none needs byte pieces.
  missing = sorted(
    ch for ch in chars if any(i == tokenizer.unk_id() or tokenizer.is_byte(i) for i in tokenizer.encode(ch))
  )
  assert not missing, missing
  mtime = os.path.getmtime(vocab_path)
  # A second use reuses both (no rebuild).
  assert vocab_lib.ensure_default_vocab() == vocab_path and os.path.getmtime(vocab_path) == mtime
  assert cli.main(["data", "preview", "--tasks", "pydocs_lm", "pydocs_ul2", "--examples", "1"]) == 0
  out = capsys.readouterr().out
  assert "== pydocs_lm" in out and "<extra_id_0>" in out and any(t in out for t in vocab_lib.UL2_MODE_TOKENS)


def test_c4_not_prepared_says_how(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  seqio.set_tfds_data_dir_override(None)
  import t5lite_tasks  # noqa: F401  pylint: disable=unused-import

  task = seqio.get_mixture_or_task("c4_span_corruption")
  with pytest.raises(FileNotFoundError, match=r"'c4/en:3.1.0' is not prepared.*tfds build c4"):
    task.get_dataset({"inputs": 512, "targets": 114}, split="train")
  assert "c4_ul2" in seqio.MixtureRegistry.names()

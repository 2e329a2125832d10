"""Tests for t5lite/data/vocab.py and the `t5lite vocab train` command."""

import json
import os
import shutil

import pytest
import sentencepiece as spm

from t5lite import cli
from t5lite.data import vocab as vocab_lib
from tests.data.conftest import TOPIC_TEXTS


def test_t5_special_ids_and_mode_tokens(spm_path, sp_vocab):
  proc = spm.SentencePieceProcessor(model_file=spm_path)
  assert (proc.pad_id(), proc.eos_id(), proc.unk_id(), proc.bos_id()) == (0, 1, 2, -1)
  assert proc.get_piece_size() == 2000
  for token in vocab_lib.UL2_MODE_TOKENS:
    assert proc.encode(token, out_type=str)[-1] == token
    assert vocab_lib.mode_token_id(sp_vocab, token) == proc.piece_to_id(token) > 2


def test_round_trip_and_sentinels(sp_vocab):
  text = "The with statement is used to wrap the execution of a block."
  ids = sp_vocab.encode(text)
  assert sp_vocab.decode(ids) == text
  assert sp_vocab.vocab_size == 2000 + 100
  assert sp_vocab.encode("<extra_id_0>")[-1] == sp_vocab.vocab_size - 1
  assert sp_vocab.encode("<extra_id_99>")[-1] == sp_vocab.vocab_size - 100
  assert max(sp_vocab.encode(" ".join(TOPIC_TEXTS[:5]))) < 2000


def test_bpe_model(tmp_path):
  path = vocab_lib.train_sentencepiece(TOPIC_TEXTS[:30], str(tmp_path / "bpe.model"), vocab_size=1000, model_type="bpe")
  v = vocab_lib.sentencepiece_vocabulary(path)
  assert spm.SentencePieceProcessor(model_file=path).get_piece_size() == 1000 and v.vocab_size == 1100
  assert v.decode(v.encode("for loops and while loops")) == "for loops and while loops"


def test_byte_vocabulary_has_sentinels():
  v = vocab_lib.byte_vocabulary()
  assert v.vocab_size == 256 + 3 + 100 and v.extra_ids == 100


def test_bad_vocabulary_inputs(tmp_path, spm_path):
  with pytest.raises(FileNotFoundError, match="nope.model' does not exist.*t5lite vocab train"):
    vocab_lib.sentencepiece_vocabulary(str(tmp_path / "nope.model"))
  with pytest.raises(ValueError, match="extra_ids=0.*sentinel"):
    vocab_lib.sentencepiece_vocabulary(spm_path, extra_ids=0)
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="is not a SentencePiece model"):
    vocab_lib.sentencepiece_vocabulary(str(garbage))
  # A model with other special ids than T5's is refused.
  other = str(tmp_path / "other")
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(TOPIC_TEXTS[0].splitlines()), model_prefix=other, vocab_size=100, minloglevel=2
  )
  with pytest.raises(ValueError, match=r"pad/eos/unk ids \(-1, 2, 0\).*\(0, 1, 2\)"):
    vocab_lib.sentencepiece_vocabulary(other + ".model")
  with pytest.raises(ValueError, match="model_type='wordpiece' is not valid"):
    vocab_lib.train_sentencepiece(["x"], str(tmp_path / "a.model"), model_type="wordpiece")
  with pytest.raises(ValueError, match="No files match"):
    list(vocab_lib.texts_from_files(str(tmp_path / "missing/*.txt")))


def test_default_vocabulary_env_override(monkeypatch, spm_path):
  monkeypatch.setenv(vocab_lib.VOCAB_ENV, spm_path)
  v = vocab_lib.default_vocabulary()
  assert v.vocab_size == 2100
  assert v.decode(v.encode("while True")) == "while True"


def test_cli_vocab_train_from_files(tmp_path, capsys):
  (tmp_path / "a.txt").write_text("\n".join(TOPIC_TEXTS[:20]))
  with open(tmp_path / "b.jsonl", "w") as f:
    for t in TOPIC_TEXTS[20:40]:
      f.write(json.dumps({"text": t}) + "\n")
  out = str(tmp_path / "mine.model")
  rc = cli.main(["vocab", "train", "--files", str(tmp_path / "*.*"), "--output", out, "--vocab_size", "800"])
  assert rc == 0
  assert "800 pieces + 100 sentinels = vocab_size 900" in capsys.readouterr().out
  assert vocab_lib.sentencepiece_vocabulary(out).vocab_size == 900
  rc = cli.main(["vocab", "train", "--files", str(tmp_path / "none/*.txt"), "--output", out])
  assert rc == 2 and "No files match" in capsys.readouterr().err


CODE = "if a != b: return Queue() @property x ^= y & z"


def test_rare_ascii_characters_keep_their_pieces(tmp_path):
  # `Q ! @ ^ &` are rare in pydoc's topics; a coverage below 1.0 drops them
  # (they then encode to <unk>) unless they are required characters.
  texts = TOPIC_TEXTS[:60]
  old = vocab_lib.train_sentencepiece(
    texts,
    str(tmp_path / "old.model"),
    vocab_size=1000,
    byte_fallback=False,
    required_chars="",
    character_coverage=0.995,
  )
  assert vocab_lib.UNK_ID in spm.SentencePieceProcessor(model_file=old).encode(CODE)  # the input shows the bug
  new = vocab_lib.train_sentencepiece(texts, str(tmp_path / "new.model"), vocab_size=1000, character_coverage=0.995)
  proc = spm.SentencePieceProcessor(model_file=new)
  ids = proc.encode(CODE)
  assert vocab_lib.UNK_ID not in ids and proc.decode(ids) == CODE
  for ch in "Q!@^&~$%":
    assert proc.piece_to_id(ch) != proc.unk_id(), ch  # a piece of its own, not bytes
  # The special ids and the mode tokens keep their places before the 256 byte pieces.
  assert [proc.id_to_piece(i) for i in (0, 1, 2, 3, 6, 261)] == ["<pad>", "</s>", "<unk>", "[NLU]", "<0x00>", "<0xFF>"]


def test_unseen_characters_fall_back_to_bytes_in_python_and_tensorflow(spm_path, sp_vocab):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  text = "Straße → 日本語 ’quoted’"
  ids = sp_vocab.encode(text)
  assert vocab_lib.UNK_ID not in ids and sp_vocab.decode(ids) == text
  pieces = spm.SentencePieceProcessor(model_file=spm_path).encode("日", out_type=str)
  assert pieces[-3:] == ["<0xE6>", "<0x97>", "<0xA5>"]  # the UTF-8 bytes of 日
  assert sp_vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids  # seqio's TF path agrees
  assert sp_vocab.decode_tf(tf.constant(ids)).numpy().decode("utf-8") == text


def test_byte_fallback_needs_room_for_the_byte_pieces(tmp_path):
  with pytest.raises(ValueError, match=r"vocab_size=200 is too small; use at least 267 \(byte_fallback"):
    vocab_lib.train_sentencepiece(TOPIC_TEXTS[:5], str(tmp_path / "a.model"), vocab_size=200)
  path = vocab_lib.train_sentencepiece(TOPIC_TEXTS[:20], str(tmp_path / "b.model"), vocab_size=200, byte_fallback=False)
  assert spm.SentencePieceProcessor(model_file=path).piece_to_id("<0x00>") == vocab_lib.UNK_ID


def test_cli_vocab_train_byte_fallback_flag(tmp_path, capsys):
  (tmp_path / "a.txt").write_text("\n".join(TOPIC_TEXTS[:20]))
  for flag, expect_unk in (("--byte_fallback", False), ("--no-byte_fallback", True)):
    out = str(tmp_path / f"{flag}.model")
    assert (
      cli.main(["vocab", "train", "--files", str(tmp_path / "a.txt"), "--output", out, "--vocab_size", "700", flag])
      == 0
    )
    ids = spm.SentencePieceProcessor(model_file=out).encode("日本")
    assert (vocab_lib.UNK_ID in ids) == expect_unk
  capsys.readouterr()


def test_default_vocabulary_resolves_its_path_at_first_use(tmp_path, monkeypatch, spm_path):
  # Tasks build their vocabulary object at import, often before the test or
  # run sets its data directory: the file must be looked up where the data
  # directory points when the vocabulary is first used.
  import seqio  # pylint: disable=g-import-not-at-top

  monkeypatch.delenv(vocab_lib.VOCAB_ENV, raising=False)
  seqio.set_tfds_data_dir_override(None)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "first"))
  v = vocab_lib.default_vocabulary()
  assert v.sentencepiece_model_file.startswith(str(tmp_path / "first"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "second"))
  where = vocab_lib.default_vocab_path()
  assert where.startswith(str(tmp_path / "second"))
  os.makedirs(os.path.dirname(where))
  shutil.copy(spm_path, where)  # stands in for the trained default (no corpus build in this test)
  assert v.vocab_size == 2000 + 100
  assert v.sentencepiece_model_file == where
  assert v.decode(v.encode("while True")) == "while True"
  assert not (tmp_path / "first").exists()

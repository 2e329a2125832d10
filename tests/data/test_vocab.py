"""Tests for t5lite/data/vocab.py and the `t5lite vocab train` command."""

import json

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
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TOPIC_TEXTS[0].splitlines()), model_prefix=other,
                                 vocab_size=100, minloglevel=2)
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

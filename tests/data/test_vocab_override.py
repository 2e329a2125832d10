"""VOCABULARY_MODEL: a SentencePiece model used as the vocabulary of the built-in tasks
(t5lite/data/vocab.py: use_model_file, default_vocab_path, describe_vocabulary).

A 300-piece model trained here stands in for a checkpoint's spiece.model: with
seqio's 100 extra ids it gives 400 ids and `<extra_id_0>` = 399, as T5's
32,000 pieces give 32,100 ids and `<extra_id_0>` = 32099.
"""

import os

import pytest
import seqio
import sentencepiece as spm

import t5lite_tasks  # noqa: F401  (registers synthetic_reverse)
from t5lite.data import vocab as vocab_lib
from tests.data.conftest import TOPIC_TEXTS

PIECES = 300


@pytest.fixture(scope="module")
def small_spm(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("spm_small") / "small.model")
  return vocab_lib.train_sentencepiece(TOPIC_TEXTS, path, vocab_size=PIECES, byte_fallback=False)


@pytest.fixture(autouse=True)
def no_override():
  """Each test starts and ends with the process-wide setting cleared."""
  vocab_lib.use_model_file(None)
  yield
  vocab_lib.use_model_file(None)


def test_builtin_task_encodes_with_the_given_model(small_spm, spm_path, monkeypatch):
  monkeypatch.setenv(vocab_lib.VOCAB_ENV, spm_path)  # 2,000 pieces: the setting must win over it
  task = seqio.get_mixture_or_task("synthetic_reverse")
  vocabulary = task.output_features["targets"].vocabulary
  assert vocab_lib.is_default_vocabulary(vocabulary)
  assert vocabulary.vocab_size == 2000 + 100  # before: $T5LITE_SPM_MODEL
  assert vocab_lib.use_model_file(small_spm) is None
  assert vocab_lib.default_vocab_path() == small_spm
  # The task object registered at import follows the setting from its next use on.
  assert vocabulary.vocab_size == PIECES + 100
  assert vocabulary.tokenizer.piece_to_id("▁<extra_id_0>") == PIECES + 99  # seqio's sentinel pieces
  assert vocabulary.encode("<extra_id_0>") == [PIECES + 99]
  assert vocabulary.encode("<extra_id_99>") == [PIECES]
  assert vocabulary.decode([PIECES + 99]) == "<extra_id_0>"
  ex = next(task.get_dataset({"inputs": 64, "targets": 32}, split="validation", shuffle=False).as_numpy_iterator())
  proc = spm.SentencePieceProcessor(model_file=small_spm)
  text_in = ex["inputs_pretokenized"].decode()
  text_out = ex["targets_pretokenized"].decode()
  assert ex["inputs"].tolist() == proc.encode(text_in) + [vocab_lib.EOS_ID]
  assert ex["targets"].tolist() == proc.encode(text_out) + [vocab_lib.EOS_ID]
  assert max(ex["inputs"]) < PIECES
  assert "VOCABULARY_MODEL=" in vocab_lib.describe_vocabulary(vocabulary)
  assert small_spm in vocab_lib.describe_vocabulary(vocabulary)
  # None goes back to the default ($T5LITE_SPM_MODEL here).
  assert vocab_lib.use_model_file(None) == small_spm
  assert vocabulary.vocab_size == 2000 + 100
  assert "$T5LITE_SPM_MODEL" in vocab_lib.describe_vocabulary(vocabulary)


def test_a_task_with_its_own_vocabulary_is_unaffected(small_spm, spm_path):
  own = vocab_lib.sentencepiece_vocabulary(spm_path)
  vocab_lib.use_model_file(small_spm)
  assert own.vocab_size == 2000 + 100
  assert own.sentencepiece_model_file == spm_path
  assert not vocab_lib.is_default_vocabulary(own)
  assert "does not apply" in vocab_lib.describe_vocabulary(own)
  assert "ByteVocabulary" in vocab_lib.describe_vocabulary(vocab_lib.byte_vocabulary())


def test_a_relative_path_is_kept_absolute(small_spm, monkeypatch):
  monkeypatch.chdir(os.path.dirname(small_spm))
  vocab_lib.use_model_file("small.model")
  monkeypatch.chdir("/")
  assert vocab_lib.model_file_setting() == small_spm
  assert vocab_lib.default_vocabulary().vocab_size == PIECES + 100


def test_a_bad_model_file_is_refused_naming_it(small_spm, tmp_path):
  vocab_lib.use_model_file(small_spm)
  missing = str(tmp_path / "spiece.model")
  with pytest.raises(
    FileNotFoundError, match=r"VOCABULARY_MODEL='.*/spiece.model'.*does not exist.*set VOCABULARY_MODEL"
  ):
    vocab_lib.use_model_file(missing)
  other = str(tmp_path / "other")
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(TOPIC_TEXTS[0].splitlines()), model_prefix=other, vocab_size=100, minloglevel=2
  )
  with pytest.raises(ValueError, match=r"VOCABULARY_MODEL='.*/other.model'.*pad/eos/unk ids \(-1, 2, 0\).*\(0, 1, 2\)"):
    vocab_lib.use_model_file(other + ".model")
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="garbage.model' is not a SentencePiece model"):
    vocab_lib.use_model_file(str(garbage))
  with pytest.raises(ValueError, match=r"VOCABULARY_MODEL=3 is not valid.*None for the default"):
    vocab_lib.use_model_file(3)
  with pytest.raises(ValueError, match="MY_SETTING='' is not valid"):
    vocab_lib.use_model_file("", what="MY_SETTING")
  # A refused file leaves the setting as it was.
  assert vocab_lib.model_file_setting() == small_spm

"""Tests for t5lite/data/wordpiece.py and `t5lite vocab train --model_type wordpiece`."""

import os
import pickle

import numpy as np
import pytest
import tensorflow as tf

from t5lite import cli
from t5lite.data import pydocs
from t5lite.data import wordpiece as wp
from tests.data.conftest import TOPIC_TEXTS

TEXT = "The with statement wraps the execution of a block, and returns Quux!"
# A hand-written BERT vocab.txt: [PAD] first, specials not at 1..4 (as in bert-base-uncased, [UNK]=100).
HAND_VOCAB = ["[PAD]", "the", "[UNK]", "quick", "[CLS]", "[SEP]", "[MASK]", "fox", "##es", "jump", "##ed", "."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
  """A 1,000-token cased WordPiece vocabulary trained on 40 pydoc topics (~0.3 s)."""
  return wp.train_wordpiece(TOPIC_TEXTS[:40], str(tmp_path_factory.mktemp("wp")), vocab_size=1000)


@pytest.fixture(scope="module")
def vocab(trained):
  return wp.WordPieceVocabulary(trained)


def _write_vocab(path, tokens) -> str:
  path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
  return str(path)


def test_trained_files_and_special_ids(trained, vocab):
  folder = os.path.dirname(trained)
  assert sorted(os.listdir(folder)) == ["tokenizer.json", "vocab.txt"]  # no temporary left behind
  lines = open(os.path.join(folder, "vocab.txt"), encoding="utf-8").read().splitlines()
  assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(lines) == 1000
  assert (vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.sep_id, vocab.mask_id) == (0, 1, 2, 3, 4)
  assert vocab.eos_id == vocab.sep_id == 3 and vocab.extra_ids == 0 and vocab.vocab_size == 1000
  assert vocab.special_ids == frozenset(range(5)) and vocab.lowercase is False
  assert vocab.tokenizer_file == trained
  # Special tokens in text are whole tokens; no [CLS]/[SEP] is added by encode.
  assert vocab.encode("[CLS] block [MASK] [SEP]") == [2, vocab.tokenizer.token_to_id("block"), 4, 3]
  # The exported vocab.txt (cased) encodes as the tokenizer.json does.
  from_txt = wp.WordPieceVocabulary(os.path.join(folder, "vocab.txt"), lowercase=False)
  assert from_txt.encode(TEXT) == vocab.encode(TEXT) and from_txt.vocab_size == 1000


def test_round_trip(vocab):
  ids = vocab.encode(TEXT)
  tokens = [vocab.tokenizer.id_to_token(i) for i in ids]
  assert tokens[:3] == ["The", "with", "statement"] and "##ps" in tokens and tokens[-1] == "!"  # cased, split
  assert vocab.decode(ids) == TEXT
  # Decoding drops [PAD], shows the other specials, and does not stop at [SEP] (seqio's eos).
  pair = [2] + ids[:3] + [3] + vocab.encode("a block.") + [3, 0, 0]
  assert vocab.decode(pair) == "[CLS] The with statement [SEP] a block. [SEP]"
  assert vocab.decode(np.asarray([ids[0], 5000, -3])) == "The [UNK] [UNK]"  # out of range -> [UNK]
  assert vocab.decode(tf.constant(ids)) == TEXT


def test_word_start_ids(vocab):
  starts = vocab.word_start_ids()
  assert starts.dtype == bool and starts.shape == (1000,)
  continuation = [t for t in vocab.tokenizer.get_vocab() if t.startswith("##")]
  assert int((~starts).sum()) == len(continuation) > 50
  ids = vocab.encode("wraps")
  assert [vocab.tokenizer.id_to_token(i) for i in ids] == ["w", "##r", "##a", "##ps"]
  assert starts[ids].tolist() == [True, False, False, False]
  assert starts[:5].all()  # the specials count as word starts
  # Required characters: rare letters get a `##` continuation, so a word holding one is not [UNK] whole.
  # (`Z` never follows another letter in these 40 topics.)
  assert vocab.tokenizer.token_to_id("##Z") is not None and vocab.unk_id not in vocab.encode("xZq")


def test_hand_written_vocab_txt_and_lowercase(tmp_path):
  path = _write_vocab(tmp_path / "vocab.txt", HAND_VOCAB)
  v = wp.WordPieceVocabulary(path)  # lowercase by default, as bert-base-uncased
  assert (v.pad_id, v.unk_id, v.cls_id, v.sep_id, v.mask_id, v.vocab_size) == (0, 2, 4, 5, 6, 12)
  assert v.special_ids == frozenset({0, 2, 4, 5, 6}) and v.lowercase is True
  assert v.encode("The QUICK foxes jumped.") == [1, 3, 7, 8, 9, 10, 11]
  assert v.decode([4, 1, 3, 7, 8, 9, 10, 11, 5, 0]) == "[CLS] the quick foxes jumped. [SEP]"
  assert v.word_start_ids().tolist() == [True] * 8 + [False, True, False, True]
  cased = wp.WordPieceVocabulary(path, lowercase=False)
  assert cased.encode("The quick Fox") == [2, 3, 2]  # "The" and "Fox" are not in the vocabulary
  assert cased != v


def test_refused_vocabularies(tmp_path, trained):
  no_mask = _write_vocab(tmp_path / "no_mask.txt", [t for t in HAND_VOCAB if t != "[MASK]"])
  with pytest.raises(ValueError, match=r"lacks \[MASK\]: .*masked-language-model training needs \[MASK\]"):
    wp.WordPieceVocabulary(no_mask)
  none = _write_vocab(tmp_path / "none.txt", ["[PAD]", "a", "b"])
  with pytest.raises(ValueError, match=r"lacks \[UNK\] \[CLS\] \[SEP\] \[MASK\]"):
    wp.WordPieceVocabulary(none)
  pad_last = _write_vocab(tmp_path / "pad_last.txt", HAND_VOCAB[1:] + ["[PAD]"])
  with pytest.raises(ValueError, match=r"\[PAD\] at id 11; seqio pads with id 0"):
    wp.WordPieceVocabulary(pad_last)
  with pytest.raises(FileNotFoundError, match="nope.json' does not exist.*--model_type wordpiece"):
    wp.WordPieceVocabulary(str(tmp_path / "nope.json"))
  with pytest.raises(ValueError, match="lowercase=True contradicts .*lowercase=False"):
    wp.WordPieceVocabulary(trained, lowercase=True)
  garbage = tmp_path / "garbage.json"
  garbage.write_text("{not json")
  with pytest.raises(ValueError, match="is not a tokenizers tokenizer.json"):
    wp.WordPieceVocabulary(str(garbage))
  from tokenizers import Tokenizer, models  # pylint: disable=g-import-not-at-top

  Tokenizer(models.BPE()).save(str(tmp_path / "bpe.json"))
  with pytest.raises(ValueError, match="holds a BPE model, not WordPiece"):
    wp.WordPieceVocabulary(str(tmp_path / "bpe.json"))
  with pytest.raises(ValueError, match="give a tokenizer.json .* or a BERT vocab.txt"):
    wp.WordPieceVocabulary(_write_vocab(tmp_path / "vocab.model", HAND_VOCAB))


def test_encode_tf_in_a_dataset_map_equals_encode(vocab):
  texts = [TEXT, "Call the method, then return.", ""]
  ds = tf.data.Dataset.from_tensor_slices({"inputs": texts}).map(lambda ex: {"inputs": vocab.encode_tf(ex["inputs"])})
  assert ds.element_spec["inputs"] == tf.TensorSpec([None], tf.int32)
  assert [ex["inputs"].tolist() for ex in ds.as_numpy_iterator()] == [vocab.encode(t) for t in texts]
  ragged = vocab.encode_tf(tf.constant(texts))
  assert isinstance(ragged, tf.RaggedTensor) and ragged.to_list() == [vocab.encode(t) for t in texts]
  ids = vocab.encode(TEXT)
  assert vocab.decode_tf(tf.constant(ids)).numpy().decode() == TEXT
  both = vocab.decode_tf(tf.constant([ids[:3] + [0, 0], [2] + ids[:2] + [3, 0]]))
  assert both.shape == (2,) and both.numpy().tolist() == [b"The with statement", b"[CLS] The with [SEP]"]
  # Inside a traced function the shapes are static where they can be.
  traced = tf.function(lambda s: vocab.decode_tf(vocab.encode_tf(s))).get_concrete_function(
    tf.TensorSpec([], tf.string)
  )
  assert traced.output_shapes == tf.TensorShape([])


def test_equality_and_pickle(trained, vocab):
  again = wp.WordPieceVocabulary(trained)
  assert again == vocab and hash(again) == hash(vocab) and again is not vocab
  copy = pickle.loads(pickle.dumps(vocab))
  assert copy == vocab and copy._tokenizer is None  # the file is reloaded on use, not pickled
  assert copy.encode(TEXT) == vocab.encode(TEXT) and copy.vocab_size == 1000
  assert type(copy) is wp.WordPieceVocabulary and isinstance(copy, __import__("seqio").Vocabulary)


def test_train_errors_write_nothing(tmp_path):
  texts = TOPIC_TEXTS[:5]
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=r"vocab_size=50 is too small for this text: .* need at least (\d+)\.") as e:
    wp.train_wordpiece(texts, str(out), vocab_size=50)
  assert not out.exists() or os.listdir(out) == []
  smallest = int(e.value.args[0].rsplit(" ", 1)[1].rstrip("."))
  with pytest.raises(ValueError, match=f"need at least {smallest}"):
    wp.train_wordpiece(texts, str(out), vocab_size=smallest - 1)
  path = wp.train_wordpiece(texts, str(out / "tokenizer.json"), vocab_size=smallest)
  assert wp.WordPieceVocabulary(path).vocab_size == smallest  # the alphabet alone, no merge
  with pytest.raises(ValueError, match="No text to train a WordPiece vocabulary on"):
    wp.train_wordpiece(["", "  \n"], str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="give a directory or a path ending in .json"):
    wp.train_wordpiece(texts, str(tmp_path / "vocab.txt"))
  (tmp_path / "afile").write_text("x")
  with pytest.raises(ValueError, match="afile' is a file"):
    wp.train_wordpiece(texts, str(tmp_path / "afile"))
  with pytest.raises(ValueError, match="cannot create the folder"):
    wp.train_wordpiece(texts, str(tmp_path / "afile" / "sub" / "t.json"), vocab_size=500)
  assert wp.output_paths(str(tmp_path / "mine.json")) == (str(tmp_path / "mine.json"), str(tmp_path / "mine.vocab.txt"))


def test_training_is_deterministic_and_lowercase(tmp_path, trained):
  # tokenizers alone numbers `##` tokens in hash-map order, so two runs differed (tokenizers#1794).
  again = wp.train_wordpiece(TOPIC_TEXTS[:40], str(tmp_path / "again.json"), vocab_size=1000)
  assert open(again, "rb").read() == open(trained, "rb").read()
  assert (
    open(str(tmp_path / "again.vocab.txt"), "rb").read()
    == open(trained.replace("tokenizer.json", "vocab.txt"), "rb").read()
  )
  lower = wp.WordPieceVocabulary(
    wp.train_wordpiece(TOPIC_TEXTS[:40], str(tmp_path / "lower"), vocab_size=1000, lowercase=True)
  )
  assert lower.lowercase is True and lower.decode(lower.encode("The Ünicode WITH")) == "the unicode with"
  assert not any(t != t.lower() for t in lower.tokenizer.get_vocab() if t not in wp.SPECIAL_TOKENS)


def test_cli_vocab_train_wordpiece(tmp_path, capsys):
  lines = [line for text in TOPIC_TEXTS[:30] for line in text.splitlines() if line.strip()][:400]
  (tmp_path / "corpus.txt").write_text("\n".join(lines))
  out = tmp_path / "wp"
  argv = ["vocab", "train", "--files", str(tmp_path / "corpus.txt"), "--output", str(out), "--vocab_size", "600"]
  assert cli.main(argv + ["--model_type", "wordpiece", "--lowercase"]) == 0
  printed = capsys.readouterr().out
  assert f"wrote {out / 'tokenizer.json'} and {out / 'vocab.txt'}" in printed
  assert "vocab_size 600 (uncased); special ids [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4" in printed
  v = wp.WordPieceVocabulary(str(out / "tokenizer.json"))
  assert v.lowercase is True and v.decode(v.encode("The Statement")) == "the statement"
  assert cli.main(argv + ["--lowercase"]) == 2  # unigram: no --lowercase
  assert "--lowercase applies to --model_type wordpiece only" in capsys.readouterr().err
  assert cli.main(argv[:-1] + ["3", "--model_type", "wordpiece"]) == 2
  assert "vocab_size=3 is not valid" in capsys.readouterr().err


def test_default_is_lazy_cached_and_locked(tmp_path, monkeypatch):
  import seqio  # pylint: disable=g-import-not-at-top

  seqio.set_tfds_data_dir_override(None)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "data"))
  calls = []

  def small_corpus(data_dir):
    calls.append(data_dir)
    return TOPIC_TEXTS[:40]

  monkeypatch.setattr(wp, "_default_texts", small_corpus)
  v = wp.default_wordpiece_vocabulary()
  assert (v.pad_id, v.unk_id, v.cls_id, v.sep_id, v.mask_id) == (0, 1, 2, 3, 4)
  assert v == wp.default_wordpiece_vocabulary() and pickle.loads(pickle.dumps(v)) == v
  assert not (tmp_path / "data").exists() and calls == []  # constructing, comparing, pickling train nothing
  path = v.tokenizer_file
  folder = tmp_path / "data" / "t5lite_vocab" / pydocs.CONFIG_NAME  # next to the default SentencePiece model
  assert path == str(folder / "pydocs_wordpiece_cased_8000_r1" / "tokenizer.json")
  assert v.decode(v.encode(TEXT)) == TEXT and calls == [None] and os.path.exists(path)
  assert os.path.exists(path.replace("tokenizer.json", "vocab.txt")) and os.path.exists(path + ".lock")
  # Trained on 40 topics, 8,000 tokens are more than the merges the text offers: the result is smaller.
  assert 1000 < v.vocab_size <= wp.DEFAULT_WORDPIECE_SIZE
  assert wp.ensure_default_wordpiece() == path and calls == [None]  # cached: not trained again
  # A use inside seqio's graph tracing (encode_tf in a dataset map) works and reuses the file.
  ds = tf.data.Dataset.from_tensors(TEXT).map(wp.default_wordpiece_vocabulary().encode_tf)
  assert next(ds.as_numpy_iterator()).tolist() == v.encode(TEXT) and calls == [None]

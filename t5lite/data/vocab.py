"""SentencePiece vocabularies: training, loading, validation, and the default one.

SentencePiece does the training and the tokenizing and seqio wraps it
(`seqio.SentencePieceVocabulary`, with 100 extra ids used as sentinels that count
down from the end of the vocabulary). What is ours: the T5 id layout enforced at
training time (pad=0, eos=1, unk=2, no bos), the UL2 mode tokens as user-defined
pieces, early validation with clear errors, and the default `pydocs` vocabulary
that is trained once, on first use, from the embedded corpus and then reused.

The default vocabulary (the one the built-in tasks use) reads its model file
from, in order: the process-wide setting `use_model_file(path)` (the gin macro
VOCABULARY_MODEL, e.g. the `spiece.model` of a Hugging Face T5 directory),
`$T5LITE_SPM_MODEL`, or the pydocs model in the data directory.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import Iterable, Iterator, Optional, Sequence

import sentencepiece as spm

# UL2 mode tokens (arXiv 2205.05131): prepended to the inputs of the R, X and S
# denoisers. Each is one user-defined vocabulary piece.
UL2_MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DEFAULT_EXTRA_IDS = 100
MODEL_TYPES = ("unigram", "bpe")
# Characters every trained vocabulary gets a piece for, however rare they are
# in the training text (SentencePiece's `required_chars`): printable ASCII
# without whitespace. Code and documentation use `Q ! @ ^ &` rarely, and a
# character coverage below 1.0 would otherwise leave them out.
REQUIRED_CHARS = "".join(chr(c) for c in range(33, 127))

# The default vocabulary trained on the `pydocs` train split. Every character
# of that text gets a piece (coverage 1.0); others fall back to UTF-8 bytes.
DEFAULT_VOCAB_SIZE = 8000
DEFAULT_MODEL_TYPE = "unigram"
DEFAULT_CHARACTER_COVERAGE = 1.0
# Bumped whenever the default vocabulary's training settings change, so that a
# model file cached by an older t5lite is not reused (revision 2: byte
# fallback, required ASCII characters, coverage 1.0).
DEFAULT_VOCAB_REVISION = 2
# Environment variable naming a SentencePiece model to use instead of the
# default pydocs one (for example T5's public cc_all.32000 model copied locally).
VOCAB_ENV = "T5LITE_SPM_MODEL"
# The gin macro that sets use_model_file in train / eval / infer.
MODEL_FILE_SETTING = "VOCABULARY_MODEL"
# use_model_file's path (absolute), or None: process-wide, read at each use of the default vocabulary.
_model_file: Optional[str] = None


def _sentences(texts: Iterable[str], max_chars: int = 4000) -> Iterator[str]:
  """Splits documents into lines short enough for SentencePiece's trainer."""
  for text in texts:
    for line in text.splitlines():
      line = line.strip()
      while len(line) > max_chars:
        cut = line.rfind(" ", 0, max_chars)
        cut = cut if cut > 0 else max_chars
        yield line[:cut]
        line = line[cut:].strip()
      if line:
        yield line


def train_sentencepiece(
  texts: Iterable[str],
  model_path: str,
  *,
  vocab_size: int = DEFAULT_VOCAB_SIZE,
  model_type: str = DEFAULT_MODEL_TYPE,
  character_coverage: float = 0.9995,
  byte_fallback: bool = True,
  required_chars: str = REQUIRED_CHARS,
  user_defined_symbols: Sequence[str] = UL2_MODE_TOKENS,
  max_sentences: int = 2_000_000,
  num_threads: int = 1,
) -> str:
  """Trains a SentencePiece model with T5's special ids and writes it atomically.

  Args:
    texts: documents (strings); each is split into lines.
    model_path: where the `.model` file goes (a `.vocab` file is written beside).
    vocab_size: number of SentencePiece pieces (the seqio vocabulary adds the
      extra ids on top).
    model_type: 'unigram' or 'bpe'.
    character_coverage: fraction of the training text's characters that get
      a piece of their own (the rarest are left out; 1.0 keeps every one).
    byte_fallback: a character without a piece is encoded as its UTF-8 bytes
      (256 byte pieces `<0x00>`..`<0xFF>`, which count in `vocab_size`)
      instead of the unknown id, so any text encodes and decodes losslessly.
    required_chars: characters that get a piece whatever their frequency
      (printable ASCII by default).
    user_defined_symbols: pieces kept whole (UL2 mode tokens by default).
    max_sentences: cap on the number of lines fed to the trainer.
    num_threads: trainer threads; 1 keeps the result deterministic.

  Returns:
    model_path.

  Raises:
    ValueError: an unknown model_type, a vocab_size too small for the special
      pieces (and the byte pieces with byte_fallback), a character_coverage
      outside [0.9, 1.0], or no text.
  """
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r} is not valid; use one of {MODEL_TYPES}.")
  smallest = 8 + len(user_defined_symbols) + (256 if byte_fallback else 0)
  if vocab_size < smallest:
    raise ValueError(
      f"vocab_size={vocab_size} is too small; use at least {smallest}"
      + (" (byte_fallback adds 256 byte pieces)." if byte_fallback else ".")
    )
  if not 0.9 <= character_coverage <= 1.0:
    raise ValueError(f"character_coverage={character_coverage} must be in [0.9, 1.0].")
  sentences = list(_sentences(texts))[:max_sentences]
  if not sentences:
    raise ValueError("No text to train a vocabulary on: the source gave no non-empty lines.")
  out_dir = os.path.dirname(os.path.abspath(model_path))
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
    prefix = os.path.join(tmp, "spm")
    try:
      spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        user_defined_symbols=list(user_defined_symbols),
        byte_fallback=byte_fallback,
        required_chars=required_chars,
        num_threads=num_threads,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
      )
    except RuntimeError as e:
      raise ValueError(
        f"SentencePiece could not train a {model_type} vocabulary of size "
        f"{vocab_size} on {len(sentences)} lines: {e}. A smaller vocab_size "
        "usually fixes this on a small corpus."
      ) from e
    base = os.path.splitext(model_path)[0]
    os.replace(prefix + ".vocab", base + ".vocab")
    os.replace(prefix + ".model", model_path)
  return model_path


def texts_from_files(pattern: str, text_key: str = "text") -> Iterator[str]:
  """Yields documents from `.txt` files (one per file) or `.jsonl` (one per line)."""
  paths = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
  if not paths:
    raise ValueError(f"No files match {pattern!r}: give a glob of .txt or .jsonl files.")
  for path in paths:
    with open(path, encoding="utf-8") as f:
      if path.endswith(".jsonl"):
        for line in f:
          if line.strip():
            yield json.loads(line)[text_key]
      else:
        yield f.read()


def texts_from_source(source, split: str = "train", text_key: str = "text") -> Iterator[str]:
  """Yields documents from any seqio DataSource (for example the pydocs source)."""
  ds = source.get_dataset(split=split, shuffle=False)
  for ex in ds.as_numpy_iterator():
    yield ex[text_key].decode("utf-8")


def check_model_file(path: str, what: Optional[str] = None) -> None:
  """Raises a clear error when a SentencePiece model is missing or not T5-shaped.

  T5 models need pad=0, eos=1, unk=2 (what `train_sentencepiece` and T5's own
  `spiece.model` give). `what` names the setting the path came from (e.g.
  'VOCABULARY_MODEL'); the messages then start with it and say how to fix it.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: not a SentencePiece model, or other pad/eos/unk ids than T5's.
  """
  where = f"{what}={path!r}: " if what else ""
  if not os.path.exists(path):
    fix = (
      f"set {what} to a SentencePiece .model file (e.g. the spiece.model of a Hugging Face T5 directory), "
      "or to None for the default vocabulary."
      if what
      else f"Train one with `t5lite vocab train --files 'corpus/*.txt' --output PATH`, or leave "
      f"{VOCAB_ENV} unset to use the default pydocs vocabulary."
    )
    raise FileNotFoundError(f"{where}SentencePiece model {path!r} does not exist. {fix}")
  proc = spm.SentencePieceProcessor()
  try:
    proc.Load(path)
  except (OSError, RuntimeError) as e:
    raise ValueError(f"{where}{path!r} is not a SentencePiece model: {e}") from e
  ids = (proc.pad_id(), proc.eos_id(), proc.unk_id())
  if ids != (PAD_ID, EOS_ID, UNK_ID):
    raise ValueError(
      f"{where}SentencePiece model {path!r} has pad/eos/unk ids {ids}; T5 models need "
      f"{(PAD_ID, EOS_ID, UNK_ID)}. Retrain it with `t5lite vocab train`."
    )


def use_model_file(path: Optional[str], what: str = MODEL_FILE_SETTING) -> Optional[str]:
  """Makes `path` the SentencePiece model of the default vocabulary in this process.

  Every task built on `default_vocabulary()` (the built-in ones) then encodes
  with it, from its next use on, ahead of `$T5LITE_SPM_MODEL` and the pydocs
  model; tasks with another vocabulary are unaffected. The vocabulary gets
  seqio's 100 extra ids on top of the model's pieces, so T5's `spiece.model`
  (32,000 pieces) gives 32,100 ids with `<extra_id_0>` = 32099, as the
  published T5 checkpoints expect. None goes back to the default.
  `train.train`, `eval.evaluate` and `infer.infer` call it with their
  `vocabulary_model` (the gin macro VOCABULARY_MODEL).

  Args:
    path: a SentencePiece `.model` file with T5's pad/eos/unk ids 0/1/2, or None.
    what: the setting `path` came from, for error messages.

  Returns:
    The setting before this call (an absolute path, or None).

  Raises:
    FileNotFoundError: no file at `path` (nothing is changed).
    ValueError: `path` is not a string, not a SentencePiece model, or has
      other special ids (nothing is changed).
  """
  global _model_file
  previous = _model_file
  if path is None:
    _model_file = None
    return previous
  if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
    raise ValueError(
      f"{what}={path!r} is not valid: give the path of a SentencePiece .model file, or None for the default vocabulary."
    )
  full = os.path.abspath(os.path.expanduser(str(path)))
  check_model_file(full, what)
  _model_file = full
  return previous


def model_file_setting() -> Optional[str]:
  """The path `use_model_file` set in this process (absolute), or None."""
  return _model_file


def _seqio():
  import seqio  # pylint: disable=g-import-not-at-top

  return seqio


def sentencepiece_vocabulary(path: str, extra_ids: int = DEFAULT_EXTRA_IDS):
  """Loads a SentencePiece model as a seqio vocabulary, validating it first."""
  check_model_file(path)
  if extra_ids <= 0:
    raise ValueError(
      f"extra_ids={extra_ids}: span corruption and UL2 need sentinel ids; use extra_ids={DEFAULT_EXTRA_IDS} as T5 does."
    )
  return _seqio().SentencePieceVocabulary(path, extra_ids=extra_ids)


def byte_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS):
  """A ByteT5-style vocabulary (no training needed) with sentinels."""
  return _seqio().ByteVocabulary(extra_ids=extra_ids)


def default_vocab_path(data_dir: Optional[str] = None) -> str:
  """The default vocabulary's model file: `use_model_file`'s, `$T5LITE_SPM_MODEL`, or the pydocs one."""
  if _model_file:
    return _model_file
  if os.environ.get(VOCAB_ENV):
    return os.environ[VOCAB_ENV]
  from t5lite.data import data_dirs, pydocs  # pylint: disable=g-import-not-at-top

  data_dir = data_dirs.resolve_data_dir(data_dir)
  name = f"pydocs_{DEFAULT_MODEL_TYPE}_{DEFAULT_VOCAB_SIZE}_r{DEFAULT_VOCAB_REVISION}.model"
  return os.path.join(data_dir, "t5lite_vocab", pydocs.CONFIG_NAME, name)


def ensure_default_vocab(data_dir: Optional[str] = None) -> str:
  """Trains the default vocabulary on the pydocs train split once; returns its path."""
  path = default_vocab_path(data_dir)
  if _model_file or os.environ.get(VOCAB_ENV) or os.path.exists(path):
    return path
  from t5lite.data import locking, sources  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(path), exist_ok=True)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  with locking.file_lock(path + ".lock"):
    if not os.path.exists(path):
      # The first use is often inside seqio's graph tracing (tokenize);
      # reading the corpus needs eager mode, which init_scope restores.
      with tf.init_scope():
        source = sources.PydocsSource(data_dir=data_dir)
        train_sentencepiece(texts_from_source(source, "train"), path, character_coverage=DEFAULT_CHARACTER_COVERAGE)
  return path


def _make_lazy_class():
  seqio = _seqio()

  class DefaultVocabulary(seqio.SentencePieceVocabulary):
    """The default vocabulary: trained from pydocs on first use, then reused.

    Tasks are registered at import time; building the corpus and the model
    then would make `import t5lite_tasks` slow, so the file is made the first
    time a token is encoded or decoded. Its path is resolved then too, not at
    registration: the data directory (`DATA_DIR`, `$TFDS_DATA_DIR`,
    `$T5LITE_SPM_MODEL`) in force when the vocabulary is used is the one that
    holds it, and a change of data directory later reloads from the new one.
    """

    def __init__(self, extra_ids: int = DEFAULT_EXTRA_IDS):
      super().__init__(default_vocab_path(), extra_ids=extra_ids)

    @property
    def sentencepiece_model_file(self) -> str:
      return default_vocab_path()

    def _model_context(self):
      path = default_vocab_path()
      if self._model is None or path != self._sentencepiece_model_file:
        self._model = None
        self._sentencepiece_model_file = ensure_default_vocab()
        check_model_file(self._sentencepiece_model_file)
      return super()._model_context()

  return DefaultVocabulary


_LAZY_CLASS = None


def default_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS):
  """The vocabulary the registered tasks use (built lazily, see module doc)."""
  global _LAZY_CLASS
  if _LAZY_CLASS is None:
    _LAZY_CLASS = _make_lazy_class()
  return _LAZY_CLASS(extra_ids=extra_ids)


def is_default_vocabulary(vocabulary) -> bool:
  """Whether `vocabulary` is a `default_vocabulary()` (one that follows `use_model_file`)."""
  return _LAZY_CLASS is not None and isinstance(vocabulary, _LAZY_CLASS)


def describe_vocabulary(vocabulary) -> str:
  """Where a task's vocabulary comes from, for messages: the setting and file of a
  default vocabulary, the model file of another SentencePiece one, else its class."""
  if is_default_vocabulary(vocabulary):
    if _model_file:
      return f"{MODEL_FILE_SETTING}={_model_file!r}"
    if os.environ.get(VOCAB_ENV):
      return f"${VOCAB_ENV}={os.environ[VOCAB_ENV]!r} ({MODEL_FILE_SETTING} is None)"
    return f"the default pydocs vocabulary {default_vocab_path()!r} ({MODEL_FILE_SETTING} is None)"
  model_file = getattr(vocabulary, "sentencepiece_model_file", None)
  if model_file:
    return f"the task's own SentencePiece model {model_file!r} ({MODEL_FILE_SETTING} does not apply to it)"
  return f"the task's own {type(vocabulary).__name__} ({MODEL_FILE_SETTING} does not apply to it)"


def mode_token_id(vocabulary, token: str) -> int:
  """The id of a UL2 mode token, which must be a single vocabulary piece."""
  tokenizer = getattr(vocabulary, "tokenizer", None)
  if tokenizer is None:
    raise ValueError(
      f"UL2 mode token {token!r} needs a SentencePiece vocabulary with it as a "
      f"user-defined piece; {type(vocabulary).__name__} has none."
    )
  piece_id = tokenizer.piece_to_id(token)
  if piece_id == tokenizer.unk_id():
    raise ValueError(
      f"UL2 mode token {token!r} is not a piece of {vocabulary}; train the "
      f"vocabulary with user_defined_symbols={list(UL2_MODE_TOKENS)} (the default)."
    )
  return piece_id

"""WordPiece vocabularies (BERT's): training, loading as a seqio vocabulary, and the default one.

The Hugging Face `tokenizers` library does the work: its WordPiece trainer
(`WordPieceTrainer`, BPE-style merges with `##` continuation pieces), BERT's
normalizer (`BertNormalizer`: control characters removed, whitespace unified,
spaces around CJK characters, optional lowercasing with accent stripping), BERT's
pre-tokenizer (splits on whitespace and punctuation) and the WordPiece model and
decoder. What is ours:

* BERT's special tokens at fixed ids in trained vocabularies ([PAD]=0 [UNK]=1
  [CLS]=2 [SEP]=3 [MASK]=4), printable ASCII always in the alphabet, and the
  result written atomically as `tokenizer.json` plus a Hugging Face `vocab.txt`.
* `WordPieceVocabulary`, a `seqio.Vocabulary` over a `tokenizer.json` or a BERT
  `vocab.txt`, with the special ids as attributes, `word_start_ids()` for
  whole-word masking, and the checks BERT inputs need (pad id 0, every special
  token present).
* The default vocabulary of the built-in BERT tasks: trained once, on first use,
  from the pydocs train split (about 1 s once the corpus is built) and cached in
  the data directory next to the default SentencePiece model.

seqio and TensorFlow are imported lazily: `WordPieceVocabulary` is built the
first time the name is looked up (module `__getattr__`), so importing this module
needs neither. The TensorFlow path (`encode_tf` / `decode_tf`) calls the same
Python tokenizer through `tf.numpy_function`: it runs in tf.data pipelines of this
process, but not where a graph must be serialised (tf.data service, Beam caching).
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Optional

import numpy as np

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
# The ids trained vocabularies give the special tokens (their order in SPECIAL_TOKENS).
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
CONTINUATION_PREFIX = "##"
# Characters every trained vocabulary holds, as a word start and (letters and
# digits) as a `##` continuation, however rare in the text: printable ASCII.
REQUIRED_CHARS = "".join(chr(c) for c in range(33, 127))

# The default vocabulary of the built-in BERT tasks, trained on the pydocs train split (cased).
DEFAULT_WORDPIECE_SIZE = 8000
DEFAULT_LOWERCASE = False
# Bumped whenever the default's training settings change, so that a file cached by an older t5lite is not reused.
DEFAULT_WORDPIECE_REVISION = 1


def _tokenizers():
  import tokenizers  # pylint: disable=g-import-not-at-top

  return tokenizers


def _bert_tokenizer(model, lowercase: bool):
  """A `tokenizers.Tokenizer` with BERT's normalizer, pre-tokenizer and decoder around `model`."""
  tk = _tokenizers()
  tokenizer = tk.Tokenizer(model)
  tokenizer.normalizer = tk.normalizers.BertNormalizer(
    clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
  )
  tokenizer.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = tk.decoders.WordPiece(prefix=CONTINUATION_PREFIX)
  return tokenizer


def output_paths(output: str) -> tuple[str, str]:
  """Where `train_wordpiece(..., output)` writes: (tokenizer.json path, vocab.txt path).

  A path ending in `.json` is the tokenizer file; its `vocab.txt` goes beside it
  (`vocab.txt` for `tokenizer.json`, `NAME.vocab.txt` for `NAME.json`). Any other
  path is a directory that gets `tokenizer.json` and `vocab.txt`.

  Raises:
    ValueError: an empty path, a `.txt` / `.model` path, or an existing file where a directory is meant.
  """
  if not isinstance(output, (str, os.PathLike)) or not str(output).strip():
    raise ValueError(f"output={output!r} is not valid: give a directory or a path ending in .json.")
  output = os.path.abspath(os.path.expanduser(str(output)))
  if output.endswith(".json"):
    folder, name = os.path.split(output)
    vocab_name = "vocab.txt" if name == "tokenizer.json" else name[: -len(".json")] + ".vocab.txt"
    return output, os.path.join(folder, vocab_name)
  if os.path.splitext(output)[1] in (".txt", ".model", ".vocab"):
    raise ValueError(
      f"output={output!r}: a WordPiece vocabulary is written as a tokenizer.json (with a vocab.txt beside it); "
      "give a directory or a path ending in .json."
    )
  if os.path.exists(output) and not os.path.isdir(output):
    raise ValueError(f"output={output!r} is a file; give a directory (or a path ending in .json) for the tokenizer.")
  return os.path.join(output, "tokenizer.json"), os.path.join(output, "vocab.txt")


def train_wordpiece(
  texts: Iterable[str],
  output: str,
  vocab_size: int = DEFAULT_WORDPIECE_SIZE,
  lowercase: bool = False,
  min_frequency: int = 2,
  limit_alphabet: Optional[int] = None,
  required_chars: str = REQUIRED_CHARS,
) -> str:
  """Trains a BERT WordPiece vocabulary with `tokenizers`' WordPieceTrainer and writes it atomically.

  Args:
    texts: documents (strings); empty ones are skipped.
    output: a directory (gets `tokenizer.json` and `vocab.txt`) or a `.json`
      path (see `output_paths`).
    vocab_size: the number of tokens, specials and alphabet included. The
      result may be smaller when the text offers no more merges.
    lowercase: lowercase (and strip accents from) the text first, as
      bert-base-uncased; False keeps case, as bert-base-cased.
    min_frequency: the least count a pair needs to be merged.
    limit_alphabet: keep only this many of the most frequent characters
      (None keeps every character of the text).
    required_chars: characters given a token (letters and digits also a `##`
      continuation token) whatever their frequency; printable ASCII by default.
      Without them a word holding an unseen character encodes to [UNK] whole.

  Returns:
    The path of the `tokenizer.json` written; its vocabulary has [PAD]=0
    [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4. Nothing is written on an error.

  Raises:
    ValueError: no text, a bad output path, min_frequency < 1, or a vocab_size
      below the specials plus the text's alphabet (the message gives the minimum).
  """
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < len(SPECIAL_TOKENS) + 1:
    raise ValueError(f"vocab_size={vocab_size!r} is not valid: give an int of at least {len(SPECIAL_TOKENS) + 1}.")
  if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
    raise ValueError(f"min_frequency={min_frequency!r} is not valid: give an int >= 1.")
  json_path, vocab_path = output_paths(output)
  docs = [t for t in texts if isinstance(t, str) and t.strip()]
  if not docs:
    raise ValueError("No text to train a WordPiece vocabulary on: the source gave no non-empty documents.")
  chars = sorted({c.lower() if lowercase else c for c in required_chars})
  # One extra line of words `x<c>` puts `##c` in the alphabet for each required letter and
  # digit (the trainer's initial_alphabet only adds word starts); seen once, it merges nothing.
  continuations = " ".join("x" + c for c in chars if c.isalnum())
  docs += [continuations] if continuations else []
  tk = _tokenizers()

  def train(specials: list[str], size: int):
    tokenizer = _bert_tokenizer(tk.models.WordPiece(unk_token=UNK_TOKEN), lowercase)
    trainer = tk.trainers.WordPieceTrainer(
      vocab_size=size,
      min_frequency=min_frequency,
      show_progress=False,
      special_tokens=specials,
      initial_alphabet=chars,
      continuing_subword_prefix=CONTINUATION_PREFIX,
      **({} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}),
    )
    tokenizer.train_from_iterator(docs, trainer, length=len(docs))
    return tokenizer.get_vocab(with_added_tokens=True)

  # tokenizers numbers the `##c` continuation tokens in hash-map order, which differs from run to
  # run and breaks ties between merges (huggingface/tokenizers#1794): the same text would give
  # another vocabulary each time. A first pass (no merges) finds the alphabet; the second gets the
  # continuation tokens, sorted, as fixed tokens after the specials, and is then deterministic.
  alphabet = train(list(SPECIAL_TOKENS), 1)
  if len(alphabet) > vocab_size:  # The trainer keeps the whole alphabet even when vocab_size is smaller.
    raise ValueError(
      f"vocab_size={vocab_size} is too small for this text: the {len(SPECIAL_TOKENS)} special tokens and its "
      f"alphabet ({len(alphabet) - len(SPECIAL_TOKENS)} characters and `##` continuations) need at least "
      f"{len(alphabet)}."
    )
  n = len(CONTINUATION_PREFIX)
  fixed = sorted(t for t in alphabet if t.startswith(CONTINUATION_PREFIX) and len(t) > n)
  vocab = train(list(SPECIAL_TOKENS) + fixed, vocab_size)
  ids = [vocab[t] for t in SPECIAL_TOKENS]
  if ids != list(range(len(SPECIAL_TOKENS))):  # The trainer puts special_tokens first, in order.
    raise AssertionError(f"tokenizers gave the special tokens ids {ids}, not 0..4")
  # Only BERT's five are special tokens; the continuation tokens become ordinary ones.
  model = tk.models.WordPiece(vocab, unk_token=UNK_TOKEN, continuing_subword_prefix=CONTINUATION_PREFIX)
  tokenizer = _bert_tokenizer(model, lowercase)
  tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
  folder = os.path.dirname(json_path)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ValueError(f"output={output!r}: cannot create the folder {folder!r}: {e}") from e
  lines = "".join(token + "\n" for token in sorted(vocab, key=vocab.get))
  with tempfile.TemporaryDirectory(dir=folder) as tmp:
    tokenizer.save(os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(tmp, "vocab.txt"), "w", encoding="utf-8") as f:
      f.write(lines)
    # vocab.txt first: a tokenizer.json present means the pair is complete.
    os.replace(os.path.join(tmp, "vocab.txt"), vocab_path)
    os.replace(os.path.join(tmp, "tokenizer.json"), json_path)
  return json_path


def _read_vocab_txt(path: str) -> dict[str, int]:
  """A Hugging Face BERT vocab.txt: one token a line, the line number is the id."""
  vocab: dict[str, int] = {}
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f):
      vocab.setdefault(line.rstrip("\n"), i)
  return vocab


def load_tokenizer(path: str, lowercase: Optional[bool] = None):
  """Loads a WordPiece `tokenizers.Tokenizer` from a tokenizer.json or a BERT vocab.txt, checked for BERT use.

  Args:
    path: a `tokenizer.json` (its normalizer decides the case) or a
      `vocab.txt` (given BERT's normalizer and pre-tokenizer).
    lowercase: for a vocab.txt, whether to lowercase (None: True, as
      bert-base-uncased). For a tokenizer.json it must be None or agree with
      the file's BertNormalizer.

  Returns:
    (tokenizer, lowercase): lowercase is None for a tokenizer.json without a BertNormalizer.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: not a tokenizer.json / vocab.txt, not a WordPiece model, a
      missing special token (named), [PAD] not at id 0, or a contradicting `lowercase`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"WordPiece vocabulary {path!r} does not exist. Train one with "
      "`t5lite vocab train --model_type wordpiece --files 'corpus/*.txt' --output DIR`, or give a BERT vocab.txt."
    )
  tk = _tokenizers()
  if path.endswith(".json"):
    try:
      tokenizer = tk.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception.
      raise ValueError(f"{path!r} is not a tokenizers tokenizer.json: {e}") from e
    if not isinstance(tokenizer.model, tk.models.WordPiece):
      raise ValueError(f"{path!r} holds a {type(tokenizer.model).__name__} model, not WordPiece.")
    normalizer = tokenizer.normalizer
    found = normalizer.lowercase if isinstance(normalizer, tk.normalizers.BertNormalizer) else None
    if lowercase is not None and lowercase != found:
      raise ValueError(
        f"lowercase={lowercase} contradicts {path!r}, whose normalizer says lowercase={found}; "
        "leave lowercase=None for a tokenizer.json (its normalizer decides)."
      )
    vocab = tokenizer.get_vocab(with_added_tokens=True)
  elif path.endswith(".txt"):
    lowercase = True if lowercase is None else bool(lowercase)
    vocab = _read_vocab_txt(path)
    found = lowercase
  else:
    raise ValueError(f"{path!r}: give a tokenizer.json (from the tokenizers library) or a BERT vocab.txt.")
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise ValueError(
      f"WordPiece vocabulary {path!r} lacks {' '.join(missing)}: BERT inputs need {' '.join(SPECIAL_TOKENS[:4])}, "
      f"and masked-language-model training needs {MASK_TOKEN}. Add them, or retrain with `t5lite vocab train "
      "--model_type wordpiece`."
    )
  if vocab[PAD_TOKEN] != 0:
    raise ValueError(
      f"WordPiece vocabulary {path!r} has {PAD_TOKEN} at id {vocab[PAD_TOKEN]}; seqio pads with id 0, so "
      f"{PAD_TOKEN} must be the first token."
    )
  if path.endswith(".txt"):
    model = tk.models.WordPiece(vocab, unk_token=UNK_TOKEN, continuing_subword_prefix=CONTINUATION_PREFIX)
    tokenizer = _bert_tokenizer(model, lowercase)
  # Specials already in the vocabulary keep their ids; this makes them whole tokens in text and in decoding.
  tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
  return tokenizer, found


def _seqio():
  import seqio  # pylint: disable=g-import-not-at-top

  return seqio


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return tf


def _make_classes():
  seqio = _seqio()

  class WordPieceVocabulary(seqio.Vocabulary):
    """A WordPiece vocabulary as a seqio Vocabulary, with BERT's special ids.

    `encode` gives the WordPiece ids of a text (no [CLS]/[SEP] added: the BERT
    preprocessors add them); `decode` drops [PAD] and shows the other special
    tokens, and, unlike seqio's default, does not stop at eos_id (= [SEP],
    which separates sentence pairs). Ids outside the vocabulary decode as [UNK].
    Two vocabularies from the same file (and case) are equal; pickling keeps
    the path and reloads the file on use.
    """

    def __init__(self, path: str, lowercase: Optional[bool] = None):
      """Loads and checks `path` now (see `load_tokenizer` for the errors)."""
      super().__init__(extra_ids=0)
      self._path = os.path.abspath(os.path.expanduser(str(path)))
      self._tokenizer, self._lowercase = load_tokenizer(self._path, lowercase)
      self._word_starts = None

    # -- loading ---------------------------------------------------------------------------------------------------
    def _loaded(self):
      """The `tokenizers.Tokenizer` (loaded again after unpickling)."""
      if self._tokenizer is None:
        self._tokenizer, found = load_tokenizer(self._path, self._lowercase)
        self._lowercase = found
      return self._tokenizer

    def __getstate__(self):
      state = self.__dict__.copy()
      state["_tokenizer"] = None
      state["_word_starts"] = None
      return state

    def __setstate__(self, state):
      self.__dict__.update(state)

    def _key(self):
      return (self._path, self._lowercase)

    def __eq__(self, other):
      return type(other) is type(self) and other._key() == self._key()

    def __hash__(self):
      return hash((type(self).__name__,) + self._key())

    def __str__(self) -> str:
      return f"{type(self).__name__}(file={self.tokenizer_file!r}, lowercase={self._lowercase})"

    __repr__ = __str__

    # -- ids -------------------------------------------------------------------------------------------------------
    @property
    def tokenizer_file(self) -> str:
      """The tokenizer.json or vocab.txt the vocabulary was loaded from (absolute)."""
      return self._path

    @property
    def tokenizer(self):
      """The `tokenizers.Tokenizer` that encodes and decodes."""
      return self._loaded()

    @property
    def lowercase(self) -> Optional[bool]:
      """Whether text is lowercased first (None: a tokenizer.json's own normalizer, not BERT's)."""
      return self._lowercase

    def _id(self, token: str) -> int:
      return self._loaded().token_to_id(token)

    @property
    def pad_id(self) -> int:
      return PAD_ID  # load_tokenizer refuses any other [PAD] id

    @property
    def unk_id(self) -> int:
      return self._id(UNK_TOKEN)

    @property
    def cls_id(self) -> int:
      return self._id(CLS_TOKEN)

    @property
    def sep_id(self) -> int:
      return self._id(SEP_TOKEN)

    @property
    def mask_id(self) -> int:
      return self._id(MASK_TOKEN)

    @property
    def eos_id(self) -> int:
      """[SEP]'s id (BERT tasks use add_eos=False; seqio needs an eos id)."""
      return self.sep_id

    @property
    def bos_id(self) -> Optional[int]:
      return None

    @property
    def special_ids(self) -> frozenset:
      """The ids of [PAD] [UNK] [CLS] [SEP] [MASK]."""
      return frozenset((self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))

    @property
    def _base_vocab_size(self) -> int:
      return self._loaded().get_vocab_size(with_added_tokens=True)

    def word_start_ids(self) -> np.ndarray:
      """bool [vocab_size]: True for ids that begin a word, False for `##` continuation pieces (for whole-word
      masking). Special tokens are word starts."""
      if self._word_starts is None:
        tokenizer = self._loaded()
        starts = np.ones([self.vocab_size], dtype=bool)
        n = len(CONTINUATION_PREFIX)
        for token, i in tokenizer.get_vocab(with_added_tokens=True).items():
          starts[i] = not (token.startswith(CONTINUATION_PREFIX) and len(token) > n)
        self._word_starts = starts
      return self._word_starts.copy()

    # -- Python ----------------------------------------------------------------------------------------------------
    def _encode(self, s) -> list[int]:
      if isinstance(s, bytes):
        s = s.decode("utf-8")
      return self._loaded().encode(s, add_special_tokens=False).ids

    def _clean(self, ids) -> list[int]:
      size, unk = self._base_vocab_size, self.unk_id
      return [i if 0 <= i < size else unk for i in (int(i) for i in ids) if i != PAD_ID]

    def _decode(self, ids) -> str:
      return self._loaded().decode(self._clean(ids), skip_special_tokens=False)

    def decode(self, ids) -> str:
      """The text of `ids` (a list, numpy array or eager tensor), [PAD] dropped, through the end (no eos stop)."""
      if hasattr(ids, "numpy"):
        ids = ids.numpy()
      return self._decode(np.asarray(ids).reshape([-1]).tolist())

    # -- TensorFlow ------------------------------------------------------------------------------------------------
    def _encode_tf(self, s):
      """A string scalar -> int32 [n]; a string vector -> int32 RaggedTensor [b, None]."""
      tf = _tf()
      s = tf.convert_to_tensor(s)
      tokenizer = self._loaded()  # loaded now, at trace time, not inside the pipeline's threads

      def text(x) -> str:  # numpy_function passes a 0-d array eagerly, bytes in a graph
        x = x.item() if isinstance(x, np.ndarray) else x
        return x.decode("utf-8") if isinstance(x, bytes) else str(x)

      if s.shape.rank == 0:

        def one(x):
          return np.asarray(tokenizer.encode(text(x), add_special_tokens=False).ids, np.int32)

        ids = tf.numpy_function(tf.autograph.experimental.do_not_convert(one), [s], tf.int32, stateful=False)
        ids.set_shape([None])
        return ids
      if s.shape.rank == 1:

        def many(x):
          encs = tokenizer.encode_batch([text(t) for t in x.tolist()], add_special_tokens=False)
          flat = np.asarray([i for e in encs for i in e.ids], np.int32)
          return flat, np.asarray([len(e.ids) for e in encs], np.int64)

        many = tf.autograph.experimental.do_not_convert(many)
        flat, lengths = tf.numpy_function(many, [s], [tf.int32, tf.int64], stateful=False)
        flat.set_shape([None])
        lengths.set_shape(s.shape)
        return tf.RaggedTensor.from_row_lengths(flat, lengths)
      raise ValueError(f"WordPieceVocabulary.encode_tf takes a string scalar or vector, not shape {s.shape}.")

    def _decode_tf(self, ids):  # decode_tf below does the whole job (no eos stop)
      return self.decode_tf(ids)

    def decode_tf(self, ids):
      """int [n] -> string scalar; int [b, n] -> string [b]. [PAD] dropped, no eos stop."""
      tf = _tf()
      ids = tf.convert_to_tensor(ids)
      rank = ids.shape.rank
      if rank not in (1, 2):
        raise ValueError(f"WordPieceVocabulary.decode_tf takes int ids of rank 1 or 2, not shape {ids.shape}.")
      self._loaded()

      def run(x):
        rows = [x] if x.ndim == 1 else list(x)
        out = np.asarray([self._decode(r.tolist()).encode("utf-8") for r in rows], dtype=object)
        return out[0] if x.ndim == 1 else out

      text = tf.numpy_function(tf.autograph.experimental.do_not_convert(run), [ids], tf.string, stateful=False)
      text.set_shape([] if rank == 1 else ids.shape[:1])
      return text

  class DefaultWordPieceVocabulary(WordPieceVocabulary):
    """The default WordPiece vocabulary: trained from pydocs on first use, then reused.

    Nothing is trained or read at construction (tasks are registered at import);
    the file is resolved under the data directory in force at first use and made
    then if missing (`ensure_default_wordpiece`); a later change of data directory
    reloads from the new one. The special ids are the trained layout's constants,
    so reading them trains nothing. All instances are equal.
    """

    def __init__(self):  # pylint: disable=super-init-not-called
      seqio.Vocabulary.__init__(self, extra_ids=0)
      self._path = None
      self._lowercase = DEFAULT_LOWERCASE
      self._tokenizer = None
      self._word_starts = None

    def _loaded(self):
      path = default_wordpiece_path()
      if self._tokenizer is None or path != self._path:
        self._tokenizer, self._word_starts = None, None
        self._path = ensure_default_wordpiece()
        self._tokenizer, _ = load_tokenizer(self._path)
      return self._tokenizer

    @property
    def tokenizer_file(self) -> str:
      return default_wordpiece_path()

    def _key(self):
      return ("default",)

    unk_id = property(lambda self: UNK_ID)
    cls_id = property(lambda self: CLS_ID)
    sep_id = property(lambda self: SEP_ID)
    mask_id = property(lambda self: MASK_ID)

  for cls in (WordPieceVocabulary, DefaultWordPieceVocabulary):
    cls.__module__, cls.__qualname__ = __name__, cls.__name__  # so pickle finds them through __getattr__
  return {"WordPieceVocabulary": WordPieceVocabulary, "DefaultWordPieceVocabulary": DefaultWordPieceVocabulary}


_CLASSES: dict = {}


def __getattr__(name: str):
  """Builds the seqio-based classes on first lookup (seqio imports TensorFlow)."""
  if name in ("WordPieceVocabulary", "DefaultWordPieceVocabulary"):
    if not _CLASSES:
      _CLASSES.update(_make_classes())
    return _CLASSES[name]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_wordpiece_path(data_dir: Optional[str] = None) -> str:
  """The default vocabulary's tokenizer.json under the data directory (next to the default SentencePiece model)."""
  from t5lite.data import data_dirs, pydocs  # pylint: disable=g-import-not-at-top

  data_dir = data_dirs.resolve_data_dir(data_dir)
  case = "uncased" if DEFAULT_LOWERCASE else "cased"
  name = f"pydocs_wordpiece_{case}_{DEFAULT_WORDPIECE_SIZE}_r{DEFAULT_WORDPIECE_REVISION}"
  return os.path.join(data_dir, "t5lite_vocab", pydocs.CONFIG_NAME, name, "tokenizer.json")


def _default_texts(data_dir: Optional[str]) -> Iterable[str]:
  """The pydocs train split's documents (built first if missing)."""
  from t5lite.data import sources, vocab  # pylint: disable=g-import-not-at-top

  return vocab.texts_from_source(sources.PydocsSource(data_dir=data_dir), "train")


def ensure_default_wordpiece(data_dir: Optional[str] = None) -> str:
  """Trains the default WordPiece vocabulary on the pydocs train split once; returns its tokenizer.json path.

  Processes that start together wait on a file lock while the first one trains;
  the others then reuse its file. About 1 s of training once the corpus exists.
  """
  path = default_wordpiece_path(data_dir)
  if os.path.exists(path):
    return path
  from t5lite.data import locking  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(path), exist_ok=True)
  with locking.file_lock(path + ".lock"):
    if not os.path.exists(path):
      # The first use is often inside seqio's graph tracing; reading the corpus needs eager mode.
      with _tf().init_scope():
        texts = list(_default_texts(data_dir))
      train_wordpiece(texts, path, vocab_size=DEFAULT_WORDPIECE_SIZE, lowercase=DEFAULT_LOWERCASE)
  return path


def default_wordpiece_vocabulary():
  """The WordPiece vocabulary of the built-in BERT tasks (lazy: trained on first use, see the module doc)."""
  return __getattr__("DefaultWordPieceVocabulary")()


def wordpiece_vocabulary(path: str, lowercase: Optional[bool] = None):
  """`WordPieceVocabulary(path, lowercase)`: loads and checks a tokenizer.json or BERT vocab.txt."""
  return __getattr__("WordPieceVocabulary")(path, lowercase=lowercase)


def describe(vocabulary) -> str:
  """One line on a WordPiece vocabulary for messages: file, size, case and special ids."""
  names = ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id")
  ids = " ".join(f"{t}={getattr(vocabulary, n)}" for t, n in zip(SPECIAL_TOKENS, names))
  case = {True: "uncased", False: "cased", None: "its own normalizer"}[vocabulary.lowercase]
  return f"{vocabulary.tokenizer_file}: vocab_size {vocabulary.vocab_size} ({case}); special ids {ids}"

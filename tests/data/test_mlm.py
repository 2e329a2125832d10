"""Tests for t5lite/data/mlm.py: BERT input layout, document chunks, MLM and whole-word masking statistics."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5lite.data import mlm, wordpiece

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{i}" for i in range(60)]
PIECES = [f"##p{i}" for i in range(35)]
PAD, UNK, CLS, SEP, MASK = range(5)
FIRST_WORD, FIRST_PIECE = 5, 5 + len(WORDS)
N_EXAMPLES, LENGTH = 1500, 64


def write_vocab(path, tokens):
  path.write_text("".join(t + "\n" for t in tokens))
  return str(path)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  """A 100-token BERT vocab.txt: the five specials, 60 words, 35 `##` pieces."""
  path = write_vocab(tmp_path_factory.mktemp("wp") / "vocab.txt", SPECIALS + WORDS + PIECES)
  return wordpiece.WordPieceVocabulary(path, lowercase=True)


def features(vocab):
  return {"inputs": seqio.Feature(vocab, add_eos=False), "targets": seqio.Feature(vocab, add_eos=False)}


def random_rows(n=N_EXAMPLES, seed=0, pieces=False):
  """[CLS] ids [SEP] rows of 10..LENGTH-2 random non-special ids (words, and `##` pieces if asked)."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    k = int(rng.integers(10, LENGTH - 1))
    hi = FIRST_PIECE + len(PIECES) if pieces else FIRST_PIECE
    ids = rng.integers(FIRST_WORD, hi, size=k)
    ids[0] = rng.integers(FIRST_WORD, FIRST_PIECE)  # a row starts with a word
    rows.append(np.concatenate([[CLS], ids, [SEP]]).astype(np.int32))
  return rows


def run_mlm(rows, vocab, seed=7, **kwargs):
  ds = tf.data.Dataset.from_generator(
    lambda: ({"inputs": r} for r in rows), output_signature={"inputs": tf.TensorSpec([None], tf.int32)}
  )
  with seqio.utils.map_seed_manager(seed):
    out = mlm.mlm(ds, {"inputs": LENGTH, "targets": LENGTH}, features(vocab), **kwargs)
  return [(ex["inputs"], ex["targets"]) for ex in out.as_numpy_iterator()]


def masking_stats(rows, outputs, special=(PAD, UNK, CLS, SEP, MASK)):
  selected = candidates = masked = randomized = kept = 0
  for row, (inputs, targets) in zip(rows, outputs):
    assert inputs.shape == targets.shape == row.shape
    sel = targets > 0
    # Targets hold the original ids exactly where tokens were selected.
    np.testing.assert_array_equal(targets[sel], row[sel])
    # Unselected positions are untouched; specials are never selected.
    np.testing.assert_array_equal(inputs[~sel], row[~sel])
    assert not np.isin(row[sel], special).any()
    cand = ~np.isin(row, special)
    selected += sel.sum()
    candidates += cand.sum()
    masked += (inputs[sel] == MASK).sum()
    kept += (inputs[sel] == row[sel]).sum()
    rnd = inputs[sel][(inputs[sel] != MASK) & (inputs[sel] != row[sel])]
    # Random replacements are non-special ids.
    assert not np.isin(rnd, special).any()
    randomized += rnd.size
  return selected / candidates, masked / selected, randomized / selected, kept / selected


def test_mlm_statistics_bert_defaults(vocab):
  rows = random_rows()
  outputs = run_mlm(rows, vocab)
  density, masked, randomized, kept = masking_stats(rows, outputs)
  assert abs(density - 0.15) <= 0.01
  assert abs(masked - 0.8) <= 0.02 and abs(randomized - 0.1) <= 0.02 and abs(kept - 0.1) <= 0.02
  # Exactly max(1, round(0.15 n)) of the n non-special tokens per example.
  for row, (_, targets) in zip(rows, outputs):
    n = int((row > MASK).sum())
    assert int((targets > 0).sum()) == max(1, int(np.round(0.15 * n)))


def test_mlm_statistics_other_rates(vocab):
  rows = random_rows(seed=1)
  outputs = run_mlm(rows, vocab, noise_density=0.3, mask_rate=0.5, random_rate=0.25)
  density, masked, randomized, kept = masking_stats(rows, outputs)
  assert abs(density - 0.3) <= 0.01
  # A random id equal to the original (1 in 95) counts as kept.
  assert abs(masked - 0.5) <= 0.02 and abs(randomized - 0.25) <= 0.02 and abs(kept - 0.25) <= 0.02


def test_specials_in_the_middle_and_padding_never_selected(vocab):
  rows = []
  for r in random_rows(n=300, seed=2):
    r = r.copy()
    r[3] = SEP
    r[5] = UNK
    r[7] = MASK
    rows.append(np.concatenate([r, [PAD, PAD]]).astype(np.int32))
  for inputs, targets in run_mlm(rows, vocab, noise_density=0.9, mask_rate=0.0, random_rate=1.0):
    assert (targets[[0, 3, 5, 7, -3, -2, -1]] == 0).all()
    # With noise 0.9, most non-special tokens are selected and replaced by random non-special ids.
    assert not np.isin(inputs[targets > 0], [PAD, UNK, CLS, SEP, MASK]).any()


def test_mlm_is_deterministic_for_a_seed(vocab):
  rows = random_rows(n=50, seed=3)
  a, b, c = run_mlm(rows, vocab, seed=11), run_mlm(rows, vocab, seed=11), run_mlm(rows, vocab, seed=12)
  assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))
  assert any((x[1] != y[1]).any() for x, y in zip(a, c))


def words_of(row, word_start):
  """Lists of positions: a word-start position and the `##` positions after it."""
  words = []
  for i, t in enumerate(row):
    if word_start[t] or not words:
      words.append([i])
    else:
      words[-1].append(i)
  return words


def test_whole_word_masking_keeps_words_whole(vocab):
  word_start = vocab.word_start_ids()
  assert word_start[FIRST_WORD] and not word_start[FIRST_PIECE] and word_start[CLS]
  rows = random_rows(seed=4, pieces=True)
  outputs = run_mlm(rows, vocab, whole_word=True)
  selected = candidates = masked = randomized = kept = 0
  multi_piece_selected = 0
  for row, (inputs, targets) in zip(rows, outputs):
    sel = targets > 0
    np.testing.assert_array_equal(targets[sel], row[sel])
    np.testing.assert_array_equal(inputs[~sel], row[~sel])
    assert not sel[0] and not sel[-1]
    n = int((row > MASK).sum())
    # BERT's greedy rule: never more than max(1, round(0.15 n)) tokens.
    assert sel.sum() <= max(1, round(0.15 * n))
    for word in words_of(row, word_start):
      flags = sel[word]
      assert flags.all() or not flags.any(), (row, word, sel)
      if flags.all():
        multi_piece_selected += len(word) > 1
        # One 80/10/10 draw per word: all pieces masked, all kept, or all replaced by random ids.
        pieces = inputs[word]
        is_mask, is_same = pieces == MASK, pieces == row[word]
        assert is_mask.all() or not is_mask.any()
        if is_mask.all():
          masked += 1
        elif is_same.all():
          kept += 1
        else:
          randomized += 1
    selected += sel.sum()
    candidates += n
  assert multi_piece_selected > 500
  assert abs(selected / candidates - 0.15) <= 0.01
  words = masked + kept + randomized
  assert abs(masked / words - 0.8) <= 0.02 and abs(randomized / words - 0.1) <= 0.02
  assert abs(kept / words - 0.1) <= 0.02


def test_whole_word_never_selects_an_orphan_piece(vocab):
  # A chunk that starts inside a word: [CLS] ##p0 ##p1 w0 ... (the orphan pieces join [CLS]'s word).
  rows = [np.array([CLS, FIRST_PIECE, FIRST_PIECE + 1] + [FIRST_WORD] * 5 + [SEP], np.int32)] * 200
  for _, targets in run_mlm(rows, vocab, seed=5, whole_word=True, noise_density=0.9):
    assert (targets[:3] == 0).all() and (targets[3:-1] > 0).sum() >= 1


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"noise_density": 0.0}, r"noise_density=0.0 must be in \(0, 1\)"),
    ({"noise_density": 1.5}, r"noise_density=1.5 must be in \(0, 1\)"),
    ({"mask_rate": -0.1}, r"mask_rate=-0.1 must be in \[0, 1\]"),
    ({"random_rate": 2}, r"random_rate=2 must be in \[0, 1\]"),
    ({"mask_rate": 0.8, "random_rate": 0.3}, r"mask_rate=0.8 \+ random_rate=0.3 .* must be <= 1"),
  ],
)
def test_bad_rates_refused(vocab, kwargs, message):
  with pytest.raises(ValueError, match=message):
    run_mlm(random_rows(n=1), vocab, **kwargs)


class NoMaskVocabulary(seqio.ByteVocabulary):
  """A vocabulary with [CLS] and [SEP] ids but no [MASK]."""

  cls_id, sep_id, mask_id = 2, 3, None


def test_vocabulary_without_mask_refused(tmp_path):
  ds = tf.data.Dataset.from_tensors({"inputs": [CLS, 9, SEP]})
  with pytest.raises(ValueError, match=r"mlm needs a vocabulary with the token\(s\) \['\[MASK\]'\].*WordPiece"):
    mlm.mlm(ds, {"inputs": 8}, features(NoMaskVocabulary()))
  # A SentencePiece or byte vocabulary has none of BERT's specials.
  with pytest.raises(ValueError, match=r"\['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
    mlm.mlm(ds, {"inputs": 8}, features(seqio.ByteVocabulary()))
  # WordPiece files without [MASK] are refused by their loader.
  with pytest.raises(ValueError, match=r"lacks \[MASK\]"):
    wordpiece.WordPieceVocabulary(write_vocab(tmp_path / "vocab.txt", SPECIALS[:4] + WORDS))


def pair_lengths_by_popping(la, lb, budget):
  """Google BERT's _truncate_seq_pair, literally."""
  while la + lb > budget:
    if la > lb:
      la -= 1
    else:
      lb -= 1
  return la, lb


def test_truncate_pair_lengths_matches_bert():
  for la in range(0, 12):
    for lb in range(0, 12):
      for budget in (2, 5, 7, 10):
        got = mlm.truncate_pair_lengths(tf.constant(la), tf.constant(lb), budget)
        assert (int(got[0]), int(got[1])) == pair_lengths_by_popping(la, lb, budget), (la, lb, budget)


def test_bert_inputs_single_and_pair(vocab):
  ds = tf.data.Dataset.from_tensors({"inputs": tf.constant([10, 11, 12, 13, 14, 15], tf.int32), "b": [20, 21]})
  single = next(mlm.bert_inputs(ds, {"inputs": 6}, features(vocab)).as_numpy_iterator())
  assert single["inputs"].tolist() == [CLS, 10, 11, 12, 13, SEP]
  assert single["token_type_ids"].tolist() == [0] * 6 and single["b"].tolist() == [20, 21]
  pair = next(mlm.bert_inputs(ds, {"inputs": 9}, features(vocab), second_key="b").as_numpy_iterator())
  # Budget 6: A (6) is cut to 4, B (2) kept whole.
  assert pair["inputs"].tolist() == [CLS, 10, 11, 12, 13, SEP, 20, 21, SEP]
  assert pair["token_type_ids"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]
  assert "b" not in pair
  # Text is encoded with the inputs vocabulary.
  text = tf.data.Dataset.from_tensors({"inputs": "w1 w2p0", "b": "w3"})
  out = next(mlm.bert_inputs(text, {"inputs": 16}, features(vocab), second_key="b").as_numpy_iterator())
  w1, w2, w3, p0 = FIRST_WORD + 1, FIRST_WORD + 2, FIRST_WORD + 3, FIRST_PIECE
  assert out["inputs"].tolist() == [CLS, w1, w2, p0, SEP, w3, SEP]
  with pytest.raises(ValueError, match="too short"):
    mlm.bert_inputs(ds, {"inputs": 4}, features(vocab), second_key="b")


def test_document_chunks_fill_the_inputs_length(vocab):
  docs = [np.arange(5, 5 + n, dtype=np.int32) % 90 + 5 for n in (100, 30, 5)]
  ds = tf.data.Dataset.from_generator(
    lambda: ({"inputs": d} for d in docs), output_signature={"inputs": tf.TensorSpec([None], tf.int32)}
  )
  chunks = mlm.document_chunks(ds, {"inputs": 32}, features(vocab))
  out = [x["inputs"] for x in mlm.bert_inputs(chunks, {"inputs": 32}, features(vocab)).as_numpy_iterator()]
  # 100 -> 30 + 30 + 30 + 10; 30 -> 30; 5 tokens (< 8) dropped. No chunk spans two documents.
  assert [len(x) for x in out] == [32, 32, 32, 12, 32]
  assert out[0][1:-1].tolist() == docs[0][:30].tolist() and out[4][1:-1].tolist() == docs[1].tolist()

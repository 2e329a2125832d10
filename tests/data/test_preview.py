"""Decoding examples for `t5lite data preview` (t5lite/data/preview.py)."""

import numpy as np

from t5lite.data import labels, preview, wordpiece


def test_preview_shows_labels_and_bert_inputs_whole():
  """`t5lite data preview`'s decoding: class 0 is a name (not padding), [SEP] is shown (it is
  WordPiece's EOS id, where SentencePiece decoding stops), regression targets are numbers."""
  vocab = wordpiece.default_wordpiece_vocabulary()
  names = labels.ClassLabelVocabulary(["class", "function", "method"])
  assert preview.decode_ids(names, np.array([0])) == "class"
  assert preview.decode_ids(names, np.array([2])) == "method"
  ids = [vocab.cls_id, *vocab.encode("first part"), vocab.sep_id, *vocab.encode("second"), vocab.sep_id, 0, 0]
  assert preview.decode_ids(vocab, np.array(ids)) == "[CLS] first part [SEP] second [SEP]"
  assert preview.decode_ids(labels.ScalarVocabulary(), np.array([0.25], np.float32)) == "0.25"

"""Tests for t5lite/metrics.py's classification and regression metrics, against hand-computed values."""

import math

import pytest

from t5lite import metrics


def test_accuracy():
  assert metrics.accuracy(["a", "b", "a", "c"], ["a", "a", "a", "c"]) == {"accuracy": 75.0}


def test_f1_macro_by_hand():
  targets = ["cat", "cat", "dog", "dog", "bird"]
  predictions = ["cat", "dog", "dog", "dog", "cat"]
  # cat: tp 1, predicted 2, actual 2 -> 2/4 = 0.5; dog: tp 2, predicted 3, actual 2 -> 4/5 = 0.8;
  # bird: never predicted -> 0. Macro: (0.5 + 0.8 + 0) / 3.
  assert metrics.f1(targets, predictions)["f1"] == pytest.approx(100 * 1.3 / 3)


def test_f1_counts_a_class_only_predicted():
  # "fish" is predicted once and never a target: F1 0, and it counts in the macro average.
  out = metrics.f1(["a", "a", "b"], ["a", "fish", "b"])
  # a: tp 1, predicted 1, actual 2 -> 2/3; b: 1; fish: 0.
  assert out["f1"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)


def test_f1_positive_class_and_ties():
  targets = ["yes", "no", "yes", "no"]
  predictions = ["yes", "yes", "no", "no"]
  fn = metrics.f1_with_positive("yes")
  out = fn(targets, predictions)
  # Both classes: tp 1, predicted 2, actual 2 -> 0.5.
  assert out == {"f1": pytest.approx(50.0), "f1_positive": pytest.approx(50.0)}
  assert fn.__name__ == "f1"
  assert metrics.f1(["no"], ["no"], positive_label="yes") == {"f1": 100.0, "f1_positive": 0.0}
  assert metrics.f1([], []) == {"f1": 0.0}
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.f1(["a", "b"], ["a"])


def test_pearson_and_spearman():
  t = [1.0, 2.0, 3.0, 4.0]
  p = [1.0, 3.0, 2.0, 5.0]
  # Pearson by hand: means 2.5 and 2.75; cov sum 5.5; var sums 5 and 8.75.
  assert metrics.pearson(t, p)["pearson"] == pytest.approx(100 * 5.5 / math.sqrt(5 * 8.75))
  # Spearman: ranks of p are 1, 3, 2, 4 -> 1 - 6 * 2 / (4 * 15) = 0.8.
  assert metrics.spearman(t, p)["spearman"] == pytest.approx(80.0)
  # Ties get their mean rank: p ranks 1.5, 1.5, 3, 4 vs 1, 2, 3, 4.
  tied = metrics.spearman(t, [0.0, 0.0, 1.0, 2.0])["spearman"]
  assert tied == pytest.approx(100 * 4.5 / math.sqrt(5 * 4.5))
  assert math.isnan(metrics.pearson(t, [1.0] * 4)["pearson"])
  with pytest.raises(ValueError, match="pearson needs numbers"):
    metrics.pearson(["a", "b"], ["c", "d"])

"""Metric functions for seqio tasks: exact match, accuracy, F1, BLEU, ROUGE, Pearson and Spearman.

seqio calls a metric function as `fn(targets, predictions) -> {name: value}`
with the postprocessed targets and predictions of a whole split (strings, class
names, or floats for regression). seqio itself ships none of these; sacrebleu
computes BLEU, rouge-score ROUGE and scipy the correlations, and this module
adapts them to that signature (values in percent, as T5's evaluation reports
them; F1 is written here, as scikit-learn's macro F1 defines it).
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence


def _check(targets: Sequence, predictions: Sequence) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> Mapping[str, float]:
  """Percentage of predictions equal to their target after stripping whitespace."""
  _check(targets, predictions)
  if not targets:
    return {"exact_match": 0.0}
  hits = sum(str(t).strip() == str(p).strip() for t, p in zip(targets, predictions))
  return {"exact_match": 100.0 * hits / len(targets)}


def accuracy(targets: Sequence, predictions: Sequence) -> Mapping[str, float]:
  """Percentage of predictions equal to their target (labels of any type)."""
  _check(targets, predictions)
  if not targets:
    return {"accuracy": 0.0}
  return {"accuracy": 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}


def f1(targets: Sequence, predictions: Sequence, positive_label: Optional[str] = None) -> Mapping[str, float]:
  """Macro F1 in percent over the classes seen (in the targets or the predictions), as
  scikit-learn's `f1_score(average='macro')`: a class never predicted, or predicted
  and never a target, scores 0. With `positive_label` (a binary task that declares
  its positive class) also "f1_positive", that class's F1 (0 if it is never seen).
  Use `f1_with_positive(label)` to put that in a Task's metric_fns.
  """
  _check(targets, predictions)
  classes = sorted(set(targets) | set(predictions), key=str)
  scores = {c: _class_f1(targets, predictions, c) for c in classes}
  out = {"f1": 100.0 * sum(scores.values()) / len(classes) if classes else 0.0}
  if positive_label is not None:
    out["f1_positive"] = 100.0 * (scores.get(positive_label) or 0.0)
  return out


def _class_f1(targets: Sequence, predictions: Sequence, label) -> float:
  tp = sum(t == label and p == label for t, p in zip(targets, predictions))
  predicted = sum(p == label for p in predictions)
  actual = sum(t == label for t in targets)
  # F1 = 2 tp / (predicted + actual); 0 when the class has no true positive.
  return 2.0 * tp / (predicted + actual) if tp else 0.0


def f1_with_positive(positive_label: str):
  """`f1` that also reports "f1_positive" for `positive_label` (a metric_fns entry)."""
  fn = functools.partial(f1, positive_label=positive_label)
  fn.__name__ = "f1"  # seqio logs metric functions by name
  return fn


def _floats(name: str, values: Sequence) -> list[float]:
  try:
    return [float(v) for v in values]
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} needs numbers (a regression task's decoded targets), got {list(values)[:3]}...") from e


def pearson(targets: Sequence[float], predictions: Sequence[float]) -> Mapping[str, float]:
  """Pearson correlation coefficient in percent (scipy.stats.pearsonr), as T5's
  `pearson_corrcoef` for STS-B; NaN when either side is constant or has < 2 values.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top

  _check(targets, predictions)
  t, p = _floats("pearson", targets), _floats("pearson", predictions)
  if len(t) < 2 or len(set(t)) < 2 or len(set(p)) < 2:
    return {"pearson": float("nan")}
  return {"pearson": 100.0 * float(stats.pearsonr(t, p)[0])}


def spearman(targets: Sequence[float], predictions: Sequence[float]) -> Mapping[str, float]:
  """Spearman rank correlation in percent (scipy.stats.spearmanr; ties get their mean
  rank), as T5's `spearman_corrcoef`; NaN when either side is constant or has < 2 values.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top

  _check(targets, predictions)
  t, p = _floats("spearman", targets), _floats("spearman", predictions)
  if len(t) < 2 or len(set(t)) < 2 or len(set(p)) < 2:
    return {"spearman": float("nan")}
  return {"spearman": 100.0 * float(stats.spearmanr(t, p)[0])}


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> Mapping[str, float]:
  """Corpus BLEU (sacrebleu's defaults: 13a tokenization, exponential smoothing)."""
  import sacrebleu  # pylint: disable=g-import-not-at-top

  _check(targets, predictions)
  return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(targets)]).score)}


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> Mapping[str, float]:
  """Mean ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measures (with stemming)."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top

  _check(targets, predictions)
  names = ("rouge1", "rouge2", "rougeLsum")
  scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
  totals = dict.fromkeys(names, 0.0)
  for t, p in zip(targets, predictions):
    # rougeLsum splits summaries on newlines.
    scores = scorer.score(str(t).replace(". ", ".\n"), str(p).replace(". ", ".\n"))
    for n in names:
      totals[n] += scores[n].fmeasure
  count = max(len(targets), 1)
  return {n: 100.0 * v / count for n, v in totals.items()}

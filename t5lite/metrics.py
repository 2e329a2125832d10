"""Metric functions for seqio tasks: exact match, accuracy, BLEU and ROUGE.

seqio calls a metric function as `fn(targets, predictions) -> {name: value}`
with the postprocessed target and prediction strings of a whole split. seqio
itself ships none of these; sacrebleu computes BLEU and rouge-score computes
ROUGE, and this module adapts them to that signature (values in percent, as
T5's evaluation reports them).
"""

from __future__ import annotations

from typing import Mapping, Sequence


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

"""Registering the standard family of pretraining tasks over any text source.

`register_pretraining_tasks('pydocs', source, vocabulary)` gives
`pydocs_span_corruption`, `pydocs_prefix_lm`, `pydocs_lm`, one task per UL2
denoiser (`pydocs_ul2_r_3_15`, ...) and the mixture `pydocs_ul2`. The task
packages under `tasks/` call it for each corpus; users call it for their own.
For encoder-only (BERT) models: `register_mlm_task` (masked LM over a text
source) and `register_classification_task` ((text, label) examples).
"""

from __future__ import annotations

import difflib
import functools
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from t5lite import metrics
from t5lite.data import labels, mlm, objectives


def _features(vocabulary, with_inputs: bool = True) -> dict:
  feats = {"targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}
  if with_inputs:
    feats = {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True), **feats}
  return feats


def _rekey_text(dataset, text_key: str = "text"):
  return dataset.map(lambda x: {"targets": x[text_key]})


def _register(name: str, **kwargs) -> seqio.Task:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def register_pretraining_tasks(
  prefix: str,
  source: seqio.DataSource,
  vocabulary: seqio.Vocabulary,
  *,
  text_key: str = "text",
  ul2_rates: Optional[Mapping[str, float]] = None,
) -> list[str]:
  """Registers the pretraining tasks and the UL2 mixture; returns their names."""
  rekey = functools.partial(_rekey_text, text_key=text_key)
  tokenize = functools.partial(seqio.preprocessors.tokenize, with_eos=False)
  names = []

  def add(name, objective, with_inputs=True, tokenizer=tokenize):
    pre = [rekey, tokenizer, objective]
    if with_inputs:
      pre.append(seqio.preprocessors.append_eos_after_trim)
    _register(
      name,
      source=source,
      preprocessors=pre,
      output_features=_features(vocabulary, with_inputs),
      metric_fns=[],
    )
    names.append(name)

  add(f"{prefix}_span_corruption", objectives.span_corruption)
  add(f"{prefix}_prefix_lm", objectives.prefix_lm)
  add(
    f"{prefix}_lm",
    objectives.causal_lm,
    with_inputs=False,
    tokenizer=seqio.preprocessors.tokenize_and_append_eos,
  )
  for d in objectives.UL2_DENOISERS:
    add(f"{prefix}_ul2_{d.name}", d.preprocessor())
  names.append(register_ul2_mixture(prefix, ul2_rates))
  return names


def register_ul2_mixture(prefix: str, rates: Optional[Mapping[str, float]] = None) -> str:
  """The UL2 mixture over `{prefix}_ul2_<denoiser>` tasks.

  `rates` maps denoiser names ('r_3_15', ..., 's') to mixing rates; missing
  names get rate 0 and the default is one rate per denoiser (uniform), since
  the paper treats the mix as a hyper-parameter.
  """
  valid = [d.name for d in objectives.UL2_DENOISERS]
  rates = dict(rates) if rates is not None else {n: 1.0 for n in valid}
  unknown = sorted(set(rates) - set(valid))
  if unknown:
    raise ValueError(f"Unknown UL2 denoiser(s) {unknown} in rates; valid names: {valid}.")
  if not any(r > 0 for r in rates.values()) or any(r < 0 for r in rates.values()):
    raise ValueError(f"UL2 rates {rates} must be non-negative with at least one positive.")
  name = f"{prefix}_ul2"
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(f"{prefix}_ul2_{n}", r) for n, r in rates.items() if r > 0])
  return name


def register_text_to_text_task(
  name: str,
  source: seqio.DataSource,
  vocabulary: seqio.Vocabulary,
  *,
  inputs_key: str = "inputs",
  targets_key: str = "targets",
  preprocessors: Sequence = (),
  metric_fns: Sequence = (),
) -> seqio.Task:
  """A supervised task over examples with input and target strings (fine-tuning)."""
  pre = [
    *preprocessors,
    functools.partial(seqio.preprocessors.rekey, key_map={"inputs": inputs_key, "targets": targets_key}),
    seqio.preprocessors.tokenize,
    seqio.preprocessors.append_eos_after_trim,
  ]
  return _register(
    name,
    source=source,
    preprocessors=pre,
    output_features=_features(vocabulary),
    metric_fns=list(metric_fns),
  )


def register_mlm_task(
  name: str,
  source: seqio.DataSource,
  vocabulary: seqio.Vocabulary,
  *,
  text_key: str = "text",
  whole_word: bool = False,
  noise_density: float = 0.15,
  mask_rate: float = 0.8,
  random_rate: float = 0.1,
) -> seqio.Task:
  """BERT's masked-LM pretraining over the documents of `source` (for the 'mlm' feature converter).

  Each document is tokenized with `vocabulary` (a WordPiece vocabulary: it needs
  [CLS], [SEP], [MASK]), cut into chunks that fill the "inputs" length
  (`mlm.document_chunks`), laid out as `[CLS] chunk [SEP]` (`mlm.bert_inputs`)
  and masked (`mlm.mlm`). Features "inputs", "targets" (add_eos=False) and
  "token_type_ids"; give task_feature_lengths {"inputs": L, "targets": L}.

  Raises:
    ValueError: bad rates (`mlm.check_rates`), before anything is registered.
  """
  mlm.check_rates(noise_density, mask_rate, random_rate)
  masking = functools.partial(
    mlm.mlm, noise_density=noise_density, mask_rate=mask_rate, random_rate=random_rate, whole_word=whole_word
  )
  return _register(
    name,
    source=source,
    preprocessors=[
      functools.partial(seqio.preprocessors.rekey, key_map={"inputs": text_key}),
      functools.partial(seqio.preprocessors.tokenize, with_eos=False),
      mlm.document_chunks,
      mlm.bert_inputs,
      masking,
    ],
    output_features={k: seqio.Feature(vocabulary, add_eos=False) for k in ("inputs", "targets")},
    metric_fns=[],
  )


def register_classification_task(
  name: str,
  source: seqio.DataSource,
  vocabulary: seqio.Vocabulary,
  classes: Optional[Sequence[str]],
  *,
  text_key: str = "inputs",
  label_key: str = "label",
  second_key: Optional[str] = None,
  metric_fns: Optional[Sequence] = None,
) -> seqio.Task:
  """A sequence classification task over (text, label) examples (for the 'classification' converter).

  `classes` names the classes (labels are those names, or their indices); None
  makes a regression task (float labels, the 'regression' converter). Inputs
  are `[CLS] text [SEP]` (or a pair with `second_key`) in `vocabulary`;
  "targets" is [class index] (ClassLabelVocabulary) or [value] (float32).
  Metrics default to accuracy and macro F1 (classes) or Pearson and Spearman
  (regression). Give task_feature_lengths {"inputs": L, "targets": 1}. A label
  outside `classes` fails when the example is read, naming it and the classes.
  """
  if classes is None:
    targets = seqio.Feature(labels.ScalarVocabulary(), add_eos=False, dtype=tf.float32)
    default_metrics = [metrics.pearson, metrics.spearman]
  else:
    targets = seqio.Feature(labels.ClassLabelVocabulary(classes), add_eos=False)
    default_metrics = [metrics.accuracy, metrics.f1]
  return _register(
    name,
    source=source,
    preprocessors=[
      functools.partial(labels.classification, text_key=text_key, label_key=label_key, second_key=second_key)
    ],
    output_features={"inputs": seqio.Feature(vocabulary, add_eos=False), "targets": targets},
    metric_fns=list(default_metrics if metric_fns is None else metric_fns),
  )


def get_task_or_mixture(name: str):
  """The registered seqio task or mixture called `name`.

  Raises:
    ValueError: nothing of that name is registered. The message names close
      matches and every registered task and mixture, and says that a task
      exists once the module that registers it is imported (`import
      t5lite_tasks` for t5lite's own tasks).
  """
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  if name in known:
    return seqio.get_mixture_or_task(name)
  close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
  hint = f" Did you mean: {', '.join(close)}?" if close else ""
  registered = ", ".join(known) if known else "none"
  raise ValueError(
    f"Unknown task or mixture {name!r}.{hint} Registered tasks and mixtures: {registered}. "
    "A task exists once the module that registers it is imported: `import t5lite_tasks` registers t5lite's "
    "tasks (pydocs_*, c4_*, synthetic_reverse; `t5lite_tasks.text_files.register(...)` adds text_* over your "
    "files); import your own task module the same way (in a gin file: `import my_tasks`)."
  )

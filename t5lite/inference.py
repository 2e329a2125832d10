"""Decoding and scoring a trained model: the core of `t5lite infer`, `t5lite eval`
and the notebook API.

    import t5lite_tasks  # registers the run's task (or import your own task package)
    from t5lite import inference
    predictor = inference.load("runs/quickstart_finetune")      # run directory
    predictor.predict(["reverse: c a t"])                        # ['t a c']
    predictor.predict(["reverse: d o g"], method="beam", beam_size=4)
    predictor.score(["reverse: c a t"], ["t a c"])               # [log-likelihood]

`Predictor` holds a model, its parameters (sharded by a `Partitioner`; the
batch goes over the data axes) and jitted predict/score functions, one
compilation per decoding configuration. Token-level methods
(`predict_tokens`, `score_examples`) take numpy arrays and pad the last batch;
text-level methods use the task's vocabulary. `load()` rebuilds the model from
the run's config.gin (gin is imported there only); token-level use needs
neither gin, TensorFlow nor seqio.

Prompts are encoded as the training pipeline encodes its inputs
(t5lite.features' `encode_prompt`, `fit_to_length`): a leading UL2 mode token becomes its own
id followed by the ids of the text, and an over-long sequence is trimmed to
length - 1 before EOS is appended (seqio's `append_eos_after_trim`), so it
still ends with EOS.

Multi-process: every process calls each jitted step with its own rows
(`Partitioner.global_batch`) and gets its own rows back; the processes agree
on the number of batches first, so an uneven split cannot hang.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from t5lite import checkpointing, checks, features, partitioning, train_state
from t5lite.features import EOS_ID, encode_prompt, fit_to_length, mode_token_ids  # noqa: F401  (the API of text -> ids)
from t5lite.models import peft
from t5lite.models.model import BaseModel, DecodeOptions, EncoderDecoderModel

PyTree = Any
logger = logging.getLogger(__name__)
LONG_INPUT_POLICIES = ("truncate", "error")


# ----------------------------------------------------------------------------
# Decoding options given as keyword arguments or gin settings.
# ----------------------------------------------------------------------------
# DecodeOptions field -> its check (t5lite.checks: no bools, no floats for
# integers, no NaN or infinity). DecodeOptions checks the fields its method
# uses; an option the user sets explicitly is checked whatever the method.
_DECODE_CHECKS = {
  "max_decode_len": lambda n, v: checks.check_int(n, v, minimum=1),
  "beam_size": lambda n, v: checks.check_int(n, v, minimum=1),
  "alpha": lambda n, v: checks.check_float(n, v, minimum=0.0, hint=" (the GNMT length penalty; 0: none)"),
  "temperature": lambda n, v: checks.check_float(n, v, minimum=0.0, hint=" (0: greedy)"),
  "top_k": lambda n, v: checks.check_int(n, v, minimum=0, hint=" (0: no top-k filtering)"),
  "top_p": lambda n, v: checks.check_float(
    n, v, minimum=0.0, maximum=1.0, min_open=True, hint=" (1: no nucleus filtering)"
  ),
}


def check_decode_settings(settings: Mapping[str, Any], names: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
  """Checks DecodeOptions fields given as keyword arguments or gin settings.

  Args:
    settings: field name -> value (method, max_decode_len, beam_size, alpha,
      temperature, top_k, top_p, eos_id).
    names: field name -> the name to use in messages (the gin macro, such as
      'BEAM_SIZE'); the field name by default.

  Returns:
    The settings, numbers normalised (numpy ints -> int).

  Raises:
    ValueError: an unknown field; checks.SettingError (a ValueError) for a
      value of the wrong type or range (a bool, a float for an integer, NaN,
      infinity, beam_size 0, top_p 2, ...), naming the setting.
  """
  fields = [f.name for f in dataclasses.fields(DecodeOptions)]
  names = names or {}
  out = {}
  for key, value in settings.items():
    if key not in fields:
      raise ValueError(f"unknown decoding option {key!r}; valid options are {fields}")
    check = _DECODE_CHECKS.get(key)
    out[key] = check(names.get(key, key), value) if check else value
  return out


def agreed_count(n_local: int) -> int:
  """The largest of every process's count (each process must run as many steps)."""
  if jax.process_count() == 1:
    return n_local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return int(np.max(multihost_utils.process_allgather(np.asarray([n_local], np.int32))))


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  if jax.process_count() == 1:
    return np.asarray(x)
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # replicas over the model axis hold the same rows
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows, axis=0)


class Predictor:
  """Batched, jitted decoding and scoring of one model with fixed parameters."""

  def __init__(
    self,
    model: BaseModel,
    params: PyTree,
    *,
    batch_size: int = 8,
    partitioner: Optional[partitioning.Partitioner] = None,
    vocabulary: Any = None,
    task_feature_lengths: Optional[Mapping[str, int]] = None,
    options: DecodeOptions = DecodeOptions(),
    on_long_input: str = "truncate",
    add_eos_to_inputs: Optional[bool] = None,
    seed: int = 0,
    step: Optional[int] = None,
    labels: Any = None,
  ):
    batch_size = checks.check_int("batch_size", batch_size, minimum=1)
    seed = checks.check_int("seed", seed, minimum=0)
    if not isinstance(options, DecodeOptions):
      raise ValueError(f"options must be a DecodeOptions, got {type(options).__name__}")
    if task_feature_lengths:
      task_feature_lengths = checks.check_lengths("task_feature_lengths", task_feature_lengths)
    if on_long_input not in LONG_INPUT_POLICIES:
      raise ValueError(f"on_long_input={on_long_input!r}; valid values are {LONG_INPUT_POLICIES}")
    self.model = model
    self.params = params
    self.partitioner = partitioner or partitioning.Partitioner()
    self.local_batch_size = int(batch_size)
    self.global_batch_size = self.local_batch_size * jax.process_count()
    self.partitioner.check_batch_size(self.global_batch_size)
    self.vocabulary = vocabulary
    self.labels = labels  # a classifier's class names (ClassLabelVocabulary): predictions decode to them
    self.task_feature_lengths = dict(task_feature_lengths or {})
    self.options = options
    self.on_long_input = on_long_input
    self.add_eos_to_inputs = isinstance(model, EncoderDecoderModel) if add_eos_to_inputs is None else add_eos_to_inputs
    self.seed = seed
    self.step = step
    self.truncated = 0  # inputs/targets cut to the model's length so far
    self.base_checkpoint: Optional[dict] = None  # the base of an adapter checkpoint (`restore`, `use_adapters`)
    self.adapters_path: Optional[str] = None  # the step directory the adapters were read from
    self._param_shardings = jax.tree.map(lambda x: x.sharding, params)
    self._compiled: dict[Any, Any] = {}

  # ---- construction --------------------------------------------------------
  @staticmethod
  def shardings(
    model: BaseModel, partitioner: partitioning.Partitioner, lengths: Optional[Mapping[str, int]] = None
  ) -> tuple[PyTree, PyTree]:
    """(abstract params with shardings, param shardings) of `model` on the
    partitioner's mesh (`train_state.ParamLayout`, as training lays them out)."""
    lengths = lengths or model.example_lengths
    layout = train_state.ParamLayout.create(model, partitioner, model.input_shapes(1, lengths))
    return layout.abstract, layout.shardings

  @classmethod
  def restore(
    cls,
    model: BaseModel,
    checkpoint_path: str,
    *,
    step: Optional[int] = None,
    partitioner: Optional[partitioning.Partitioner] = None,
    **kwargs,
  ) -> "Predictor":
    """Loads the latest (or `step`'s) parameters under `checkpoint_path` (a run
    directory, its checkpoints/ directory or a step directory)."""
    partitioner = partitioner or partitioning.Partitioner()
    found_step, params_dir = checkpointing.resolve_checkpoint(checkpoint_path, step)
    abstract, _ = cls.shardings(model, partitioner)
    params = checkpointing.load_params(os.path.dirname(params_dir), abstract, what="CHECKPOINT_PATH")
    out = cls(model, params, partitioner=partitioner, step=found_step, **kwargs)
    out.base_checkpoint = checkpointing.read_checkpoint_meta(params_dir, step=found_step).get("base_checkpoint")
    out.adapters_path = os.path.dirname(params_dir) if out.base_checkpoint else None
    return out

  def use_adapters(self, checkpoint_path: str, *, step: Optional[int] = None) -> "Predictor":
    """Swaps in the LoRA / prompt-tuning adapters of another run on this predictor's base (returns self).

    Several adapters of one base (one per task, say) are served in turn
    without reading the base again or compiling again (the parameters are an
    argument of the jitted programs). `checkpoint_path`: an adapter run
    directory, its checkpoints/ or a step directory; its latest checkpoint or
    `step`'s. `step` and `adapters_path` (the step directory) follow the
    swap. Adapters trained at other TASK_FEATURE_LENGTHS (the checkpoint's
    data position records them) lend them (and their targets length as
    decode length, when this predictor decodes to its own, `load`'s
    default), with a warning; the vocabulary and class names stay this
    predictor's (one base, one vocabulary).

    Raises:
      FileNotFoundError: no checkpoint there (of `step`).
      ValueError: this predictor holds no adapter model; a bad `step`; the
        checkpoint holds a whole model, or other adapters (LoRA rank or alpha,
        prompt length, targets: each described), or adapters trained on
        another base checkpoint (both named). Nothing changes on a refusal.
    """
    if self.base_checkpoint is None:
      raise ValueError(
        "use_adapters: this predictor serves a model without adapters; inference.load a LoRA or prompt-tuning run "
        "to serve adapters (and swap others of the same base in with use_adapters)"
      )
    trained = peft.trainable(self.params)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), trained)
    adapters, meta, found, step_dir = checkpointing.load_adapters(
      checkpoint_path,
      abstract,
      step,
      base=self.base_checkpoint,
      adapters=peft.describe(self.model.config),
      what="use_adapters",
    )
    self.params = peft.combine(peft.frozen(self.params), adapters)
    self.step, self.adapters_path = found, step_dir
    self._adopt_lengths(meta.get("data") or {}, step_dir)
    return self

  def _adopt_lengths(self, data: Mapping[str, Any], step_dir: str) -> None:
    """Takes the TASK_FEATURE_LENGTHS (and decode length) that a checkpoint's data stream (`data`, its meta's) had."""
    lengths, old = data.get("task_feature_lengths"), self.task_feature_lengths
    if not lengths or lengths == old:
      return
    if "targets" in lengths and self.options.max_decode_len == old.get("targets"):
      self.options = dataclasses.replace(self.options, max_decode_len=lengths["targets"])
    logger.warning(
      "use_adapters: %s was trained on %s with lengths %s (this predictor had %s): prompts are now cut to those "
      "lengths, decoding goes to %d tokens; the vocabulary and class names are still this predictor's",
      step_dir,
      data.get("mixture_or_task_name"),
      lengths,
      old,
      self.options.max_decode_len,
    )
    self.task_feature_lengths = dict(lengths)

  # ---- jitted functions ----------------------------------------------------
  def jitted(self, kind: str, options: Optional[DecodeOptions] = None):
    """The jitted program for `kind` ('predict': (params, inputs [B, L] int32,
    rng) -> (tokens [B, max_decode_len] int32, scores [B] float32) under
    `options`; 'score': (params, features) -> [B] float32 log-likelihoods),
    sharded over this predictor's mesh, built once per (kind, options)."""
    key = (kind, options)
    if key not in self._compiled:
      part = self.partitioner
      batch = part.batch_sharding(1)  # rows over the batch axes, for features of any rank
      if kind == "predict":
        fn = functools.partial(self.model.predict_batch, options=options)

        def predict(params, inputs, rng):
          tokens, scores, _ = fn(params, inputs, rng=rng)
          return tokens, scores

        self._compiled[key] = jax.jit(
          predict,
          in_shardings=(self._param_shardings, batch, part.replicated),
          out_shardings=(batch, part.batch_sharding(1)),
        )
      else:
        self._compiled[key] = jax.jit(
          self.model.score_batch, in_shardings=(self._param_shardings, batch), out_shardings=part.batch_sharding(1)
        )
    return self._compiled[key]

  def _batches(self, n: int) -> int:
    return agreed_count(math.ceil(n / self.local_batch_size))

  def _pad_rows(self, x: np.ndarray, start: int) -> np.ndarray:
    rows = x[start : start + self.local_batch_size]
    if len(rows) < self.local_batch_size:
      pad = np.zeros((self.local_batch_size - len(rows),) + rows.shape[1:], rows.dtype)
      rows = np.concatenate([rows, pad], axis=0)
    return rows

  # ---- token level ---------------------------------------------------------
  def predict_tokens(
    self, inputs: np.ndarray, options: Optional[DecodeOptions] = None, seed: Optional[int] = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Decodes int32 inputs [n, length] (0-padded; this process's rows).

    Returns (tokens [n, max_decode_len], scores [n]). Sampling draws batch i
    with fold_in(key(seed), i), so a fixed seed gives the same outputs.
    """
    options = options or self.options
    seed = checks.check_int("seed", seed, minimum=0, allow_none=True)
    inputs = np.asarray(inputs, np.int32)
    if inputs.ndim != 2:
      raise ValueError(f"inputs must be a 2-D array [examples, length], got shape {inputs.shape}")
    fn = self.jitted("predict", options)
    base = jax.random.key(self.seed if seed is None else seed)
    tokens, scores = [], []
    with self.partitioner.context():
      for i in range(self._batches(len(inputs))):
        local = self._pad_rows(inputs, i * self.local_batch_size)
        batch = self.partitioner.global_batch({"x": local}, self.global_batch_size)["x"]
        t, s = fn(self.params, batch, jax.random.fold_in(base, i))
        tokens.append(_local_rows(t))
        scores.append(_local_rows(s))
    if not tokens:
      return np.zeros((0, options.max_decode_len), np.int32), np.zeros((0,), np.float32)
    return np.concatenate(tokens)[: len(inputs)], np.concatenate(scores)[: len(inputs)]

  def score_examples(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
    """Log-likelihood of the targets of model features (see `score_features`)."""
    n = len(next(iter(features.values())))
    fn = self.jitted("score")
    out = []
    with self.partitioner.context():
      for i in range(self._batches(n)):
        local = {k: self._pad_rows(np.asarray(v), i * self.local_batch_size) for k, v in features.items()}
        out.append(_local_rows(fn(self.params, self.partitioner.global_batch(local, self.global_batch_size))))
    return np.concatenate(out)[:n] if out else np.zeros((0,), np.float32)

  # ---- features ------------------------------------------------------------
  def fit_length(self, ids: Sequence[int], what: str, label: str, *, append_eos: bool) -> list[int]:
    """One token sequence (without EOS) as the training pipeline cuts it.

    `what` is the feature ('inputs' or 'targets', whose task length applies);
    with `append_eos` EOS is appended after trimming to length - 1 (see
    `fit_to_length`). A sequence longer than the length is cut with a warning
    (counted in `self.truncated`) or, with on_long_input='error', refused.

    Raises:
      ValueError: too long and on_long_input='error'; names `label`.
    """
    length = self.task_feature_lengths.get(what)
    out, cut = fit_to_length(ids, length, append_eos=append_eos)
    if not cut:
      return out
    n = len(ids) + int(append_eos)
    if self.on_long_input == "error":
      raise ValueError(
        f"{label} has {n} tokens{' (EOS included)' if append_eos else ''}, more than the model's {what} length "
        f"{length}; shorten it, raise TASK_FEATURE_LENGTHS['{what}'] or use on_long_input='truncate'."
      )
    logger.warning("%s has %d tokens; truncated to the model's %s length %d", label, n, what, length)
    self.truncated += 1
    return out

  def pad(self, seqs: Sequence[Sequence[int]], length: Optional[int] = None) -> np.ndarray:
    """int32 [len(seqs), length] of token id sequences padded with 0 (`features.pad`)."""
    return features.pad(seqs, length)

  def score_features(self, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """Model features that score `targets` given `inputs` (token ids), as the
    model's seqio feature converter makes them (t5lite.features): EncDec
    features padded to the task lengths; for a decoder-only model inputs +
    targets in one row padded to the lengths' sum, with
    `decoder_causal_attention` for a prefix LM. A length the task does not
    give is the longest sequence's.

    Raises:
      ValueError: different numbers of inputs and targets, or a sequence
        longer than its length.
    """
    lengths = self.task_feature_lengths
    if getattr(self.model, "head", None) is not None:
      raise ValueError("score() is for models that generate targets; an encoder-only model predicts (predict())")
    if isinstance(self.model, EncoderDecoderModel):
      return features.enc_dec_features(inputs, targets, lengths.get("inputs"), lengths.get("targets"))
    return features.prefix_lm_features(
      inputs, targets, sum(lengths.values()) or None, causal_attention=getattr(self.model, "prefix_lm", False)
    )

  # ---- text level ----------------------------------------------------------
  def _vocab(self):
    if self.vocabulary is None:
      raise ValueError("this Predictor has no vocabulary: pass vocabulary=... or use inference.load(run_dir)")
    return self.vocabulary

  def encode_inputs(self, texts: Sequence[str], labels: Optional[Sequence[str]] = None) -> list[list[int]]:
    """Model inputs of prompts, as training makes them: `encode_prompt` (UL2
    mode tokens), then EOS if the task adds it, trimmed to the inputs length
    with EOS kept last. `labels` name the prompts in errors ('input i' by
    default). Predict and score both encode through here.

    Raises:
      ValueError: a prompt that is not a string, empty, only a mode token, or
        too long with on_long_input='error'.
    """
    vocab = self._vocab()
    mode_ids = mode_token_ids(vocab)
    out = []
    for i, text in enumerate(texts):
      label = labels[i] if labels is not None else f"input {i}"
      ids = encode_prompt(vocab, text, label, mode_ids)
      if hasattr(vocab, "cls_id"):  # WordPiece (BERT): [CLS] text [SEP] cut to length with [SEP] last
        ids = self.fit_length([vocab.cls_id, *ids, vocab.sep_id], "inputs", label, append_eos=False)
        out.append(ids[:-1] + [vocab.sep_id])
        continue
      out.append(self.fit_length(ids, "inputs", label, append_eos=self.add_eos_to_inputs))
    return out

  def encode_targets(self, texts: Sequence[str], labels: Optional[Sequence[str]] = None) -> list[list[int]]:
    """Targets to score: ids + EOS, trimmed to the targets length with EOS kept last.

    Raises:
      ValueError: a target that is not a string, or too long with
        on_long_input='error'.
    """
    vocab = self._vocab()
    out = []
    for i, text in enumerate(texts):
      label = labels[i] if labels is not None else f"target {i}"
      if not isinstance(text, str):
        raise ValueError(f"{label} is {type(text).__name__}, not a string")
      out.append(self.fit_length(vocab.encode(text), "targets", label, append_eos=True))
    return out

  def decode_tokens(self, tokens: np.ndarray) -> list[str]:
    """Text of each row, up to (not including) the first EOS; a classifier's class names."""
    if self.labels is not None:
      return [self.labels.decode([int(row[0])]) for row in np.asarray(tokens)]
    vocab = self._vocab()
    out = []
    for row in np.asarray(tokens).tolist():
      if 1 in row:
        row = row[: row.index(1)]
      out.append(vocab.decode([t for t in row if t > 1]))
    return out

  def _options(self, overrides: Mapping[str, Any]) -> DecodeOptions:
    """self.options with keyword overrides, each checked (a ValueError names it)."""
    return dataclasses.replace(self.options, **check_decode_settings(overrides)) if overrides else self.options

  def predict_with_scores(self, texts: Sequence[str], **decode_options) -> tuple[list[str], list[float]]:
    if isinstance(texts, str):
      texts = [texts]
    options = self._options(decode_options)
    ids = self.encode_inputs(texts)
    tokens, scores = self.predict_tokens(self.pad(ids), options)
    return self.decode_tokens(tokens), [float(s) for s in scores]

  def predict(self, texts: Sequence[str], **decode_options) -> list[str]:
    """Decoded text for each input text. Keyword arguments override the
    DecodeOptions (method, max_decode_len, beam_size, alpha, temperature,
    top_k, top_p)."""
    return self.predict_with_scores(texts, **decode_options)[0]

  def score(self, inputs: Sequence[str], targets: Sequence[str]) -> list[float]:
    """Log-likelihood (natural log, summed over target tokens incl. EOS) of each target."""
    if isinstance(inputs, str):
      inputs, targets = [inputs], [targets]
    if len(inputs) != len(targets):
      raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets; give one target per input")
    feats = self.score_features(self.encode_inputs(inputs), self.encode_targets(targets))
    return [float(s) for s in self.score_examples(feats)]


# ----------------------------------------------------------------------------
# A run directory -> Predictor (gin at the edge).
# ----------------------------------------------------------------------------
def run_config(
  model: BaseModel,
  mixture_or_task_name: Optional[str] = None,
  task_feature_lengths: Optional[Mapping[str, int]] = None,
  vocabulary_model: Optional[str] = None,
) -> dict:
  """What `load` reads from a run's config.gin (bound to %MODEL etc. there)."""
  return {
    "model": model,
    "mixture_or_task_name": mixture_or_task_name,
    "task_feature_lengths": dict(task_feature_lengths or {}),
    "vocabulary_model": vocabulary_model,
  }


def read_run_config(run_dir: str) -> dict:
  """Model, task, lengths and VOCABULARY_MODEL (None where config.gin has none) of a run,
  from RUN_DIR/config.gin (clears gin's config)."""
  import gin  # pylint: disable=g-import-not-at-top

  path = os.path.join(run_dir, "config.gin")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir!r} has no config.gin: give a run directory written by t5lite train.")
  gin.clear_config()
  gin.parse_config_file(path)
  gin.parse_config(
    "from __gin__ import dynamic_registration\n"
    "from t5lite import inference\n"
    "inference.run_config.model = %MODEL\n"
    "inference.run_config.mixture_or_task_name = %MIXTURE_OR_TASK_NAME\n"
    "inference.run_config.task_feature_lengths = %TASK_FEATURE_LENGTHS\n"
  )
  try:
    gin.query_parameter("%VOCABULARY_MODEL")
  except ValueError:  # a config.gin written before VOCABULARY_MODEL existed
    pass
  else:
    gin.parse_config("inference.run_config.vocabulary_model = %VOCABULARY_MODEL")
  return gin.get_configurable(run_config)()


def task_vocabulary(mixture_or_task_name: str, labels: bool = False):
  """The text vocabulary of a registered task or mixture (imports seqio): its targets', or its
  inputs' when the targets are class labels; with `labels`, that label vocabulary (None for a
  text task). The task must be registered: the caller imports its task package (e.g.
  `t5lite_tasks`) first."""
  from t5lite.data import registration  # pylint: disable=g-import-not-at-top

  features = registration.get_task_or_mixture(mixture_or_task_name).output_features
  targets = features["targets"].vocabulary
  if hasattr(targets, "names"):  # a classification task (t5lite.data.labels.ClassLabelVocabulary)
    return targets if labels else features["inputs"].vocabulary
  return None if labels else targets


def task_adds_eos_to_inputs(mixture_or_task_name: str, model: BaseModel) -> bool:
  """Whether the task appends EOS to its inputs (so prompts should too); the
  task must be registered, as for `task_vocabulary`."""
  from t5lite.data import registration  # pylint: disable=g-import-not-at-top

  feature = registration.get_task_or_mixture(mixture_or_task_name).output_features.get("inputs")
  return bool(feature.add_eos) if feature is not None else isinstance(model, EncoderDecoderModel)


def load(
  run_dir: str,
  *,
  step: Optional[int] = None,
  batch_size: int = 8,
  partitioner: Optional[partitioning.Partitioner] = None,
  vocabulary: Any = None,
  **kwargs,
) -> Predictor:
  """A Predictor for a training run directory: its model (config.gin), its
  latest (or `step`'s) checkpoint and its task's vocabulary and lengths.

  A run trained with VOCABULARY_MODEL (in its config.gin) whose task uses
  the default vocabulary gets a vocabulary of that SentencePiece file, fixed
  to it (the process-wide `vocab.use_model_file` setting is left as it is);
  so does a run without a task whose config.gin sets VOCABULARY_MODEL (a
  `t5lite convert from-hf` directory with its spiece.model).

  Raises:
    FileNotFoundError: no config.gin or checkpoint in `run_dir`, the run's
      VOCABULARY_MODEL file is gone.
    ValueError: a bad `batch_size` or `step`, a checkpoint of another model
      shape, a VOCABULARY_MODEL that is not a T5 SentencePiece model."""
  batch_size = checks.check_int("batch_size", batch_size, minimum=1)
  step = checks.check_int("step", step, minimum=0, allow_none=True, hint=" (None: the latest checkpoint)")
  cfg = read_run_config(run_dir)
  if vocabulary is None and not cfg["mixture_or_task_name"] and cfg["vocabulary_model"] is not None:
    from t5lite.data import vocab  # pylint: disable=g-import-not-at-top

    model_file = os.path.abspath(os.path.expanduser(str(cfg["vocabulary_model"])))
    vocab.check_model_file(model_file, what="VOCABULARY_MODEL")
    vocabulary = vocab.sentencepiece_vocabulary(model_file)  # a converted checkpoint: its own spiece.model
  if vocabulary is None and cfg["mixture_or_task_name"]:
    vocabulary = task_vocabulary(cfg["mixture_or_task_name"])
    from t5lite.data import vocab  # pylint: disable=g-import-not-at-top

    if cfg["vocabulary_model"] is not None and vocab.is_default_vocabulary(vocabulary):
      model_file = os.path.abspath(os.path.expanduser(str(cfg["vocabulary_model"])))
      vocab.check_model_file(model_file, what="VOCABULARY_MODEL")
      vocabulary = vocab.sentencepiece_vocabulary(model_file, extra_ids=vocabulary.extra_ids)
  lengths = cfg["task_feature_lengths"]
  kwargs.setdefault("options", DecodeOptions(max_decode_len=lengths.get("targets", 64)))
  if cfg["mixture_or_task_name"]:
    kwargs.setdefault("labels", task_vocabulary(cfg["mixture_or_task_name"], labels=True))
  if cfg["mixture_or_task_name"] and "add_eos_to_inputs" not in kwargs:
    kwargs["add_eos_to_inputs"] = task_adds_eos_to_inputs(cfg["mixture_or_task_name"], cfg["model"])
  return Predictor.restore(
    cfg["model"],
    run_dir,
    step=step,
    batch_size=batch_size,
    partitioner=partitioner,
    vocabulary=vocabulary,
    task_feature_lengths=lengths,
    **kwargs,
  )

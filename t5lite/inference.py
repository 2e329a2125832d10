"""Decoding and scoring a trained model: the core of `t5lite infer`, `t5lite eval`
and the notebook API.

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

import flax
import jax
import jax.numpy as jnp
import numpy as np

from t5lite import checkpointing, partitioning, trainer
from t5lite.models.model import BaseModel, DecodeOptions, DecoderOnlyModel, EncoderDecoderModel

PyTree = Any
logger = logging.getLogger(__name__)
LONG_INPUT_POLICIES = ("truncate", "error")


def _agreed_count(n_local: int) -> int:
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
  ):
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
      raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if on_long_input not in LONG_INPUT_POLICIES:
      raise ValueError(f"on_long_input={on_long_input!r}; valid values are {LONG_INPUT_POLICIES}")
    self.model = model
    self.params = params
    self.partitioner = partitioner or partitioning.Partitioner()
    self.local_batch_size = int(batch_size)
    self.global_batch_size = self.local_batch_size * jax.process_count()
    self.partitioner.check_batch_size(self.global_batch_size)
    self.vocabulary = vocabulary
    self.task_feature_lengths = dict(task_feature_lengths or {})
    self.options = options
    self.on_long_input = on_long_input
    self.add_eos_to_inputs = isinstance(model, EncoderDecoderModel) if add_eos_to_inputs is None \
        else add_eos_to_inputs
    self.seed = seed
    self.step = step
    self.truncated = 0  # inputs/targets cut to the model's length so far
    self._param_shardings = jax.tree.map(lambda x: x.sharding, params)
    self._compiled: dict[Any, Any] = {}

  # ---- construction --------------------------------------------------------
  @staticmethod
  def shardings(model: BaseModel, partitioner: partitioning.Partitioner,
                lengths: Optional[Mapping[str, int]] = None) -> tuple[PyTree, PyTree]:
    """(abstract params with shardings, param shardings) of `model` on the partitioner's mesh."""
    lengths = lengths or ({"inputs": 8, "targets": 8} if isinstance(model, EncoderDecoderModel) else
                          ({"inputs": 8, "targets": 8} if getattr(model, "prefix_lm", False) else {"targets": 8}))
    shapes = model.input_shapes(1, lengths)
    axes = model.param_logical_axes(shapes)
    unboxed = flax.core.meta.unbox(model.abstract_params(shapes))
    partitioner.fit_to(unboxed, axes)
    param_shardings = partitioner.shardings_for(axes)
    return trainer._with_shardings(unboxed, param_shardings), param_shardings  # pylint: disable=protected-access

  @classmethod
  def restore(cls, model: BaseModel, checkpoint_path: str, *, step: Optional[int] = None,
              partitioner: Optional[partitioning.Partitioner] = None, **kwargs) -> "Predictor":
    """Loads the latest (or `step`'s) parameters under `checkpoint_path` (a run
    directory, its checkpoints/ directory or a step directory)."""
    partitioner = partitioner or partitioning.Partitioner()
    found_step, params_dir = checkpointing.resolve_checkpoint(checkpoint_path, step)
    abstract, _ = cls.shardings(model, partitioner)
    params = checkpointing.load_params(os.path.dirname(params_dir), abstract, what="CHECKPOINT_PATH")
    return cls(model, params, partitioner=partitioner, step=found_step, **kwargs)

  # ---- jitted functions ----------------------------------------------------
  def _jitted(self, kind: str, options: Optional[DecodeOptions] = None):
    key = (kind, options)
    if key not in self._compiled:
      part = self.partitioner
      batch = part.batch_sharding()
      if kind == "predict":
        fn = functools.partial(self.model.predict_batch, options=options)

        def predict(params, inputs, rng):
          tokens, scores, _ = fn(params, inputs, rng=rng)
          return tokens, scores

        self._compiled[key] = jax.jit(
            predict, in_shardings=(self._param_shardings, batch, part.replicated),
            out_shardings=(batch, part.batch_sharding(1)))
      else:
        self._compiled[key] = jax.jit(
            self.model.score_batch, in_shardings=(self._param_shardings, batch),
            out_shardings=part.batch_sharding(1))
    return self._compiled[key]

  def _batches(self, n: int) -> int:
    return _agreed_count(math.ceil(n / self.local_batch_size))

  def _pad_rows(self, x: np.ndarray, start: int) -> np.ndarray:
    rows = x[start:start + self.local_batch_size]
    if len(rows) < self.local_batch_size:
      pad = np.zeros((self.local_batch_size - len(rows),) + rows.shape[1:], rows.dtype)
      rows = np.concatenate([rows, pad], axis=0)
    return rows

  # ---- token level ---------------------------------------------------------
  def predict_tokens(self, inputs: np.ndarray, options: Optional[DecodeOptions] = None,
                     seed: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Decodes int32 inputs [n, length] (0-padded; this process's rows).

    Returns (tokens [n, max_decode_len], scores [n]). Sampling draws batch i
    with fold_in(key(seed), i), so a fixed seed gives the same outputs.
    """
    options = options or self.options
    inputs = np.asarray(inputs, np.int32)
    if inputs.ndim != 2:
      raise ValueError(f"inputs must be a 2-D array [examples, length], got shape {inputs.shape}")
    fn = self._jitted("predict", options)
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
    fn = self._jitted("score")
    out = []
    with self.partitioner.context():
      for i in range(self._batches(n)):
        local = {k: self._pad_rows(np.asarray(v), i * self.local_batch_size) for k, v in features.items()}
        out.append(_local_rows(fn(self.params, self.partitioner.global_batch(local, self.global_batch_size))))
    return np.concatenate(out)[:n] if out else np.zeros((0,), np.float32)

  # ---- features ------------------------------------------------------------
  def fit_length(self, ids: Sequence[int], length: Optional[int], what: str, index: int) -> list[int]:
    """Applies the long-input policy to one token sequence."""
    ids = list(ids)
    if length is None or len(ids) <= length:
      return ids
    if self.on_long_input == "error":
      raise ValueError(
          f"{what} {index} has {len(ids)} tokens, more than the model's {what} length {length}; shorten it, "
          f"raise TASK_FEATURE_LENGTHS['{what}'] or use on_long_input='truncate'."
      )
    logger.warning("%s %d has %d tokens; truncated to the model's length %d", what, index, len(ids), length)
    self.truncated += 1
    return ids[:length]

  def pad(self, seqs: Sequence[Sequence[int]], length: Optional[int] = None) -> np.ndarray:
    length = length or max([len(s) for s in seqs] + [1])
    out = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
      out[i, : len(s)] = s
    return out

  def score_features(self, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """Model features that score `targets` given `inputs` (token ids)."""
    if len(inputs) != len(targets):
      raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    lt = self.task_feature_lengths.get("targets")
    if isinstance(self.model, EncoderDecoderModel):
      enc = self.pad(inputs, self.task_feature_lengths.get("inputs"))
      tgt = self.pad(targets, lt)
      dec_in = np.concatenate([np.zeros((len(tgt), 1), np.int32), tgt[:, :-1]], axis=1)
      return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
              "decoder_loss_weights": (tgt > 0).astype(np.int32)}
    seqs = [list(i) + list(t) for i, t in zip(inputs, targets)]
    total = sum(self.task_feature_lengths.values()) or None
    full = self.pad(seqs, total)
    weights = np.zeros_like(full)
    causal = np.zeros_like(full)
    for r, (i, t) in enumerate(zip(inputs, targets)):
      weights[r, len(i): len(i) + len(t)] = 1
      causal[r, : len(i) + 1] = 1
    feats = {"decoder_input_tokens": np.concatenate([np.zeros((len(full), 1), np.int32), full[:, :-1]], axis=1),
             "decoder_target_tokens": full, "decoder_loss_weights": weights}
    if getattr(self.model, "prefix_lm", False):
      feats["decoder_causal_attention"] = causal
    return feats

  # ---- text level ----------------------------------------------------------
  def _vocab(self):
    if self.vocabulary is None:
      raise ValueError("this Predictor has no vocabulary: pass vocabulary=... or use inference.load(run_dir)")
    return self.vocabulary

  def encode_inputs(self, texts: Sequence[str]) -> list[list[int]]:
    vocab = self._vocab()
    out = []
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise ValueError(f"input {i} is {type(text).__name__}, not a string")
      if not text.strip():
        raise ValueError(f"input {i} is empty; give at least one non-space character")
      ids = list(vocab.encode(text)) + ([1] if self.add_eos_to_inputs else [])
      out.append(self.fit_length(ids, self.task_feature_lengths.get("inputs"), "inputs", i))
    return out

  def encode_targets(self, texts: Sequence[str]) -> list[list[int]]:
    vocab = self._vocab()
    return [self.fit_length(list(vocab.encode(t)) + [1], self.task_feature_lengths.get("targets"), "targets", i)
            for i, t in enumerate(texts)]

  def decode_tokens(self, tokens: np.ndarray) -> list[str]:
    """Text of each row, up to (not including) the first EOS."""
    vocab = self._vocab()
    out = []
    for row in np.asarray(tokens).tolist():
      if 1 in row:
        row = row[: row.index(1)]
      out.append(vocab.decode([t for t in row if t > 1]))
    return out

  def _options(self, overrides: Mapping[str, Any]) -> DecodeOptions:
    return dataclasses.replace(self.options, **overrides) if overrides else self.options

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
    feats = self.score_features(self.encode_inputs(inputs), self.encode_targets(targets))
    return [float(s) for s in self.score_examples(feats)]


# ----------------------------------------------------------------------------
# A run directory -> Predictor (gin at the edge).
# ----------------------------------------------------------------------------
def run_config(model: BaseModel, mixture_or_task_name: Optional[str] = None,
               task_feature_lengths: Optional[Mapping[str, int]] = None) -> dict:
  """What `load` reads from a run's config.gin (bound to %MODEL etc. there)."""
  return {"model": model, "mixture_or_task_name": mixture_or_task_name,
          "task_feature_lengths": dict(task_feature_lengths or {})}


def read_run_config(run_dir: str) -> dict:
  """Model, task and lengths of a run, from RUN_DIR/config.gin (clears gin's config)."""
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
  return gin.get_configurable(run_config)()


def task_vocabulary(mixture_or_task_name: str):
  """The targets vocabulary of a registered task or mixture (imports seqio)."""
  import t5lite_tasks  # pylint: disable=g-import-not-at-top,unused-import
  from t5lite.data import registration  # pylint: disable=g-import-not-at-top

  task = registration.get_task_or_mixture(mixture_or_task_name)
  return task.output_features["targets"].vocabulary


def task_adds_eos_to_inputs(mixture_or_task_name: str, model: BaseModel) -> bool:
  """Whether the task appends EOS to its inputs (so prompts should too)."""
  import t5lite_tasks  # pylint: disable=g-import-not-at-top,unused-import
  from t5lite.data import registration  # pylint: disable=g-import-not-at-top

  feature = registration.get_task_or_mixture(mixture_or_task_name).output_features.get("inputs")
  return bool(feature.add_eos) if feature is not None else isinstance(model, EncoderDecoderModel)


def load(run_dir: str, *, step: Optional[int] = None, batch_size: int = 8,
         partitioner: Optional[partitioning.Partitioner] = None, vocabulary: Any = None,
         **kwargs) -> Predictor:
  """A Predictor for a training run directory: its model (config.gin), its
  latest (or `step`'s) checkpoint and its task's vocabulary and lengths."""
  cfg = read_run_config(run_dir)
  if vocabulary is None and cfg["mixture_or_task_name"]:
    vocabulary = task_vocabulary(cfg["mixture_or_task_name"])
  lengths = cfg["task_feature_lengths"]
  kwargs.setdefault("options", DecodeOptions(max_decode_len=lengths.get("targets", 64)))
  if cfg["mixture_or_task_name"] and "add_eos_to_inputs" not in kwargs:
    kwargs["add_eos_to_inputs"] = task_adds_eos_to_inputs(cfg["mixture_or_task_name"], cfg["model"])
  return Predictor.restore(
      cfg["model"], run_dir, step=step, batch_size=batch_size, partitioner=partitioner, vocabulary=vocabulary,
      task_feature_lengths=lengths, **kwargs)

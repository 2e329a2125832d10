"""The encoder-only model wrapper: BERT's module plus its losses, batches, predictions and FLOPs.

Like the wrappers of t5lite.models.model (which it extends), a thin object outside
jit that hands pure functions to the trainer. Its batches are the encoder-only
model features of t5lite.data.encoder_features: masked-language-model batches
(`encoder_target_tokens` and `encoder_loss_weights` per token) for the 'mlm' head,
one label per row (`classifier_labels`, `classifier_weights`) for the
'classification' and 'regression' heads.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from t5lite import checks, losses
from t5lite.models import encoder_only
from t5lite.models.model import BaseModel, Batch, PyTree, _matmul_params

Array = jax.Array


@dataclasses.dataclass
class EncoderOnlyModel(BaseModel):
  """BERT-style encoder with an MLM, classification or regression head.

  head: 'mlm' (pretraining: cross entropy on the selected tokens, with z-loss),
    'classification' (cross entropy over `num_classes` per example) or
    'regression' (squared error of one output per example; `accuracy` is then 0).
  num_classes: classes of a classification head, >= 2.
  The loss terms are summed per target token ('mlm') or per example, and normalised
  by `loss_normalizing_factor` like the other families' (NUM_REAL_TARGET_TOKENS:
  selected tokens, or real examples).
  """

  config: encoder_only.EncoderOnlyConfig = dataclasses.field(default_factory=encoder_only.EncoderOnlyConfig)
  head: str = "mlm"
  num_classes: int = 2

  def __post_init__(self):
    """Raises ValueError for an unknown head or num_classes < 2 (as the other families' checks)."""
    super().__post_init__()
    if self.head not in encoder_only.HEADS:
      raise checks.SettingError(f"EncoderOnlyModel.head={self.head!r} is not one of {encoder_only.HEADS}")
    self.num_classes = checks.check_int("EncoderOnlyModel.num_classes", self.num_classes, minimum=2)
    self.module = encoder_only.EncoderOnlyTransformer(self.config, self.head, self.num_classes)

  @property
  def feature_converter_cls(self) -> type:
    from t5lite.data import encoder_features  # pylint: disable=g-import-not-at-top  (models import without seqio)

    if self.head == "mlm":
      return encoder_features.MlmFeatureConverter
    if self.head == "regression":
      return encoder_features.RegressionFeatureConverter
    return encoder_features.ClassificationFeatureConverter

  @property
  def head_names(self) -> tuple[str, ...]:
    """Top-level parameter names of every encoder-only head (this model's and the others'): fine-tuning
    from a checkpoint of another head keeps the rest, leaves the checkpoint's head out and creates this
    model's fresh (checkpointing.load_params)."""
    return tuple(sorted({n for names in encoder_only.HEAD_PARAMS.values() for n in names}))

  @property
  def example_lengths(self) -> dict[str, int]:
    return {"inputs": 8}

  def input_shapes(self, batch_size, lengths):
    if "inputs" not in lengths:
      raise ValueError(
        f"An encoder-only model needs TASK_FEATURE_LENGTHS with 'inputs' (e.g. {{'inputs': 128, 'targets': 128}} "
        f"for MLM, {{'inputs': 128, 'targets': 1}} for classification); got {dict(lengths)}."
      )
    length = lengths["inputs"]
    if length > self.config.max_position_embeddings:
      raise ValueError(
        f"TASK_FEATURE_LENGTHS['inputs']={length} is longer than the learned position table "
        f"(max_position_embeddings={self.config.max_position_embeddings}); use at most "
        f"{self.config.max_position_embeddings} or a larger table"
      )
    return {"encoder_input_tokens": (batch_size, length), "encoder_token_type_ids": (batch_size, length)}

  def tokens_per_step(self, batch_size, lengths):
    return batch_size * lengths["inputs"]

  def _module_inputs(self, batch):
    return {
      "encoder_input_tokens": batch["encoder_input_tokens"],
      "encoder_token_type_ids": batch.get("encoder_token_type_ids"),
      "encoder_segment_ids": batch.get("encoder_segment_ids"),
      "encoder_positions": batch.get("encoder_positions"),
    }

  # ---- loss ----------------------------------------------------------------
  def loss_weights(self, batch: Batch) -> Array:
    if self.head == "mlm":
      return batch["encoder_loss_weights"]
    return batch["classifier_weights"]

  def loss_scale(self, batch: Batch) -> tuple[Array, Array]:
    segments = batch.get("encoder_segment_ids") if self.head == "mlm" else None
    return losses.loss_scale_and_denominator(self.loss_weights(batch), self.loss_normalizing_factor, segments)

  def loss_fn(self, params, batch, dropout_rng, scale, aux_scale=None):
    """(summed loss weighted by `scale`, summed metrics {loss_sum, z_loss_sum, correct, target_tokens}).

    'mlm': cross entropy (with label smoothing and z-loss) of `encoder_target_tokens`
    at the positions `scale` weights; 'classification': of `classifier_labels`;
    'regression': squared error (pred - label)^2, no z-loss, correct = 0.
    """
    del aux_scale  # no auxiliary losses
    logits = self.logits(params, batch, dropout_rng)
    weights = self.loss_weights(batch).astype(jnp.float32)
    if self.head == "regression":
      labels = batch["classifier_labels"].astype(jnp.float32)
      loss = jnp.sum(jnp.square(logits - labels) * scale)
      zero = jnp.zeros((), jnp.float32)
      return loss, {"loss_sum": loss, "z_loss_sum": zero, "correct": zero, "target_tokens": jnp.sum(weights)}
    targets = batch["encoder_target_tokens"] if self.head == "mlm" else batch["classifier_labels"].astype(jnp.int32)
    loss, z_loss, _ = losses.compute_weighted_cross_entropy(
      logits, targets, scale, label_smoothing=self.label_smoothing, z_loss=self.z_loss, loss_normalizing_factor=None
    )
    correct, weight_sum = losses.token_accuracy(logits, targets, weights)
    return loss, {"loss_sum": loss, "z_loss_sum": z_loss, "correct": correct, "target_tokens": weight_sum}

  def score_batch(self, params: PyTree, batch: Batch) -> Array:
    """Per row, float32 [batch]: the log-likelihood of the selected tokens' targets ('mlm'), of the
    label ('classification'), or minus the squared error ('regression'), times the weights."""
    logits = self.logits(params, batch).astype(jnp.float32)
    weights = self.loss_weights(batch).astype(jnp.float32)
    if self.head == "regression":
      return -jnp.square(logits - batch["classifier_labels"].astype(jnp.float32)) * weights
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    targets = batch["encoder_target_tokens"] if self.head == "mlm" else batch["classifier_labels"]
    lp = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), -1)[..., 0] * weights
    return jnp.sum(lp, axis=-1) if self.head == "mlm" else lp

  # ---- prediction ------------------------------------------------------------
  def predict_batch(self, params, inputs, options, rng=None):
    """Predictions for int32 inputs [b, L] (0 = padding; token types from the first [SEP]).

    'classification': (int32 class ids [b, 1], their log-probabilities [b], {'logits': [b, K]});
    'regression': (float32 values [b, 1], zeros [b], {}); 'mlm' (fill in the blanks): each
    non-padding position's most likely token, int32 [b, L] (0 on padding), and the summed
    log-probabilities of those tokens [b]. `options` and `rng` are unused (no decoding loop).
    """
    del options, rng
    inputs = inputs.astype(jnp.int32)
    logits = self.module.apply({"params": params}, inputs)
    if self.head == "regression":
      return logits[:, None], jnp.zeros(logits.shape[:1], jnp.float32), {}
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    best = losses.argmax(log_probs).astype(jnp.int32)
    score = jnp.take_along_axis(log_probs, best[..., None], -1)[..., 0]
    if self.head == "classification":
      return best[:, None], score, {"logits": logits}
    real = inputs > 0
    return jnp.where(real, best, 0), jnp.sum(jnp.where(real, score, 0.0), axis=-1), {}

  # ---- FLOPs ---------------------------------------------------------------
  def flops_per_step(self, batch_size: int, lengths: Mapping[str, int]) -> float:
    """3x forward: 2 * matmul parameters per token (the tied MLM projection counted: it is a
    matmul) plus 4 * L^2 * heads * d_kv per layer. The classifier head is counted per token
    too (an overestimate of d_model^2 per token, negligible)."""
    cfg = self.config
    length = lengths["inputs"]
    counts = _matmul_params(self.abstract_params(self.input_shapes(1, {"inputs": 8})), exclude=_FLOPS_EXCLUDE)
    matmul = sum(counts.values())
    if self.head == "mlm":
      matmul += cfg.vocab_size * cfg.d_model  # the tied output projection
    attn = 4 * cfg.num_heads * cfg.d_kv * cfg.num_layers * length * length
    return float(3 * (2 * matmul * length + attn) * batch_size)


# Lookups and biases are no matmuls; the MLM head's output bias is a bias.
_FLOPS_EXCLUDE = ("token_embedder", "position_embedder", "token_type_embedder", "bias")

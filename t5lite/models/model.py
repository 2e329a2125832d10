"""Model wrappers: a Flax module plus its loss, its feature converter and its FLOPs.

Thin objects outside jit (as T5X's `models.py`): they hold configuration and
hand pure functions to the trainer. `loss_fn` is the one function the train
step differentiates; it returns summed (not normalized) loss terms so that
gradient accumulation can normalize over the whole batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

import flax.linen as nn
from flax.core import meta
import jax
import jax.numpy as jnp

from t5lite import losses
from t5lite.models import decoder_only, layers, t5

Array = jax.Array
Batch = Mapping[str, Array]
PyTree = Any


@dataclasses.dataclass
class BaseModel:
  """Shared machinery; subclasses define the module call and the FLOP count."""

  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: Union[None, float, str] = "NUM_REAL_TARGET_TOKENS"

  FEATURE_CONVERTER = "enc_dec"
  module: nn.Module = dataclasses.field(init=False)

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1).")
    if self.z_loss < 0:
      raise ValueError(f"z_loss={self.z_loss} must be >= 0.")
    losses._as_normalizer(self.loss_normalizing_factor)  # pylint: disable=protected-access  # validates

  # ---- parameters ----------------------------------------------------------
  def input_shapes(self, batch_size: int, lengths: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    raise NotImplementedError  # defined by each subclass

  def _init_boxed(self, rng: Array, shapes: Mapping[str, tuple[int, ...]]) -> PyTree:
    # Parameter shapes do not depend on the batch: initialise with one row.
    batch = {k: jnp.ones((1,) + tuple(v[1:]), jnp.int32) for k, v in shapes.items()}
    return self.module.init({"params": rng, "dropout": rng}, **self._module_inputs(batch))["params"]

  def abstract_params(self, shapes: Mapping[str, tuple[int, ...]]) -> PyTree:
    """Boxed (logically annotated) ShapeDtypeStructs of the parameters."""
    return jax.eval_shape(lambda rng: self._init_boxed(rng, shapes), jax.random.key(0))

  def param_logical_axes(self, shapes: Mapping[str, tuple[int, ...]]) -> PyTree:
    return layers.logical_axes_tree(self.abstract_params(shapes))

  def init_params(self, rng: Array, shapes: Mapping[str, tuple[int, ...]]) -> PyTree:
    """Unboxed float32 parameters (call under jit with out_shardings to shard)."""
    return meta.unbox(self._init_boxed(rng, shapes))

  # ---- loss ----------------------------------------------------------------
  def _module_inputs(self, batch: Batch) -> dict[str, Array]:
    raise NotImplementedError  # defined by each subclass

  def logits(self, params: PyTree, batch: Batch, dropout_rng: Optional[Array] = None) -> Array:
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {"params": params}, **self._module_inputs(batch), enable_dropout=dropout_rng is not None, rngs=rngs
    )

  def loss_scale(self, batch: Batch) -> tuple[Array, Array]:
    """Per-token loss scale and normalizing denominator for a (whole) batch."""
    return losses.loss_scale_and_denominator(
        batch["decoder_loss_weights"], self.loss_normalizing_factor, batch.get("decoder_segment_ids")
    )

  def loss_fn(self, params: PyTree, batch: Batch, dropout_rng: Optional[Array], scale: Array):
    """Summed loss (with z-loss) weighted by `scale`, and summed metrics."""
    logits = self.logits(params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    loss, z_loss, _ = losses.compute_weighted_cross_entropy(
        logits, targets, scale, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
        loss_normalizing_factor=None,
    )
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    correct, weight_sum = losses.token_accuracy(logits, targets, weights)
    metrics = {
        "loss_sum": loss,
        "z_loss_sum": z_loss,
        "correct": correct,
        "target_tokens": weight_sum,
    }
    return loss, metrics

  # ---- FLOPs ---------------------------------------------------------------
  def flops_per_step(self, batch_size: int, lengths: Mapping[str, int]) -> float:
    raise NotImplementedError  # defined by each subclass

  def tokens_per_step(self, batch_size: int, lengths: Mapping[str, int]) -> int:
    return batch_size * sum(lengths.values())


def _matmul_params(abstract: PyTree, exclude: tuple[str, ...] = ("token_embedder", "relpos")) -> dict[str, int]:
  """Parameter counts per top-level stack, leaving out lookups (no matmul)."""
  counts: dict[str, int] = {}
  flat = jax.tree_util.tree_flatten_with_path(meta.unbox(abstract))[0]
  for path, leaf in flat:
    keys = [getattr(k, "key", str(k)) for k in path]
    if any(e in k for k in keys for e in exclude):
      continue
    if leaf.ndim < 2:
      continue  # norms
    top = keys[0]
    counts[top] = counts.get(top, 0) + int(leaf.size)
  return counts


@dataclasses.dataclass
class EncoderDecoderModel(BaseModel):
  """T5 v1.1 encoder-decoder trained on EncDec feature-converted batches."""

  config: t5.T5Config = dataclasses.field(default_factory=t5.T5Config)
  FEATURE_CONVERTER = "enc_dec"

  def __post_init__(self):
    super().__post_init__()
    self.module = t5.T5Transformer(self.config)

  def input_shapes(self, batch_size, lengths):
    self._check_lengths(lengths)
    return {
        "encoder_input_tokens": (batch_size, lengths["inputs"]),
        "decoder_input_tokens": (batch_size, lengths["targets"]),
    }

  @staticmethod
  def _check_lengths(lengths):
    missing = {"inputs", "targets"} - set(lengths)
    if missing:
      raise ValueError(
          f"An encoder-decoder model needs TASK_FEATURE_LENGTHS with 'inputs' and 'targets'; "
          f"got {dict(lengths)}."
      )

  def _module_inputs(self, batch):
    return {
        "encoder_input_tokens": batch["encoder_input_tokens"],
        "decoder_input_tokens": batch["decoder_input_tokens"],
        "encoder_segment_ids": batch.get("encoder_segment_ids"),
        "decoder_segment_ids": batch.get("decoder_segment_ids"),
        "encoder_positions": batch.get("encoder_positions"),
        "decoder_positions": batch.get("decoder_positions"),
    }

  def flops_per_step(self, batch_size, lengths):
    """Training FLOPs of one step: 3x the forward pass (forward + backward).

    Forward FLOPs = 2 * (matmul parameters touched per token) per token, plus
    attention scores and mixing: 4 * q_len * k_len * heads * d_kv per layer and
    sequence (self-attention in each stack, cross-attention in the decoder).
    Embedding lookups and norms are not counted.
    """
    cfg = self.config
    counts = _matmul_params(self.abstract_params(self.input_shapes(1, {"inputs": 8, "targets": 8})))
    enc_p = counts.get("encoder", 0)
    dec_p = sum(v for k, v in counts.items() if k != "encoder")
    li, lt = lengths["inputs"], lengths["targets"]
    hd = cfg.num_heads * cfg.d_kv
    attn = 4 * hd * (cfg.num_encoder_layers * li * li + cfg.num_decoder_layers * (lt * lt + lt * li))
    forward = 2 * (enc_p * li + dec_p * lt) + attn
    return float(3 * forward * batch_size)


@dataclasses.dataclass
class DecoderOnlyModel(BaseModel):
  """Decoder-only LM trained on LM (causal) or PrefixLM feature-converted batches."""

  config: decoder_only.DecoderOnlyConfig = dataclasses.field(default_factory=decoder_only.DecoderOnlyConfig)
  prefix_lm: bool = False
  FEATURE_CONVERTER = "lm"

  def __post_init__(self):
    super().__post_init__()
    self.module = decoder_only.DecoderOnlyTransformer(self.config)
    self.FEATURE_CONVERTER = "prefix_lm" if self.prefix_lm else "lm"

  def total_length(self, lengths: Mapping[str, int]) -> int:
    if self.prefix_lm:
      if "inputs" not in lengths or "targets" not in lengths:
        raise ValueError(f"A prefix-LM model needs 'inputs' and 'targets' lengths; got {dict(lengths)}.")
      return lengths["inputs"] + lengths["targets"]
    if set(lengths) != {"targets"}:
      raise ValueError(
          f"A causal decoder-only model needs TASK_FEATURE_LENGTHS={{'targets': N}} (a task such as "
          f"pydocs_lm); got {dict(lengths)}. Set prefix_lm=True for tasks with inputs."
      )
    return lengths["targets"]

  def input_shapes(self, batch_size, lengths):
    return {"decoder_input_tokens": (batch_size, self.total_length(lengths))}

  def _module_inputs(self, batch):
    return {
        "decoder_input_tokens": batch["decoder_input_tokens"],
        "decoder_segment_ids": batch.get("decoder_segment_ids"),
        "decoder_positions": batch.get("decoder_positions"),
        "decoder_causal_attention": batch.get("decoder_causal_attention"),
    }

  def tokens_per_step(self, batch_size, lengths):
    return batch_size * self.total_length(lengths)

  def flops_per_step(self, batch_size, lengths):
    """3x forward: 2 * matmul params per token plus 4 * L^2 * heads * d_kv per layer."""
    cfg = self.config
    length = self.total_length(lengths)
    shapes = {"decoder_input_tokens": (1, 8)}
    params = sum(_matmul_params(self.abstract_params(shapes)).values())
    attn = 4 * cfg.num_heads * cfg.d_kv * cfg.num_layers * length * length
    return float(3 * (2 * params * length + attn) * batch_size)

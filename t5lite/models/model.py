"""Model wrappers: a Flax module plus its loss, its feature converter and its FLOPs.

Thin objects outside jit (as T5X's `models.py`): they hold configuration and
hand pure functions to the trainer. `loss_fn` is the one function the train
step differentiates; it returns summed (not normalized) loss terms so that
gradient accumulation can normalize over the whole batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Union

import flax
import flax.linen as nn
from flax.core import meta
import jax
import jax.numpy as jnp

from t5lite import checks, decoding, features, losses
from t5lite.models import decoder_only, lora, moe, prompt_tuning, t5
from t5lite.models import params as params_lib

Array = jax.Array
Batch = Mapping[str, Array]
PyTree = Any


DECODE_METHODS = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How to decode: 'greedy', 'sample' (temperature, top_k, top_p) or 'beam'
  (beam_size, GNMT length penalty alpha). Hashable, so it can be a static jit
  argument. Checked on construction."""

  method: str = "greedy"
  max_decode_len: int = 64
  beam_size: int = 4
  alpha: float = 0.6
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_id: int = 1

  def __post_init__(self):
    """Checks the method and the settings it uses (the others are kept as given).

    Raises:
      ValueError (checks.SettingError): an unknown method; max_decode_len or
        (for 'beam') beam_size not an integer >= 1; (for 'beam') alpha not a
        finite number >= 0; (for 'sample') temperature not a finite number
        >= 0, top_k not an integer >= 0, top_p outside (0, 1]; eos_id not an
        integer >= -1 (-1: no EOS). Bools, floats for integers and strings are refused.
    """
    if self.method not in DECODE_METHODS:
      raise ValueError(f"unknown decoding method {self.method!r}; valid methods are {DECODE_METHODS}")
    fields = {
      "max_decode_len": checks.check_int("max_decode_len", self.max_decode_len, minimum=1),
      "eos_id": checks.check_int("eos_id", self.eos_id, minimum=-1, hint=" (-1: no EOS)"),
    }
    if self.method == "beam":
      fields["beam_size"] = checks.check_int("beam_size", self.beam_size, minimum=1)
      fields["alpha"] = checks.check_float("alpha", self.alpha, minimum=0.0, hint=" (the GNMT length penalty; 0: none)")
    if self.method == "sample":
      fields["temperature"] = checks.check_float("temperature", self.temperature, minimum=0.0, hint=" (0: greedy)")
      fields["top_k"] = checks.check_int("top_k", self.top_k, minimum=0, hint=" (0: no top-k filtering)")
      fields["top_p"] = checks.check_float(
        "top_p", self.top_p, minimum=0.0, maximum=1.0, min_open=True, hint=" (1: no nucleus filtering)"
      )
    for name, value in fields.items():
      object.__setattr__(self, name, value)


@dataclasses.dataclass
class BaseModel:
  """Shared machinery; subclasses define the module call and the FLOP count."""

  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: Union[None, float, str] = "NUM_REAL_TARGET_TOKENS"

  module: nn.Module = dataclasses.field(init=False)
  _abstract_cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

  def __post_init__(self):
    """Raises ValueError for label_smoothing outside [0, 1), z_loss < 0 (NaN and
    infinity included) or an unknown loss_normalizing_factor."""
    self.label_smoothing = checks.check_float(
      "label_smoothing", self.label_smoothing, minimum=0.0, maximum=1.0, max_open=True
    )
    self.z_loss = checks.check_float("z_loss", self.z_loss, minimum=0.0)
    losses.as_normalizer(self.loss_normalizing_factor)  # validates

  @property
  def feature_converter_cls(self) -> type:
    """The seqio FeatureConverter class that makes this model's batches (imports seqio)."""
    raise NotImplementedError  # defined by each subclass

  # ---- parameters ----------------------------------------------------------
  @property
  def example_lengths(self) -> dict[str, int]:
    """Small task feature lengths this model accepts (for shapes that do not depend on them)."""
    return {"inputs": 8, "targets": 8}

  def input_shapes(self, batch_size: int, lengths: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    raise NotImplementedError  # defined by each subclass

  def _init_boxed(self, rng: Array, shapes: Mapping[str, tuple[int, ...]]) -> PyTree:
    # Parameter shapes do not depend on the batch: initialise with one row.
    batch = {k: jnp.ones((1,) + tuple(v[1:]), jnp.int32) for k, v in shapes.items()}
    return self.module.init({"params": rng, "dropout": rng}, **self._module_inputs(batch))["params"]

  def _traced(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[PyTree, dict]:
    """(boxed abstract params, {path: (initialiser, shape)}), traced once per set of input
    features: parameter shapes depend on neither the batch size nor the lengths."""
    key = tuple(sorted(shapes))
    if key not in self._abstract_cache:
      with params_lib.record_initializers() as initializers:
        abstract = jax.eval_shape(lambda rng: self._init_boxed(rng, shapes), jax.random.key(0))
      lora.check_targets(getattr(self.config, "lora", None), list(initializers))
      self._abstract_cache[key] = (abstract, dict(initializers))
    return self._abstract_cache[key]

  def abstract_params(self, shapes: Mapping[str, tuple[int, ...]]) -> PyTree:
    """Boxed (logically annotated) ShapeDtypeStructs of the parameters (traced once, cached)."""
    return self._traced(shapes)[0]

  def param_logical_axes(self, shapes: Mapping[str, tuple[int, ...]]) -> PyTree:
    return params_lib.logical_axes_tree(self.abstract_params(shapes))

  def init_params(
    self,
    rng: Array,
    shapes: Mapping[str, tuple[int, ...]],
    shardings: Optional[PyTree] = None,
    select: Optional[Callable[[PyTree], PyTree]] = None,
  ) -> PyTree:
    """Unboxed float32 parameters for PRNG key `rng`, created from their shapes
    (t5lite.models.params.init_params: no compile of the model, one small
    program per initialiser and shape), placed with `shardings` (a tree of
    jax Shardings like the params; None: the default device). Deterministic
    for a key (a parameter's values depend on its path, not on what else is
    created). `select` (e.g. t5lite.models.peft.trainable) picks a subtree
    of the parameters (and of `shardings`) to create, the rest is not made.
    Call outside jit."""
    abstract, initializers = self._traced(shapes)
    abstract = params_lib.strip_boxes(abstract)
    if select is not None:
      abstract = select(abstract)
      shardings = None if shardings is None else select(shardings)
    return params_lib.init_params(rng, abstract, initializers, shardings)

  # ---- loss ----------------------------------------------------------------
  def _module_inputs(self, batch: Batch) -> dict[str, Array]:
    raise NotImplementedError  # defined by each subclass

  @property
  def is_moe(self) -> bool:
    """Whether the model has mixture-of-experts layers (config.num_experts > 0)."""
    return bool(getattr(self.config, "num_experts", 0))

  def logits(self, params: PyTree, batch: Batch, dropout_rng: Optional[Array] = None) -> Array:
    return self.logits_and_moe_stats(params, batch, dropout_rng)[0]

  def logits_and_moe_stats(
    self, params: PyTree, batch: Batch, dropout_rng: Optional[Array] = None
  ) -> tuple[Array, Optional[dict[str, Array]]]:
    """(float32 logits, the mixture-of-experts statistics `moe.collect_stats` sums, or None for a dense model)."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    inputs = self._module_inputs(batch)
    if not self.is_moe:
      return self.module.apply({"params": params}, **inputs, enable_dropout=dropout_rng is not None, rngs=rngs), None
    logits, state = self.module.apply(
      {"params": params}, **inputs, enable_dropout=dropout_rng is not None, rngs=rngs, mutable=["intermediates"]
    )
    return logits, moe.collect_stats(state.get("intermediates", {}))

  def loss_weights(self, batch: Batch) -> Array:
    """Which targets count: the batch's loss weights (here `decoder_loss_weights` [b, L])."""
    return batch["decoder_loss_weights"]

  def loss_scale(self, batch: Batch) -> tuple[Array, Array]:
    """Per-token loss scale and normalizing denominator for a (whole) batch."""
    return losses.loss_scale_and_denominator(
      self.loss_weights(batch), self.loss_normalizing_factor, batch.get("decoder_segment_ids")
    )

  def loss_fn(
    self,
    params: PyTree,
    batch: Batch,
    dropout_rng: Optional[Array],
    scale: Array,
    aux_scale: Optional[Array] = None,
  ):
    """(summed loss weighted by `scale`, summed metrics).

    The loss is the cross entropy with z-loss; for a mixture-of-experts model
    with `aux_scale` given (the train step passes denominator / batch rows),
    plus aux_scale * (aux_loss_factor * load-balancing loss + router_z_loss_factor
    * router z-loss), each loss summed over the rows (routing groups) and
    averaged over the MoE layers, so that after the train step's division by
    the denominator they enter as their means over rows and layers (the
    metric 'loss_sum' stays the cross entropy). MoE models add `moe.metric_sums`
    as metrics 'moe_*' (sums that add up across microbatches and batches).
    """
    logits, stats = self.logits_and_moe_stats(params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    loss, z_loss, _ = losses.compute_weighted_cross_entropy(
      logits,
      targets,
      scale,
      label_smoothing=self.label_smoothing,
      z_loss=self.z_loss,
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
    total = loss
    if stats is not None:
      sums = moe.metric_sums(stats, targets.shape[0])
      metrics.update({f"moe_{k}": v for k, v in sums.items()})
      if aux_scale is not None:
        cfg = self.config
        total = loss + aux_scale * (cfg.aux_loss_factor * sums["aux_loss"] + cfg.router_z_loss_factor * sums["z_loss"])
    return total, metrics

  def train_metrics(self, sums: Mapping[str, Array]) -> dict[str, Array]:
    """Extra metrics from `loss_fn`'s metrics summed over microbatches (or eval batches): a
    mixture of experts' (`moe.summarize`: aux loss, router z-loss, dropped fraction, expert
    load, router entropy); {} for a dense model."""
    if "moe_groups" not in sums:
      return {}
    return moe.summarize({k[len("moe_") :]: v for k, v in sums.items() if k.startswith("moe_")})

  def score_batch(self, params: PyTree, batch: Batch) -> Array:
    """Log-likelihood of each example's targets: sum over target positions of
    log p(target token) times `decoder_loss_weights` (float32 [batch])."""
    logits = self.logits(params, batch).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_lp = jnp.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None].astype(jnp.int32), -1)
    return jnp.sum(token_lp[..., 0] * batch["decoder_loss_weights"].astype(jnp.float32), axis=-1)

  # ---- decoding ------------------------------------------------------------
  def _decode(self, tokens_to_logits, cache, batch_size: int, options: "DecodeOptions", start_id, rng):
    """Runs options.method; returns (tokens [b, L], scores [b]) of the best
    hypothesis, plus all beams ([b, beams, L], [b, beams]) under beam search."""
    o = options
    if o.method == "beam":
      tokens, scores = decoding.beam_search(
        tokens_to_logits, cache, batch_size, o.max_decode_len, o.beam_size, o.alpha, o.eos_id, start_id
      )
      return tokens[:, 0], scores[:, 0], {"beam_tokens": tokens, "beam_scores": scores}
    if o.method == "sample":
      if rng is None:
        raise ValueError("method='sample' needs an rng (jax.random.key(seed))")
      tokens, scores = decoding.temperature_sample(
        tokens_to_logits, cache, rng, batch_size, o.max_decode_len, o.temperature, o.top_k, o.top_p, o.eos_id, start_id
      )
      return tokens, scores, {}
    tokens, scores = decoding.greedy_decode(tokens_to_logits, cache, batch_size, o.max_decode_len, o.eos_id, start_id)
    return tokens, scores, {}

  def predict_batch(
    self, params: PyTree, inputs: Array, options: "DecodeOptions", rng: Optional[Array] = None
  ) -> tuple[Array, Array, dict[str, Array]]:
    """Decodes int32 inputs [batch, length] (0 = padding); jit with `options`
    static. Returns (tokens [batch, max_decode_len], scores [batch], extras)."""
    raise NotImplementedError  # defined by each subclass

  # ---- FLOPs ---------------------------------------------------------------
  def flops_per_step(self, batch_size: int, lengths: Mapping[str, int]) -> float:
    raise NotImplementedError  # defined by each subclass

  def tokens_per_step(self, batch_size: int, lengths: Mapping[str, int]) -> int:
    return batch_size * sum(lengths.values())

  def _active(self) -> dict[str, Any]:
    """`_matmul_params` arguments: a token uses num_selected_experts of a mixture's experts."""
    return {"active_experts": self.config.num_selected_experts} if self.is_moe else {}


def _matmul_params(
  abstract: PyTree,
  exclude: tuple[str, ...] = ("token_embedder", "position_embedder", "relpos", "bias", "soft_prompt"),
  active_experts: Optional[int] = None,
) -> dict[str, int]:
  """Parameter counts per top-level stack, leaving out lookups (no matmul), biases
  (the [heads, kv] attention biases are 2-D but are added, not multiplied) and a
  soft prompt (prepended, not multiplied).

  A mixture of experts' kernels (logical axis 'expert') count as the
  `active_experts` (top-k) of their experts a token uses; all of them when None.
  """
  counts: dict[str, int] = {}
  flat = jax.tree_util.tree_flatten_with_path(meta.unbox(abstract))[0]
  axes = params_lib.logical_axes_tree(abstract)
  axes_flat = jax.tree.leaves(
    axes, is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(e, (str, type(None))) for e in x)
  )
  for (path, leaf), names in zip(flat, axes_flat, strict=True):
    keys = [getattr(k, "key", str(k)) for k in path]
    if any(e in k for k in keys for e in exclude):
      continue
    if leaf.ndim < 2:
      continue  # norms
    size = int(leaf.size)
    if active_experts is not None and names and "expert" in names:
      size = size // leaf.shape[names.index("expert")] * active_experts
    top = keys[0]
    counts[top] = counts.get(top, 0) + size
  return counts


@dataclasses.dataclass
class EncoderDecoderModel(BaseModel):
  """T5 v1.1 encoder-decoder trained on EncDec feature-converted batches."""

  config: t5.T5Config = dataclasses.field(default_factory=t5.T5Config)

  def __post_init__(self):
    super().__post_init__()
    self.module = t5.T5Transformer(self.config)

  @property
  def feature_converter_cls(self) -> type:
    import seqio  # pylint: disable=g-import-not-at-top  (models import without seqio)

    return seqio.EncDecFeatureConverter

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
        f"An encoder-decoder model needs TASK_FEATURE_LENGTHS with 'inputs' and 'targets'; got {dict(lengths)}."
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

  def init_decode_cache(self, params: PyTree, inputs: Array, max_decode_len: int) -> PyTree:
    """Runs the encoder once and returns the decoding cache: zero self-attention
    caches of max_decode_len slots, each cross-attention's encoder keys and
    values, and the encoder padding. Every leaf has the batch first."""
    decoder_tokens = jnp.zeros((inputs.shape[0], max_decode_len), jnp.int32)
    _, variables = self.module.apply(
      {"params": params}, inputs.astype(jnp.int32), decoder_tokens, decode=True, mutable=["cache"]
    )
    return variables["cache"]

  @staticmethod
  def split_cache(cache: PyTree) -> tuple[PyTree, PyTree]:
    """(per-hypothesis part, per-input part) of a decoding cache.

    The self-attention caches change every step and must follow the beams;
    the encoder keys/values of every cross-attention and the encoder padding
    are the same for all beams of an input. Keeping the latter out of the
    state that beam search expands and reorders saves copying them every step
    (the cross-attention folds the beams onto one copy instead).
    """
    flat = flax.traverse_util.flatten_dict(cache)
    is_static = lambda path: "encoder_decoder_attention" in path or path[-1] == "encoder_valid"  # noqa: E731
    dynamic = flax.traverse_util.unflatten_dict({k: v for k, v in flat.items() if not is_static(k)})
    static = flax.traverse_util.unflatten_dict({k: v for k, v in flat.items() if is_static(k)})
    return dynamic, static

  def tokens_to_logits(self, params: PyTree, static_cache: Optional[PyTree] = None):
    """The `t5lite.decoding` model interface. Without `static_cache` the cache
    is all of init_decode_cache; with it, the cache is the per-hypothesis part
    of `split_cache` and `static_cache` the per-input part (closed over)."""

    def fn(tokens, cache, step):
      if static_cache is not None:
        cache = flax.traverse_util.unflatten_dict(
          {**flax.traverse_util.flatten_dict(cache), **flax.traverse_util.flatten_dict(static_cache)}
        )
      logits, variables = self.module.apply(
        {"params": params, "cache": cache}, tokens, step, method=t5.T5Transformer.decode_step, mutable=["cache"]
      )
      new_cache = variables["cache"]
      if static_cache is not None:
        new_cache = self.split_cache(new_cache)[0]
      return logits[:, -1], new_cache

    return fn

  def predict_batch(self, params, inputs, options, rng=None):
    dynamic, static = self.split_cache(self.init_decode_cache(params, inputs, options.max_decode_len))
    return self._decode(self.tokens_to_logits(params, static), dynamic, inputs.shape[0], options, 0, rng)

  def flops_per_step(self, batch_size, lengths):
    """Training FLOPs of one step: 3x the forward pass (forward + backward).

    Forward FLOPs = 2 * (matmul parameters touched per token) per token, plus
    attention scores and mixing: 4 * q_len * k_len * heads * d_kv per layer and
    sequence (self-attention in each stack, cross-attention in the decoder).
    Embedding lookups and norms are not counted. With prompt tuning the
    encoder runs over N + inputs positions, which the decoder cross-attends to.
    """
    cfg = self.config
    counts = _matmul_params(self.abstract_params(self.input_shapes(1, {"inputs": 8, "targets": 8})), **self._active())
    enc_p = counts.get("encoder", 0)
    dec_p = sum(v for k, v in counts.items() if k != "encoder")
    li, lt = lengths["inputs"] + prompt_tuning.prompt_length(cfg), lengths["targets"]
    hd = cfg.num_heads * cfg.d_kv
    attn = 4 * hd * (cfg.num_encoder_layers * li * li + cfg.num_decoder_layers * (lt * lt + lt * li))
    forward = 2 * (enc_p * li + dec_p * lt) + attn
    return float(3 * forward * batch_size)


@dataclasses.dataclass
class DecoderOnlyModel(BaseModel):
  """Decoder-only LM trained on LM (causal) or PrefixLM feature-converted batches."""

  config: decoder_only.DecoderOnlyConfig = dataclasses.field(default_factory=decoder_only.DecoderOnlyConfig)
  prefix_lm: bool = False

  def __post_init__(self):
    super().__post_init__()
    self.module = decoder_only.DecoderOnlyTransformer(self.config)

  @property
  def feature_converter_cls(self) -> type:
    import seqio  # pylint: disable=g-import-not-at-top  (models import without seqio)

    return seqio.PrefixLMFeatureConverter if self.prefix_lm else seqio.LMFeatureConverter

  @property
  def example_lengths(self) -> dict[str, int]:
    return {"inputs": 8, "targets": 8} if self.prefix_lm else {"targets": 8}

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

  def prefill(self, params: PyTree, inputs: Array, max_decode_len: int) -> tuple[PyTree, Array, int]:
    """Writes prompts into a fresh decoding cache.

    `inputs` int32 [batch, P] holds prompts left-aligned with 0 padding (a
    row of zeros: no prompt). Each prompt is shifted right (BOS 0 first, as
    the LM/PrefixLM feature converters do) and right-aligned in a chunk of
    P + 1 cache slots, so all rows continue at slot P; the slots left of a
    short prompt are marked invalid and never attended to. A prefix LM sees
    the chunk bidirectionally, the P + 1 positions seqio's PrefixLM marks.
    Returns (cache, start tokens [batch] (each row's last prompt token, 0
    without a prompt), P). Decoding step i then writes slot P + i; step 0
    rewrites the last chunk slot with the same token, which reproduces it
    exactly. With prompt tuning the soft prompt runs first, in N cache
    slots before these (t5lite.models.stacks.Decoder): the tokens see it
    as in training, at positions 0..N-1 right before BOS, whatever a row's
    left padding.
    """
    inputs = inputs.astype(jnp.int32)
    b, p = inputs.shape
    lengths = jnp.sum(inputs > 0, axis=1, dtype=jnp.int32)
    shifted = features.shift_right(jnp.pad(inputs, ((0, 0), (0, 1))))  # [b, P+1]: BOS, then the prompt
    # Right-align: row r's slot j holds shifted[r, j - (P - len_r)].
    slot = jnp.arange(p + 1, dtype=jnp.int32)[None, :]
    src = slot - (p - lengths)[:, None]
    chunk = jnp.where(src >= 0, jnp.take_along_axis(shifted, jnp.maximum(src, 0), axis=1), 0)
    valid = src >= 0
    total = p + max_decode_len
    _, variables = self.module.apply(
      {"params": params}, jnp.zeros((b, total), jnp.int32), decode=True, mutable=["cache"]
    )
    _, variables = self.module.apply(
      {"params": params, "cache": variables["cache"]},
      chunk,
      jnp.int32(0),
      valid,
      self.prefix_lm,
      True,  # prompt_chunk: the soft prompt, if any, fills the first cache slots
      method=decoder_only.DecoderOnlyTransformer.decode_step,
      mutable=["cache"],
    )
    return variables["cache"], chunk[:, -1], p

  def tokens_to_logits(self, params: PyTree, offset: int):
    """The `t5lite.decoding` model interface; step i is cache slot offset + i."""

    def fn(tokens, cache, step):
      logits, variables = self.module.apply(
        {"params": params, "cache": cache},
        tokens,
        offset + step,
        method=decoder_only.DecoderOnlyTransformer.decode_step,
        mutable=["cache"],
      )
      return logits[:, -1], variables["cache"]

    return fn

  def predict_batch(self, params, inputs, options, rng=None):
    cache, start, offset = self.prefill(params, inputs, options.max_decode_len)
    return self._decode(self.tokens_to_logits(params, offset), cache, inputs.shape[0], options, start, rng)

  def flops_per_step(self, batch_size, lengths):
    """3x forward: 2 * matmul params per token plus 4 * L^2 * heads * d_kv per layer,
    L the total length plus a soft prompt's N positions (prompt tuning)."""
    cfg = self.config
    length = self.total_length(lengths) + prompt_tuning.prompt_length(cfg)
    shapes = {"decoder_input_tokens": (1, 8)}
    params = sum(_matmul_params(self.abstract_params(shapes), **self._active()).values())
    attn = 4 * cfg.num_heads * cfg.d_kv * cfg.num_layers * length * length
    return float(3 * (2 * params * length + attn) * batch_size)

"""The configuration base of both model families: `TransformerConfig` holds the
fields T5Config and DecoderOnlyConfig share and checks them on construction;
plus dtype names, remat policies and the preset lookup.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Optional, Self, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t5lite import checks
from t5lite.kernels import backend
from t5lite.models import lora as lora_lib
from t5lite.models import prompt_tuning as prompt_lib

ATTENTION_IMPLEMENTATIONS = backend.ATTENTION_IMPLEMENTATIONS
REMAT_POLICIES = ("none", "full", "dots_saveable", "minimal")
# 'gelu' is the tanh approximation (HF 'gelu_new', T5's 'gated-gelu'); 'gelu_exact' the erf form.
MLP_ACTIVATIONS = ("gelu", "gelu_exact", "relu", "silu", "linear")
NORM_TYPES = ("rmsnorm", "layernorm")
# 'pre': norm before each sublayer and a final norm (T5, GPT-2); 'post': norm after each residual
# addition and one after the embeddings, no final norm (BERT, the original Transformer).
NORM_PLACEMENTS = ("pre", "post")
POSITION_EMBEDDINGS = ("relative", "absolute")
_DTYPE_NAMES = ("float32", "bfloat16", "float16")


def dtype_name(dtype: Any) -> str:
  """Canonical string name ('float32', 'bfloat16', 'float16') of a dtype.

  Accepts those strings or anything `jnp.dtype` understands (jnp.bfloat16,
  np.float32, ...). Raises ValueError for anything else.
  """
  try:
    name = jnp.dtype(dtype).name
  except TypeError:
    name = None
  if name not in _DTYPE_NAMES:
    raise ValueError(
      f"unsupported activation dtype {dtype!r}; valid options are {_DTYPE_NAMES} (as strings or jnp dtypes)"
    )
  return name


def remat_policy(name: str) -> Optional[Callable[..., bool]]:
  """Maps a remat policy name to a `jax.checkpoint_policies` function.

  'none' -> no rematerialisation (returns None; callers skip nn.remat),
  'full' -> save nothing, recompute the whole layer in the backward pass,
  'dots_saveable' -> keep every matmul output (jax dots_saveable),
  'minimal' -> keep matmul outputs without batch dims, i.e. the weight
  projections but not the attention score/value products (T5X 'minimal').
  """
  if name == "none":
    return None
  if name == "full":
    return jax.checkpoint_policies.nothing_saveable
  if name == "dots_saveable":
    return jax.checkpoint_policies.dots_saveable
  if name == "minimal":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  raise ValueError(f"unknown remat_policy {name!r}; valid options are {REMAT_POLICIES}")


def validate_transformer_config(cfg: Any, layer_fields: Sequence[str]) -> None:
  """Shared __post_init__ checks for the model config dataclasses.

  Normalises `dtype` to its string name, `remat_policy=None` to 'none',
  a list of `mlp_activations` (from gin) to a tuple and numbers to Python
  ints and floats (the configs are frozen, hence
  object.__setattr__).

  Raises:
    ValueError: sizes that are not integers >= 1 (bools, floats and strings
      included), dropout_rate outside [0, 1), relative_attention_num_buckets
      < 4, relative_attention_max_distance <= num_buckets // 2,
      layer_norm_epsilon not > 0, NaN or infinity, an unknown remat policy,
      dtype or attention implementation, mlp_activations that is not a
      non-empty tuple (or list) of MLP_ACTIVATIONS names, an unknown
      norm_type, norm_placement or position_embedding, max_position_embeddings < 1 with
      absolute positions (< 0 otherwise), use_bias /
      scale_attention_logits / scale_tied_logits that are not bools. An attention implementation this
      process's backend cannot run is refused when the model is traced
      (t5lite.models.layers.apply_layer_stack).
  """
  cls = type(cfg).__name__
  positive = ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", *layer_fields)
  for field in positive:
    object.__setattr__(cfg, field, checks.check_int(f"{cls}.{field}", getattr(cfg, field), minimum=1))
  dropout = checks.check_float(f"{cls}.dropout_rate", cfg.dropout_rate, minimum=0.0, maximum=1.0, max_open=True)
  object.__setattr__(cfg, "dropout_rate", dropout)
  nb = checks.check_int(f"{cls}.relative_attention_num_buckets", cfg.relative_attention_num_buckets, minimum=4)
  md = checks.check_int(
    f"{cls}.relative_attention_max_distance",
    cfg.relative_attention_max_distance,
    minimum=nb // 2 + 1,
    hint=f" (> relative_attention_num_buckets // 2 = {nb // 2})",
  )
  object.__setattr__(cfg, "relative_attention_num_buckets", nb)
  object.__setattr__(cfg, "relative_attention_max_distance", md)
  policy = "none" if cfg.remat_policy is None else cfg.remat_policy
  if policy not in REMAT_POLICIES:
    raise ValueError(
      f"{cls}.remat_policy: unknown remat policy {cfg.remat_policy!r}; valid options are {REMAT_POLICIES}"
    )
  object.__setattr__(cfg, "remat_policy", policy)
  try:
    object.__setattr__(cfg, "dtype", dtype_name(cfg.dtype))
  except ValueError as e:
    raise ValueError(f"{cls}.dtype: {e}") from None
  # The name only: the backend is asked when the model is traced (building a config
  # starts no JAX backend, and a config written on a GPU host still loads on a CPU one).
  backend.check_attention_name(cfg.attention, where=f"{cls}.attention")
  epsilon = checks.check_float(f"{cls}.layer_norm_epsilon", cfg.layer_norm_epsilon, minimum=0.0, min_open=True)
  object.__setattr__(cfg, "layer_norm_epsilon", epsilon)
  _validate_architecture(cfg, cls)
  _validate_moe(cfg, cls, layer_fields)
  _validate_peft(cfg, cls)


def _validate_peft(cfg: Any, cls: str) -> None:
  """Checks the parameter-efficient fine-tuning fields: a LoraConfig / PromptTuningConfig or None."""
  for field, kind in (("lora", lora_lib.LoraConfig), ("prompt_tuning", prompt_lib.PromptTuningConfig)):
    value = getattr(cfg, field)
    if value is not None and not isinstance(value, kind):
      raise checks.SettingTypeError(
        f"{cls}.{field}={value!r} must be None or a {kind.__name__} (gin: {cls}.{field} = @{field}.{kind.__name__}())"
      )


def _validate_moe(cfg: Any, cls: str, layer_fields: Sequence[str]) -> None:
  """Checks (and normalises) the mixture-of-experts fields; all are ignored when num_experts is 0."""
  n = checks.check_int(f"{cls}.num_experts", cfg.num_experts, minimum=0, hint=" (0: a dense model)")
  object.__setattr__(cfg, "num_experts", n)
  k = checks.check_int(f"{cls}.num_selected_experts", cfg.num_selected_experts, minimum=1)
  if n and k > n:
    raise checks.SettingError(
      f"{cls}.num_selected_experts={k} (top-k routing) is larger than num_experts={n}; valid: 1..{n} "
      "(1: Switch, 2: GShard / ST-MoE top-2)"
    )
  object.__setattr__(cfg, "num_selected_experts", k)
  interval = checks.check_int(
    f"{cls}.moe_layer_interval", cfg.moe_layer_interval, minimum=1, hint=" (1: every layer, 2: every other, ...)"
  )
  object.__setattr__(cfg, "moe_layer_interval", interval)
  for field in ("train_capacity_factor", "eval_capacity_factor"):
    value = checks.check_float(
      f"{cls}.{field}", getattr(cfg, field), minimum=0.0, min_open=True, hint=" (the Switch Transformer: 1.25 / 2.0)"
    )
    object.__setattr__(cfg, field, value)
  cap = checks.check_int(f"{cls}.min_expert_capacity", cfg.min_expert_capacity, minimum=1)
  object.__setattr__(cfg, "min_expert_capacity", cap)
  for field in ("aux_loss_factor", "router_z_loss_factor"):
    object.__setattr__(cfg, field, checks.check_float(f"{cls}.{field}", getattr(cfg, field), minimum=0.0))
  jitter = checks.check_float(
    f"{cls}.router_jitter_noise", cfg.router_jitter_noise, minimum=0.0, maximum=1.0, max_open=True
  )
  object.__setattr__(cfg, "router_jitter_noise", jitter)
  rate = checks.check_float(
    f"{cls}.expert_dropout_rate",
    cfg.expert_dropout_rate,
    minimum=0.0,
    maximum=1.0,
    max_open=True,
    allow_none=True,
    hint=" (None: dropout_rate)",
  )
  object.__setattr__(cfg, "expert_dropout_rate", rate)
  if n and cfg.scan_layers and interval > 1:
    for field in layer_fields:
      depth = getattr(cfg, field)
      if depth % interval:
        raise checks.SettingError(
          f"{cls}.{field}={depth} is not a multiple of moe_layer_interval={interval}: a scanned stack "
          f"(scan_layers=True) repeats blocks of {interval} layers; use a depth divisible by {interval} or "
          "scan_layers=False"
        )


def is_moe_layer(config: Any, index: int) -> bool:
  """Whether layer `index` (0-based) of a stack has a mixture-of-experts MLP.

  Layers 1, 1 + interval, 1 + 2 * interval, ... (every layer with interval 1):
  with moe_layer_interval=2 the odd layers, as the Switch Transformer's
  Hugging Face layout (`sparse_step`) places them.
  """
  if not config.num_experts:
    return False
  interval = config.moe_layer_interval
  return interval == 1 or index % interval == 1


def _check_choice(where: str, value: Any, choices: Sequence[str]) -> str:
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{where}={value!r} is not one of the valid options {choices}")
  return value


def _validate_architecture(cfg: Any, cls: str) -> None:
  """Checks (and normalises) the fields that choose between the T5 and GPT-2 style blocks."""
  acts = cfg.mlp_activations
  if isinstance(acts, str) or not isinstance(acts, (list, tuple)):
    raise ValueError(
      f"{cls}.mlp_activations={acts!r} must be a non-empty tuple of activation names from {MLP_ACTIVATIONS}, "
      f"e.g. ('relu',) or ('gelu', 'linear')"
    )
  if not acts:
    raise ValueError(f"{cls}.mlp_activations is empty; give at least one activation from {MLP_ACTIVATIONS}")
  for i, act in enumerate(acts):
    _check_choice(f"{cls}.mlp_activations[{i}]", act, MLP_ACTIVATIONS)
  object.__setattr__(cfg, "mlp_activations", tuple(acts))
  _check_choice(f"{cls}.norm_type", cfg.norm_type, NORM_TYPES)
  _check_choice(f"{cls}.norm_placement", cfg.norm_placement, NORM_PLACEMENTS)
  _check_choice(f"{cls}.position_embedding", cfg.position_embedding, POSITION_EMBEDDINGS)
  minimum = 1 if cfg.position_embedding == "absolute" else 0
  hint = " (the size of the learned position table)" if minimum else ""
  max_pos = checks.check_int(f"{cls}.max_position_embeddings", cfg.max_position_embeddings, minimum=minimum, hint=hint)
  object.__setattr__(cfg, "max_position_embeddings", max_pos)
  for field in ("use_bias", "scale_attention_logits", "scale_tied_logits"):
    value = getattr(cfg, field)
    if not isinstance(value, (bool, np.bool_)):
      raise checks.SettingTypeError(f"{cls}.{field}={value!r} must be True or False")
    object.__setattr__(cfg, field, bool(value))


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters both model families share (defaults: T5 v1.1 'small').

  A family's config subclasses this, adds its own fields (its depths, listed
  in LAYER_FIELDS so that they are checked like the sizes), names its
  PRESETS (the sizes `from_preset` builds) and may change defaults. Frozen and hashable; checked on construction
  (`validate_transformer_config`).

  vocab_size, d_model, num_heads, d_kv (per-head size), d_ff (MLP width):
    sizes, integers >= 1.
  dropout_rate: dropout on embeddings, residuals, MLP and attention, in [0, 1).
  relative_attention_num_buckets, relative_attention_max_distance: T5's
    relative position buckets (t5lite.models.embeddings).
  dtype: activation dtype ('float32', 'bfloat16', 'float16' or a jnp dtype;
    stored as its string name). Parameters are always float32.
  scan_layers: run each stack with nn.scan (params get a leading 'layers' axis).
  remat_policy: 'none', 'full', 'dots_saveable' or 'minimal' (see `remat_policy`).
  attention: 'auto' (the fastest on this backend), 'dot_product' (plain einsum,
    float32 softmax), 'cudnn_flash_jax' (cuDNN fused attention, GPU) or
    'cpu_dot_product' (the XLA:CPU kernels); see t5lite.kernels.backend.
  logits_via_embedding: tie the output projection to the token embedding.
  float32_attention_logits: accumulate attention logits in float32.
  layer_norm_epsilon: the norms' epsilon (RMSNorm or LayerNorm), > 0.
  position_bias_from_positions: False (as T5X): relative positions are
    differences of token indices, one [1, heads, q, k] bias for the batch.
    For packed batches whose `*_positions` count up by one within each
    segment (seqio's packing) this is the same bias on every pair the
    segment mask leaves visible. True: differences of the `*_positions`
    features, a [batch, heads, q, k] bias, for positions that do not (a
    gather and a scatter over batch x heads x q x k entries each step).

  The architecture options below default to T5 v1.1; other settings give
  the original T5 (mlp_activations=('relu',), logits_via_embedding=True) or
  GPT-2 (layernorm, ('gelu',), use_bias, absolute positions, tied logits
  with scale_tied_logits=False, scale_attention_logits=True).
  mlp_activations: one activation name per MLP input projection, from
    'gelu' (tanh approximation: HF 'gelu_new', T5 'gated-gelu'),
    'gelu_exact' (erf), 'relu', 'silu', 'linear'. The MLP computes
    wo(prod_i act_i(x @ wi_i)) (T5X's MlpBlock); its kernels are `wi` with
    one activation, `wi_0`, `wi_1`, ... with several. Default
    ('gelu', 'linear'): T5 v1.1's gated GELU. A list is stored as a tuple.
  use_bias: zero-initialised biases on every attention and MLP projection
    (query_bias, key_bias, value_bias [heads, kv], out_bias [d_model];
    wi_bias or wi_i_bias [d_ff], wo_bias [d_model]); the untied output
    projection never has one.
  norm_type: 'rmsnorm' (T5: scale only) or 'layernorm' (mean subtracted,
    params `scale` and `bias`), computed in float32.
  norm_placement: 'pre' (T5, GPT-2): x + f(norm(x)) in every sublayer and a
    final norm on the stack's output; 'post' (BERT, Vaswani et al. 2017):
    norm(x + f(x)), one norm 'embedding_norm' on the embeddings (before
    their dropout) and no final norm.
  position_embedding: 'relative' (T5's bucketed bias, one 'relpos_bias' per
    stack) or 'absolute' (a learned [max_position_embeddings, d_model]
    table 'position_embedder' per stack, added to the token embedding as
    in GPT-2; no relative bias then).
  max_position_embeddings: rows of the absolute position table, >= 1 with
    absolute positions (a longer sequence is refused); ignored otherwise.
  scale_attention_logits: False (T5): the 1/sqrt(d_kv) factor lives in the
    query initialiser and the dot product is unscaled. True (GPT-2, BERT):
    queries are multiplied by d_kv**-0.5 at run time and their initialiser
    is not pre-scaled.
  scale_tied_logits: with logits_via_embedding, multiply the last hidden
    state by d_model**-0.5 before the tied projection (T5; GPT-2 does not).

  Mixture of experts (Switch Transformer, Fedus et al. 2021; ST-MoE, Zoph et
  al. 2022; t5lite.models.moe). All ignored while num_experts is 0 (dense).
  num_experts: experts per MoE layer (0: dense model).
  num_selected_experts: top-k routing; 1 is Switch routing, 2 top-2.
  moe_layer_interval: which layers are sparse (`is_moe_layer`): 1 every
    layer, 2 every other layer (Switch), ...
  train_capacity_factor, eval_capacity_factor: expert capacity is
    ceil(factor * k * tokens_per_group / num_experts) tokens (at least
    min_expert_capacity, at most the group's tokens); training uses the first,
    evaluation, scoring and decoding the second. > 0.
  min_expert_capacity: the smallest capacity, >= 1.
  aux_loss_factor: weight of the load-balancing loss (Switch eq. 4), >= 0.
  router_z_loss_factor: weight of the router z-loss (ST-MoE eq. 5), >= 0.
  router_jitter_noise: training only: the router input is multiplied by
    uniform noise in [1 - eps, 1 + eps], eps in [0, 1).
  expert_dropout_rate: dropout inside the experts (Switch fine-tunes with
    0.4), None: dropout_rate.

  Parameter-efficient fine-tuning (t5lite.models.peft): with either set, only
  the adapters (and soft prompt) train and the base parameters are frozen.
  lora: a t5lite.models.lora.LoraConfig (low-rank adapters on the kernels it
    selects), or None.
  prompt_tuning: a t5lite.models.prompt_tuning.PromptTuningConfig (a learned
    soft prompt before the encoder's input, or the decoder-only model's), or None.
  """

  vocab_size: int = 32128
  d_model: int = 512
  num_heads: int = 6
  d_kv: int = 64
  d_ff: int = 1024
  dropout_rate: float = 0.0
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dtype: Any = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"
  attention: str = "auto"
  logits_via_embedding: bool = False
  float32_attention_logits: bool = True
  layer_norm_epsilon: float = 1e-6
  position_bias_from_positions: bool = False
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  use_bias: bool = False
  norm_type: str = "rmsnorm"
  norm_placement: str = "pre"
  position_embedding: str = "relative"
  max_position_embeddings: int = 0
  scale_attention_logits: bool = False
  scale_tied_logits: bool = True
  num_experts: int = 0
  num_selected_experts: int = 1
  moe_layer_interval: int = 2
  train_capacity_factor: float = 1.25
  eval_capacity_factor: float = 2.0
  min_expert_capacity: int = 4
  aux_loss_factor: float = 0.01
  router_z_loss_factor: float = 0.001
  router_jitter_noise: float = 0.0
  expert_dropout_rate: Optional[float] = None
  lora: Optional[lora_lib.LoraConfig] = None
  prompt_tuning: Optional[prompt_lib.PromptTuningConfig] = None

  LAYER_FIELDS: ClassVar[tuple[str, ...]] = ()
  PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
  FAMILY: ClassVar[str] = "Transformer"

  def __post_init__(self):
    validate_transformer_config(self, self.LAYER_FIELDS)

  @classmethod
  def from_preset(cls, preset: str, **overrides: Any) -> Self:
    """The config of a named size (`cls.PRESETS`) with field overrides on top.

    Raises:
      ValueError: an unknown preset (naming the family and the valid presets),
        or a bad field value.
    """
    if preset not in cls.PRESETS:
      raise ValueError(f"unknown {cls.FAMILY} preset {preset!r}; valid presets are {sorted(cls.PRESETS)}")
    return cls(**{**cls.PRESETS[preset], **overrides})

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

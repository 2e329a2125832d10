"""Configuration helpers shared by the model configs (T5Config, DecoderOnlyConfig):
dtype names, remat policies and the field checks each config runs on construction.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from t5lite import checks
from t5lite.kernels import backend

ATTENTION_IMPLEMENTATIONS = backend.ATTENTION_IMPLEMENTATIONS
REMAT_POLICIES = ("none", "full", "dots_saveable", "minimal")
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

  Normalises `dtype` to its string name, `remat_policy=None` to 'none' and
  numbers to Python ints and floats (the configs are frozen, hence
  object.__setattr__).

  Raises:
    ValueError: sizes that are not integers >= 1 (bools, floats and strings
      included), dropout_rate outside [0, 1), relative_attention_num_buckets
      < 4, relative_attention_max_distance <= num_buckets // 2,
      layer_norm_epsilon not > 0, NaN or infinity, an unknown remat policy,
      dtype or attention implementation. An attention implementation this
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

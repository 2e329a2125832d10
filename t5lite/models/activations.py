"""The MLP activations, by the names `TransformerConfig.mlp_activations` uses.

Shared by the dense MLP (t5lite.models.layers) and the experts of a mixture
of experts (t5lite.models.moe); flax.linen gives the functions.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from t5lite.models import config as config_lib


def activation(name: str, x: jax.Array) -> jax.Array:
  """One of t5lite.models.config.MLP_ACTIVATIONS applied to x (same shape and dtype).

  'gelu' is the tanh approximation (HF 'gelu_new', T5's 'gated-gelu'),
  'gelu_exact' the erf form, 'linear' the identity.

  Raises:
    ValueError: an unknown name (with the valid ones).
  """
  if name == "gelu":
    return nn.gelu(x, approximate=True)
  if name == "gelu_exact":
    return nn.gelu(x, approximate=False)
  if name == "relu":
    return nn.relu(x)
  if name == "silu":
    return nn.silu(x)
  if name == "linear":
    return x
  raise ValueError(f"unknown MLP activation {name!r}; valid options are {config_lib.MLP_ACTIVATIONS}")

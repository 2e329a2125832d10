"""Token embeddings, learned absolute positions, the output projection and T5's relative position bias."""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5lite.kernels import backend, xla_cpu
from t5lite.models import params

Array = jax.Array
DType = Any


class Embed(nn.Module):
  """Token embedding table with axes ('vocab', 'embed'), drawn N(0, stddev^2) (T5: 1; BERT: 0.02)."""

  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  stddev: float = 1.0

  def setup(self):
    self.embedding = params.param(
      self, "embedding", params.Normal(self.stddev), (self.num_embeddings, self.features), ("vocab", "embed")
    )

  def __call__(self, ids: Array) -> Array:
    # Ids outside [0, vocab) are clamped (like array indexing in JAX).
    return jnp.take(self.embedding, ids, axis=0, mode="clip").astype(self.dtype)

  def attend(self, x: Array) -> Array:
    """Tied output projection: float32 logits x @ embedding.T."""
    table = self.embedding.astype(self.dtype)
    lead = x.shape[:-1]
    logits = jnp.einsum("td,vd->tv", x.reshape((-1, x.shape[-1])), table, preferred_element_type=jnp.float32)
    return logits.reshape(lead + (self.num_embeddings,))


class PositionEmbed(nn.Module):
  """Learned absolute position embeddings (GPT-2's wpe, BERT's position_embeddings).

  Parameter 'embedding' [num_positions, features], axes ('abspos', 'embed'),
  drawn like the token embedding, N(0, stddev^2).
  """

  num_positions: int
  features: int
  dtype: DType = jnp.float32
  stddev: float = 1.0

  @nn.compact
  def __call__(self, positions: Array, length: int) -> Array:
    """Embeddings [b, q, features] in `dtype` of int positions [b or 1, q].

    `length` is the sequence (or decode cache) length the positions index
    into; a length beyond the table is a ValueError at trace time, so no
    position of the sequence can fall outside it. Positions outside
    [0, num_positions) (only possible with a hand-made `positions` feature)
    give NaN rows rather than a silently clipped or wrapped lookup.

    Raises:
      ValueError: length > num_positions (names both numbers).
    """
    if length > self.num_positions:
      raise ValueError(
        f"a sequence of {length} positions does not fit the learned position table of "
        f"max_position_embeddings={self.num_positions}; use sequences of at most {self.num_positions} "
        f"tokens (inputs plus decode length when decoding) or a larger max_position_embeddings"
      )
    table = params.param(
      self,
      "embedding",
      params.Normal(self.stddev),
      (self.num_positions, self.features),
      ("abspos", "embed"),
    )
    out = jnp.take(table, positions.astype(jnp.int32), axis=0, mode="fill", fill_value=jnp.nan)
    return out.astype(self.dtype)


class TokenTypeEmbed(nn.Module):
  """BERT's token type (segment) embeddings: parameter 'embedding' [num_types, features],
  axes ('token_types', 'embed'), drawn N(0, stddev^2). Ids [b, L] -> [b, L, features];
  an id outside [0, num_types) gives a NaN row rather than a clipped lookup."""

  num_types: int
  features: int
  dtype: DType = jnp.float32
  stddev: float = 1.0

  @nn.compact
  def __call__(self, ids: Array) -> Array:
    table = params.param(
      self, "embedding", params.Normal(self.stddev), (self.num_types, self.features), ("token_types", "embed")
    )
    return jnp.take(table, ids.astype(jnp.int32), axis=0, mode="fill", fill_value=jnp.nan).astype(self.dtype)


class OutputDense(nn.Module):
  """Untied output projection 'logits_dense', kernel axes ('embed', 'vocab'); float32 logits."""

  features: int
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = params.param(self, "kernel", params.kernel_init(), (x.shape[-1], self.features), ("embed", "vocab"))
    lead = x.shape[:-1]
    logits = jnp.dot(x.reshape((-1, x.shape[-1])), kernel.astype(self.dtype), preferred_element_type=jnp.float32)
    return logits.reshape(lead + (self.features,))


def relative_position_bucket(
  relative_position: Any,
  bidirectional: bool = True,
  num_buckets: int = 32,
  max_distance: int = 128,
) -> Any:
  """T5 bucket index of `relative_position = key_position - query_position`.

  Small distances get one bucket each; larger ones share logarithmically
  wider buckets up to `max_distance`, beyond which everything lands in the
  last bucket. Bidirectional: half the buckets for keys before the query
  (including itself), half for keys after it. Unidirectional (causal): keys
  after the query all map to bucket 0. Works on numpy arrays (returned as
  numpy, for static tables) and on jax arrays. Source: T5's
  `_relative_position_bucket` (Raffel et al. 2020, mesh_tensorflow).
  """
  xp = np if isinstance(relative_position, (np.ndarray, np.generic, int)) else jnp
  n = -xp.asarray(relative_position).astype(np.int32)  # distance looking back
  ret = xp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(np.int32) * num_buckets
    n = xp.abs(n)
  else:
    n = xp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # The eps keeps exact powers (e.g. n = 2 * max_exact) from rounding down.
  scaled = xp.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps) / math.log(max_distance / max_exact)
  large = max_exact + (scaled * (num_buckets - max_exact)).astype(np.int32)
  large = xp.minimum(large, num_buckets - 1)
  return ret + xp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """Per-head learned bias indexed by relative-position bucket.

  One instance per layer stack; its output is computed once and handed to
  every layer. Parameter 'rel_embedding' has axes ('heads', 'relpos_buckets').
  """

  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True

  @nn.compact
  def __call__(
    self, q_len: int, k_len: int, q_positions: Optional[Array] = None, k_positions: Optional[Array] = None
  ) -> Array:
    """Float32 bias of shape [1, heads, q_len, k_len] (static positions) or
    [batch, heads, q_len, k_len] when per-example positions are given."""
    table = params.param(
      self, "rel_embedding", params.relpos_init, (self.num_heads, self.num_buckets), ("heads", "relpos_buckets")
    )
    bucket = lambda rel: relative_position_bucket(  # noqa: E731
      rel, self.bidirectional, self.num_buckets, self.max_distance
    )
    if q_positions is None and k_positions is None:
      rel = np.arange(k_len, dtype=np.int32)[None, :] - np.arange(q_len, dtype=np.int32)[:, None]
      buckets = bucket(rel)[None]  # static numpy [1, q, k]: one bias for the batch
    else:
      if q_positions is None:
        q_positions = jnp.arange(q_len, dtype=jnp.int32)[None]
      if k_positions is None:
        k_positions = jnp.arange(k_len, dtype=jnp.int32)[None]
      rel = k_positions[:, None, :].astype(jnp.int32) - q_positions[:, :, None].astype(jnp.int32)
      buckets = bucket(rel)  # [b, q, k]
    if backend.cpu_kernels():
      return xla_cpu.relpos_gather(table, buckets)
    return jnp.transpose(jnp.take(table, buckets, axis=1), (1, 0, 2, 3))  # [h, b, q, k] -> [b, h, q, k]


def bias_positions(config: Any, positions: Optional[Array]) -> tuple[Optional[Array], Optional[Array]]:
  """(q_positions, k_positions) for a self-attention `RelativePositionBias`
  call: the positions features when `config.position_bias_from_positions`,
  else (None, None), the batch-shared bias of token indices (see T5Config)."""
  if config.position_bias_from_positions and positions is not None:
    return positions, positions
  return None, None

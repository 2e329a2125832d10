"""Parameters: their initialisers, logical axis names, creation from shapes, and the projection.

Every parameter is float32 and is created through `param`, which annotates it
with logical axis names (`LOGICAL_AXES`) for the partitioner and notes its
initialiser, so that `init_params` can create all parameters from their shapes
without compiling the model: each parameter is drawn by a small jitted program
cached per (initialiser, shape, sharding), so a T5 base or large model compiles
a handful of programs instead of one program with a few hundred random draws
(whose XLA compile took longer than the train step's). Flax's own initialisers
do the drawing; the random key of each parameter is the run's key folded with
a hash of the parameter's path, unscanned layer i and layer i of a scanned
stack getting the same values.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import os
import zlib
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

try:
  from jax.core import Tracer as _Tracer
except ImportError:  # a jax that keeps it private
  from jax._src.core import Tracer as _Tracer

Array = jax.Array
PyTree = Any

# Logical axis vocabulary used by parameters ('layers' only appears when a
# stack is scanned, 'abspos' only with learned absolute positions, 'lora_rank'
# and 'prompt' only in parameter-efficient fine-tuning, 'token_types' and
# 'classes' only in the encoder-only family) and by activation constraints.
LOGICAL_AXES = (
  "vocab",
  "embed",
  "mlp",
  "heads",
  "kv",
  "relpos_buckets",
  "abspos",
  "layers",
  "expert",
  "lora_rank",
  "prompt",
  "token_types",
  "classes",
  "unmodeled",
)
ACTIVATION_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "vocab", "expert", "expert_group")


# --------------------------------------------------------------------------
# Initialisers: hashable descriptions, drawn by flax.linen.initializers
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VarianceScaling:
  """flax.linen.initializers.variance_scaling(scale, mode, distribution, in_axis, out_axis,
  batch_axis), times `factor`. `batch_axis`: dims of independent kernels (a
  mixture of experts' leading expert axis), counted in neither fan."""

  scale: float
  mode: str
  distribution: str
  in_axis: Any = -2
  out_axis: Any = -1
  factor: float = 1.0
  batch_axis: Any = ()

  def __call__(self, key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    init = nn.initializers.variance_scaling(
      self.scale, self.mode, self.distribution, self.in_axis, self.out_axis, self.batch_axis
    )
    value = init(key, shape, dtype)
    return value if self.factor == 1.0 else value * jnp.asarray(self.factor, dtype)

  def scaled(self, factor: float) -> "VarianceScaling":
    return dataclasses.replace(self, factor=self.factor * factor)


@dataclasses.dataclass(frozen=True)
class Normal:
  """N(0, stddev**2) entries."""

  stddev: float = 1.0

  def __call__(self, key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    return nn.initializers.normal(self.stddev)(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class Constant:
  """Every entry `value` (norm scales: 1; biases: 0)."""

  value: float = 1.0

  def __call__(self, key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    del key
    return jnp.full(shape, self.value, dtype)


def _axes(axis: Any) -> Any:
  return tuple(axis) if isinstance(axis, (list, tuple)) else axis


def kernel_init(in_axis: Any = -2, out_axis: Any = -1, batch_axis: Any = ()) -> VarianceScaling:
  """Dense kernels: variance scaling on fan-in (the `in_axis` dims) with a truncated normal, as in T5X;
  `batch_axis` dims (an expert axis) hold independent kernels."""
  return VarianceScaling(1.0, "fan_in", "truncated_normal", _axes(in_axis), _axes(out_axis), 1.0, _axes(batch_axis))


# T5 keeps the full N(0, 1) embedding init; RMSNorm makes the scale harmless.
embedding_init = Normal(1.0)
relpos_init = VarianceScaling(1.0, "fan_avg", "uniform")
ones_init = Constant(1.0)
zeros_init = Constant(0.0)


# --------------------------------------------------------------------------
# Creating parameters inside modules
# --------------------------------------------------------------------------

_recording: Optional[dict] = None


def param(module: nn.Module, name: str, init: Callable, shape: Sequence[int], axes: Sequence[str]) -> Array:
  """Float32 parameter `name` of `module`, annotated with logical axis names.

  `init` is one of this module's initialisers (hashable: `init_params` caches
  one compiled program per initialiser and shape). While `record_initializers`
  is active the parameter's path, initialiser and shape are noted.
  """
  if len(axes) != len(shape):
    raise ValueError(f"parameter {name!r}: {len(shape)} dims {tuple(shape)} but {len(axes)} axis names {axes}")
  if _recording is not None:
    _recording[tuple(module.path) + (name,)] = (init, tuple(int(n) for n in shape))
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), jnp.float32)


@contextlib.contextmanager
def record_initializers():
  """Within the block, `param` notes {path: (initialiser, shape)} in the yielded dict."""
  global _recording
  previous, _recording = _recording, {}
  try:
    yield _recording
  finally:
    _recording = previous


def dense(x: Array, kernel: Array, in_dims: int = 1) -> Array:
  """x [..., *kernel.shape[:in_dims]] @ kernel -> [..., *kernel.shape[in_dims:]].

  One 2-D matmul: the leading dims of `x` and the kernel's input and output
  dims each flattened (free reshapes of contiguous dims).
  """
  in_shape, out_shape = kernel.shape[:in_dims], kernel.shape[in_dims:]
  lead = x.shape[: x.ndim - in_dims]
  k_in, k_out = math.prod(in_shape), math.prod(out_shape)
  y = jnp.dot(x.reshape((-1, k_in)), kernel.reshape((k_in, k_out)))
  return y.reshape(lead + tuple(out_shape))


# --------------------------------------------------------------------------
# Trees of parameters
# --------------------------------------------------------------------------


def count_params(tree: PyTree) -> int:
  """Number of scalars in a (boxed or unboxed, concrete or abstract) pytree."""
  leaves = jax.tree.leaves(meta.unbox(tree))
  return int(sum(math.prod(x.shape) for x in leaves))


def logical_axes_tree(abstract_variables: PyTree) -> PyTree:
  """Logical axis names of each parameter, as a tree of tuples of strings.

  `abstract_variables` is the boxed output of `module.init` (or of
  `jax.eval_shape(module.init, ...)`). The result has the structure of
  `flax.core.meta.unbox(abstract_variables)`, with each array replaced by a
  tuple of names (one per dimension; None for unannotated variables).
  Because tuples are pytree nodes, combine it with the params by passing
  the params first: `jax.tree.map(lambda p, names: ..., params, axes)` hands
  each whole tuple to the function.
  """

  def names(x):
    if isinstance(x, meta.Partitioned):
      return tuple(x.names)
    return (None,) * len(getattr(x, "shape", ()))

  return jax.tree.map(names, abstract_variables, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def strip_boxes(tree: PyTree) -> PyTree:
  """The values inside flax's axis-metadata boxes, without the sharding constraint
  that `flax.core.meta.unbox` applies under a mesh (which abstract values cannot take)."""
  return jax.tree.map(
    lambda x: x.value if isinstance(x, meta.AxisMetadata) else x,
    tree,
    is_leaf=lambda x: isinstance(x, meta.AxisMetadata),
  )


def _path_key(path: tuple) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _salt(names: Sequence[str]) -> np.uint32:
  return np.uint32(zlib.crc32("/".join(names).encode("utf-8")))


_compiled: dict = {}  # (program, key type) -> compiled program, for the life of the process


@functools.lru_cache(maxsize=None)
def _program(init: Callable, shape: tuple[int, ...], stacked: int, sharding: Any):
  """jit(key, salt(s) -> init(fold_in(key, salt), shape)), vmapped over `stacked` salts when > 0."""

  def one(key, salt):
    return init(jax.random.fold_in(key, salt), shape, jnp.float32)

  fn = jax.vmap(one, in_axes=(None, 0)) if stacked else one
  return jax.jit(fn, out_shardings=sharding)


def _compiled_for(rng: Array, programs: list) -> list:
  """The compiled `programs` [(init, shape, stacked, sharding)] for `rng`'s key type,
  compiling those not compiled yet several at a time (XLA compiles without holding
  the GIL)."""
  key_type = (str(rng.dtype), tuple(rng.shape))  # typed and raw uint32 keys compile apart
  todo = [p for p in dict.fromkeys(programs) if (p, key_type) not in _compiled]

  def build(p):
    salt = np.zeros((p[2],), np.uint32) if p[2] else np.uint32(0)
    return p, _program(*p).lower(rng, salt).compile()

  if todo:
    with concurrent.futures.ThreadPoolExecutor(min(len(todo), os.cpu_count() or 1, 16)) as pool:
      for p, compiled in pool.map(build, todo):
        _compiled[p, key_type] = compiled
  return [_compiled[p, key_type] for p in programs]


def _unscanned_names(names: tuple[str, ...], i: int, block: int) -> tuple[str, ...]:
  """The path of layer i of a scanned stack as the unscanned stack names it ('layers' -> 'layers_i';
  'layers/sublayer_j' of a stack of k-layer blocks -> 'layers_{i * k + j}')."""
  out: list[str] = []
  for c in names:
    if c.startswith("sublayer_") and out and out[-1] == f"layers_{i}":
      out[-1] = f"layers_{i * block + int(c[len('sublayer_') :])}"
    else:
      out.append(f"layers_{i}" if c == "layers" else c)
  return tuple(out)


def init_params(rng: Array, abstract_params: PyTree, initializers: dict, shardings: Optional[PyTree] = None) -> PyTree:
  """Creates parameters from shapes: the tree of `abstract_params` (unboxed
  ShapeDtypeStructs, e.g. meta.unbox of `jax.eval_shape(module.init, ...)['params']`),
  float32 arrays drawn by the initialisers noted by `record_initializers`
  during that trace (`initializers`: path tuple -> (initialiser, shape)).

  `rng`: a jax PRNG key (the run's seed). Parameter p is drawn with
  fold_in(rng, crc32(p's path joined by '/')); a scanned stack's leading
  'layers' axis of size n draws layer i with the path of unscanned layer i
  ('layers' -> 'layers_i'; a stack of k-layer blocks: 'layers/sublayer_j'
  -> 'layers_{i * k + j}'). `shardings`: a matching tree of jax Shardings,
  or None (default device). Deterministic for a key, whatever the sharding.
  One program per distinct (initialiser, shape, sharding) is compiled (in
  parallel threads), and kept for the life of the process. Under a trace
  (jit, eval_shape) the same programs are traced instead.

  Raises KeyError when a parameter was not created through `param` (no
  initialiser is known for it), ValueError when a recorded shape does not
  match the abstract one.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
  # A scanned stack of LayerBlocks (a mixture of experts every k layers): 'layers/sublayer_j' of
  # block i is unscanned layer i * k + j.
  block = 1 + max(
    (int(c[len("sublayer_") :]) for names in initializers for c in names if c.startswith("sublayer_")), default=0
  )
  if shardings is None:
    shard_leaves = [None] * len(leaves)
  else:  # one entry per parameter; None entries mean the default placement
    shard_leaves = treedef.flatten_up_to(shardings)
  calls = []
  for (path, leaf), sharding in zip(leaves, shard_leaves, strict=True):
    names = _path_key(path)
    if names not in initializers:
      raise KeyError(
        f"parameter {'/'.join(names)} has no recorded initialiser; create it with t5lite.models.params.param"
      )
    init, shape = initializers[names]
    shape = tuple(shape)
    if tuple(leaf.shape) == shape:
      calls.append(((init, shape, 0, sharding), _salt(names)))
    elif tuple(leaf.shape[1:]) == shape:
      n = leaf.shape[0]
      layer_names = [_unscanned_names(names, i, block) for i in range(n)]
      if layer_names[0] == names:  # no 'layers' component: fold the layer index in
        layer_names = [names + (str(i),) for i in range(n)]
      calls.append(((init, shape, n, sharding), np.array([_salt(ln) for ln in layer_names], np.uint32)))
    else:
      raise ValueError(
        f"parameter {'/'.join(names)}: abstract shape {tuple(leaf.shape)} does not match the recorded shape {shape}"
      )
  if isinstance(rng, _Tracer):  # called under a trace (jit, eval_shape): stay traceable
    out = [_program(*p)(rng, salt) for p, salt in calls]
  else:
    compiled = _compiled_for(rng, [p for p, _ in calls])
    out = [program(rng, salt) for program, (_, salt) in zip(compiled, calls)]
  return jax.tree_util.tree_unflatten(treedef, out)

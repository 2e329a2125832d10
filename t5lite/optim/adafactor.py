"""Adafactor with T5's defaults, as an optax GradientTransformation that keeps
statistics, update clipping and parameter scaling per layer of a scanned stack.

Dims named 'layers' or 'expert' (or in `batch_axis_names`) are batch dims,
never factored or averaged over, so a scanned model takes the same steps as
the unrolled one and each expert of a mixture of experts has its own
factored statistics, update clipping and parameter scale (as T5X's
Adafactor with its expert axis).
From optax: `chain`, `scale_by_learning_rate`, `ema` (momentum),
`add_decayed_weights`, `scale`. Ours: the factoring rule `factored_dims` (T5X's
for attention kernels), the second-moment estimator
`scale_by_factored_rms_with_axes`, the per-slice `clip_by_block_rms_with_axes`
and `scale_by_param_block_rms_with_axes`, and `factored_rms_state_axes`, the
rule that names `FactoredRmsState`'s statistics for `t5lite.optim.state_axes`
(registered at import).

Logical axes: a pytree with the structure of the params whose leaves are tuples
of axis names (str or None), one per dim, e.g. ('layers', 'embed', 'mlp'). A
leaf may be None ("unknown"), which falls back to the largest-two-dims rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from t5lite import checks
from t5lite.kernels import backend, xla_cpu
from t5lite.optim import settings, state_axes

LAYERS_AXIS = "layers"
EXPERT_AXIS = "expert"

PyTree = Any
AxisNames = state_axes.AxisNames
ScalarOrSchedule = Union[float, optax.Schedule]


# ---------------------------------------------------------------------------
# Logical-axes helpers.
# ---------------------------------------------------------------------------


def _batch_names(batch_axis_names: Sequence[str]) -> frozenset[str]:
  if isinstance(batch_axis_names, str):
    raise TypeError("batch_axis_names must be a sequence of names, not a single string.")
  return frozenset((LAYERS_AXIS, EXPERT_AXIS, *batch_axis_names))


def batch_dims(axes: Optional[AxisNames], batch_axis_names: Sequence[str] = ()) -> tuple[int, ...]:
  """Indices of the dims that are batch dims ('layers', 'expert' or a name in `batch_axis_names`)."""
  if axes is None:
    return ()
  names = _batch_names(batch_axis_names)
  return tuple(i for i, a in enumerate(axes) if a in names)


# Dims named like this form the rows of a factored second moment when a
# parameter has more than two dims to factor (T5X's standard factor rules: the
# model dim is ROW, heads/kv/mlp/vocab dims are COLUMN).
ROW_AXIS = "embed"

Plan = tuple[tuple[int, ...], tuple[int, ...]]


def factored_dims(
  shape: Sequence[int],
  axes: Optional[AxisNames] = None,
  *,
  min_dim_size_to_factor: int = 128,
  batch_axis_names: Sequence[str] = (),
) -> Optional[Plan]:
  """Chooses the dims to factor the second moment over, or None.

  Returns `(row_dims, col_dims)`, two disjoint tuples of dims.  The row
  statistics average g^2 over `col_dims` (so they keep the row dims), the
  column statistics average over `row_dims`.  Batch dims (see `batch_dims`)
  are in neither and are never averaged over.

  * Two dims left after the batch dims (the usual kernels): the two largest
    dims, one each (ties: the later dim counts as larger), row the smaller,
    e.g. (512, 1024) -> ((0,), (1,)): row stats (512,), col stats (1024,).
    Nothing is factored if the smaller is below `min_dim_size_to_factor`.
  * More than two (attention kernels [embed, heads, kv] / [heads, kv, embed])
    with logical axes that name an 'embed' dim: as T5X's standard factor
    rules, the 'embed' dims are the rows and all other non-batch dims the
    columns, e.g. (512, 6, 64) -> ((0,), (1, 2)): row stats (512,), col stats
    (6, 64). Factored when rows and columns each hold at least
    `min_dim_size_to_factor` elements.  Without an 'embed' name: the two
    largest dims, as above.
  """
  shape = tuple(int(s) for s in shape)
  skip = set(batch_dims(axes, batch_axis_names))
  candidates = [d for d in range(len(shape)) if d not in skip]
  if len(candidates) < 2:
    return None
  if len(candidates) > 2 and axes is not None:
    rows = tuple(d for d in candidates if axes[d] == ROW_AXIS)
    cols = tuple(d for d in candidates if axes[d] != ROW_AXIS)
    if rows and cols:
      if min(math.prod(shape[d] for d in rows), math.prod(shape[d] for d in cols)) < min_dim_size_to_factor:
        return None
      return rows, cols
  ordered = sorted(candidates, key=lambda d: (shape[d], d))
  row_dim, col_dim = ordered[-2], ordered[-1]
  if shape[row_dim] < min_dim_size_to_factor:
    return None
  return (row_dim,), (col_dim,)


def _drop(seq: Sequence[Any], dims: Sequence[int]) -> tuple[Any, ...]:
  return tuple(x for i, x in enumerate(seq) if i not in dims)


def _mean(x: jax.Array, axes: Sequence[int]) -> jax.Array:
  """jnp.mean(x, axes); on the CPU backend `t5lite.kernels.xla_cpu.mean` (a contraction,
  equal up to float rounding)."""
  if backend.cpu_kernels():
    return xla_cpu.mean(x, axes)
  return jnp.mean(x, axis=tuple(axes))


def _stats_dtype(dtype: Any) -> Any:
  # Statistics are kept in at least float32, as in T5X, even for bf16 params.
  return jnp.promote_types(dtype, jnp.float32)


# ---------------------------------------------------------------------------
# The factored second-moment estimator (ours).
# ---------------------------------------------------------------------------


class FactoredRmsState(NamedTuple):
  """State of `scale_by_factored_rms_with_axes`.

  `v_row`, `v_col` and `v` each have the structure of the params.  For a
  factored param `v_row`/`v_col` hold the row/column statistics (the param's
  shape without its col dims / without its row dims) and `v` a scalar placeholder; for
  an unfactored param `v` holds the full second moment and `v_row`/`v_col` are
  scalar placeholders.  Placeholders keep the structure fixed and have no dims,
  so every leaf's dims are a subset of its parameter's dims.
  """

  count: jax.Array
  v_row: PyTree
  v_col: PyTree
  v: PyTree


def _plans(tree: PyTree, logical_axes: Optional[PyTree], min_dim_size_to_factor: int, batch_axis_names: Sequence[str]):
  leaves = jax.tree.leaves(tree)
  axes = state_axes.axes_per_leaf(tree, logical_axes)
  return [
    factored_dims(leaf.shape, ax, min_dim_size_to_factor=min_dim_size_to_factor, batch_axis_names=batch_axis_names)
    for leaf, ax in zip(leaves, axes)
  ]


def scale_by_factored_rms_with_axes(
  *,
  decay_rate: float = 0.8,
  epsilon: float = 1e-30,
  min_dim_size_to_factor: int = 128,
  logical_axes: Optional[PyTree] = None,
  batch_axis_names: Sequence[str] = (),
  decay_offset: int = 0,
) -> optax.GradientTransformation:
  """Divides each update by a (possibly factored) running RMS of the gradient.

  Per parameter with gradient g at step t (t = count - decay_offset + 1):
    beta2_t = 1 - t^(-decay_rate)            (0 at the first step)
    unfactored: v = beta2_t v + (1-beta2_t)(g^2 + epsilon);  u = g / sqrt(v)
    factored over (row_dims, col_dims) (see `factored_dims`):
      r = beta2_t r + (1-beta2_t) mean_{col_dims}(g^2 + epsilon)
      c = beta2_t c + (1-beta2_t) mean_{row_dims}(g^2 + epsilon)
      v_hat = r c / mean_{row_dims}(r)       (outer product over the two sets)
      u = g / sqrt(v_hat)
  Batch dims ('layers', `batch_axis_names`) are carried through every
  reduction, so each layer of a stacked parameter has its own statistics.
  `logical_axes` is the per-parameter axis-names tree (see module docstring);
  without it, the two largest dims are factored.

  Raises ValueError for decay_rate outside (0, 1], epsilon < 0 (or not
  finite), min_dim_size_to_factor < 1 or decay_offset < 0.
  """
  decay_rate = checks.check_float("decay_rate", decay_rate, minimum=0.0, maximum=1.0, min_open=True)
  epsilon = checks.check_float("epsilon", epsilon, minimum=0.0)
  min_dim_size_to_factor = checks.check_int("min_dim_size_to_factor", min_dim_size_to_factor, minimum=1)
  decay_offset = checks.check_int("decay_offset", decay_offset, minimum=0)

  def init_fn(params: PyTree) -> FactoredRmsState:
    leaves, treedef = jax.tree.flatten(params)
    plans = _plans(params, logical_axes, min_dim_size_to_factor, batch_axis_names)
    rows, cols, fulls = [], [], []
    for p, plan in zip(leaves, plans):
      dtype = _stats_dtype(p.dtype)
      scalar = jnp.zeros((), dtype)
      if plan is None:
        rows.append(scalar)
        cols.append(scalar)
        fulls.append(jnp.zeros(p.shape, dtype))
      else:
        row_dims, col_dims = plan
        rows.append(jnp.zeros(_drop(p.shape, col_dims), dtype))
        cols.append(jnp.zeros(_drop(p.shape, row_dims), dtype))
        fulls.append(scalar)
    return FactoredRmsState(
      count=jnp.zeros((), jnp.int32),
      v_row=treedef.unflatten(rows),
      v_col=treedef.unflatten(cols),
      v=treedef.unflatten(fulls),
    )

  def update_fn(updates: PyTree, state: FactoredRmsState, params: Optional[PyTree] = None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    plans = _plans(updates, logical_axes, min_dim_size_to_factor, batch_axis_names)
    rows = treedef.flatten_up_to(state.v_row)
    cols = treedef.flatten_up_to(state.v_col)
    fulls = treedef.flatten_up_to(state.v)

    t = jnp.maximum(state.count - decay_offset, 0).astype(jnp.float32) + 1.0
    beta2 = 1.0 - t ** (-decay_rate)

    new_u, new_r, new_c, new_v = [], [], [], []
    for g, r, c, v, plan in zip(leaves, rows, cols, fulls, plans):
      dtype = _stats_dtype(g.dtype)
      g = g.astype(dtype)
      g2 = g * g + epsilon
      if plan is None:
        v = beta2 * v + (1.0 - beta2) * g2
        u = g * jax.lax.rsqrt(v)
      else:
        row_dims, col_dims = plan
        r = beta2 * r + (1.0 - beta2) * _mean(g2, col_dims)
        c = beta2 * c + (1.0 - beta2) * _mean(g2, row_dims)
        # Positions of the row dims inside r (r lacks the col dims).
        rows_in_r = tuple(d - sum(c_ < d for c_ in col_dims) for d in row_dims)
        r_norm = r / jnp.mean(r, axis=rows_in_r, keepdims=True)
        u = g * jnp.expand_dims(jax.lax.rsqrt(r_norm), col_dims) * jnp.expand_dims(jax.lax.rsqrt(c), row_dims)
      new_u.append(u)
      new_r.append(r)
      new_c.append(c)
      new_v.append(v)

    new_state = FactoredRmsState(
      count=optax.safe_increment(state.count),
      v_row=treedef.unflatten(new_r),
      v_col=treedef.unflatten(new_c),
      v=treedef.unflatten(new_v),
    )
    return treedef.unflatten(new_u), new_state

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Per-slice (per-layer) clipping and parameter scaling (ours; optax's versions
# treat the whole stacked array as one block).
# ---------------------------------------------------------------------------


def _slice_rms(x: jax.Array, skip: tuple[int, ...]) -> jax.Array:
  """RMS over all dims except `skip`, kept as size-1 dims for broadcasting."""
  reduce = tuple(d for d in range(x.ndim) if d not in skip)
  x = x.astype(_stats_dtype(x.dtype))
  return jnp.sqrt(jnp.mean(x * x, axis=reduce, keepdims=True))


def clip_by_block_rms_with_axes(
  threshold: float,
  *,
  logical_axes: Optional[PyTree] = None,
  batch_axis_names: Sequence[str] = (),
) -> optax.GradientTransformation:
  """u / max(1, rms(u) / threshold), with the RMS taken per batch slice (per layer).

  Identical to `optax.clip_by_block_rms` for parameters without batch dims.
  """

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    axes = state_axes.axes_per_leaf(updates, logical_axes)
    out = []
    for u, ax in zip(leaves, axes):
      denom = jnp.maximum(1.0, _slice_rms(u, batch_dims(ax, batch_axis_names)) / threshold)
      out.append(u / denom)
    return treedef.unflatten(out), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def scale_by_param_block_rms_with_axes(
  min_scale: float = 1e-3,
  *,
  logical_axes: Optional[PyTree] = None,
  batch_axis_names: Sequence[str] = (),
) -> optax.GradientTransformation:
  """u * max(min_scale, rms(param)), with the RMS taken per batch slice (per layer).

  Identical to `optax.scale_by_param_block_rms` for parameters without batch dims.
  """

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_param_block_rms_with_axes needs params in update().")
    leaves, treedef = jax.tree.flatten(updates)
    p_leaves = treedef.flatten_up_to(params)
    axes = state_axes.axes_per_leaf(updates, logical_axes)
    out = []
    for u, p, ax in zip(leaves, p_leaves, axes):
      scale = jnp.maximum(_slice_rms(p, batch_dims(ax, batch_axis_names)), min_scale)
      out.append(u * scale)
    return treedef.unflatten(out), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# The optimizer.
# ---------------------------------------------------------------------------


def adafactor(
  learning_rate: ScalarOrSchedule,
  *,
  decay_rate: float = 0.8,
  clipping_threshold: Optional[float] = 1.0,
  multiply_by_parameter_scale: bool = True,
  epsilon1: float = 1e-30,
  epsilon2: float = 1e-3,
  min_dim_size_to_factor: int = 128,
  momentum: Optional[float] = None,
  weight_decay_rate: Optional[ScalarOrSchedule] = None,
  logical_axes: Optional[PyTree] = None,
  batch_axis_names: Sequence[str] = (),
  decay_offset: int = 0,
) -> optax.GradientTransformation:
  """Adafactor with T5's defaults.

  For each parameter p with gradient g (all per batch slice when p has a
  'layers' / batch dim):
    y = g / sqrt(v_hat)                                  (factored or full v)
    y = y / max(1, rms(y) / clipping_threshold)          (if clipping_threshold)
    s = lr(step) * y * max(epsilon2, rms(p))              (param scale if enabled)
    s = momentum * m + (1 - momentum) * s                 (if momentum; m <- s)
    p <- p - s - weight_decay_rate * p                    (decay is not scaled by lr)

  Args:
    learning_rate: a float or a schedule (step -> lr).
    decay_rate: exponent of the second-moment decay beta2_t = 1 - t^(-decay_rate).
    clipping_threshold: update clipping threshold (None disables clipping).
    multiply_by_parameter_scale: scale the step by max(epsilon2, rms(param)).
    epsilon1: added to g^2.
    epsilon2: floor on the parameter scale.
    min_dim_size_to_factor: factor only if both chosen dims are at least this size.
    momentum: optional first-moment decay (no bias correction), None = no momentum.
    weight_decay_rate: optional decoupled weight decay (float or schedule).
    logical_axes: optional per-parameter axis-names tree; dims named 'layers' or
      in `batch_axis_names` are never factored and get their own statistics,
      clipping and parameter scale.
    batch_axis_names: extra axis names treated like 'layers'.
    decay_offset: step at which the beta2 schedule restarts (for fine-tuning).

  Returns:
    An optax GradientTransformation; `update` needs `params`.

  Raises:
    ValueError (checks.SettingError): a setting of the wrong type or range:
      learning_rate not > 0, decay_rate outside (0, 1], clipping_threshold
      not > 0 (or None), epsilons < 0, NaN or infinite, momentum outside
      [0, 1), weight_decay_rate < 0, min_dim_size_to_factor < 1.
  """
  name = "adafactor.adafactor."  # errors name the gin binding
  learning_rate = settings.check_learning_rate(name + "learning_rate", learning_rate)
  decay_rate = checks.check_float(name + "decay_rate", decay_rate, minimum=0.0, maximum=1.0, min_open=True)
  clipping_threshold = settings.check_clipping(name + "clipping_threshold", clipping_threshold)
  epsilon1 = checks.check_float(name + "epsilon1", epsilon1, minimum=0.0)
  epsilon2 = checks.check_float(name + "epsilon2", epsilon2, minimum=0.0)
  min_dim_size_to_factor = checks.check_int(name + "min_dim_size_to_factor", min_dim_size_to_factor, minimum=1)
  momentum = checks.check_float(
    name + "momentum", momentum, minimum=0.0, maximum=1.0, max_open=True, allow_none=True, hint=" (None: no momentum)"
  )
  if weight_decay_rate is not None:
    weight_decay_rate = checks.check_rate(name + "weight_decay_rate", weight_decay_rate, min_open=False)
  decay_offset = checks.check_int(name + "decay_offset", decay_offset, minimum=0)
  _batch_names(batch_axis_names)  # rejects a bare string
  batch_axis_names = tuple(batch_axis_names)

  parts = [
    scale_by_factored_rms_with_axes(
      decay_rate=decay_rate,
      epsilon=epsilon1,
      min_dim_size_to_factor=min_dim_size_to_factor,
      logical_axes=logical_axes,
      batch_axis_names=batch_axis_names,
      decay_offset=decay_offset,
    )
  ]
  # The per-slice clipping and parameter scaling are used for every parameter:
  # without batch dims they compute what optax.clip_by_block_rms /
  # optax.scale_by_param_block_rms compute, but optax's parameter RMS
  # (numerics.safe_root_mean_squares) adds a full-size select per parameter,
  # one more pass over all weights per step (docs/performance.md).
  if clipping_threshold is not None:
    parts.append(
      clip_by_block_rms_with_axes(clipping_threshold, logical_axes=logical_axes, batch_axis_names=batch_axis_names)
    )
  parts.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
  if multiply_by_parameter_scale:
    parts.append(
      scale_by_param_block_rms_with_axes(epsilon2, logical_axes=logical_axes, batch_axis_names=batch_axis_names)
    )
  if momentum is not None:
    parts.append(optax.ema(momentum, debias=False, accumulator_dtype=jnp.float32))
  if weight_decay_rate is not None:
    parts.append(optax.add_decayed_weights(weight_decay_rate))
  parts.append(optax.scale(-1.0))
  return optax.chain(*parts)


# ---------------------------------------------------------------------------
# Logical axes of the optimizer state (for the partitioner).
# ---------------------------------------------------------------------------


def factored_rms_state_axes(
  node: FactoredRmsState,
  params: state_axes.ParamAxes,
  *,
  min_dim_size_to_factor: int = 128,
  batch_axis_names: Sequence[str] = (),
) -> FactoredRmsState:
  """Axis names of a `FactoredRmsState`'s leaves: the `state_axes` rule for Adafactor.

  count -> (); for a factored parameter with names A and dims (row_dims,
  col_dims): v_row -> A without col_dims, v_col -> A without row_dims, v -> ();
  for an unfactored one: v -> A, v_row/v_col -> ().

  Args:
    node: the state (arrays or ShapeDtypeStructs).
    params: the parameters it was built for, with their names.
    min_dim_size_to_factor, batch_axis_names: the values given to `adafactor`
      (they decide which dims were factored).

  Raises:
    ValueError: a leaf whose shape is not what these settings give (another
      min_dim_size_to_factor, batch_axis_names or logical axes built the state).
  """

  def check(leaf: Any, axes: AxisNames, shape: tuple[int, ...], what: str) -> AxisNames:
    if tuple(leaf.shape) != tuple(shape):
      raise ValueError(
        f"Optimizer state leaf {what} has shape {tuple(leaf.shape)}, expected {tuple(shape)}; "
        "were the same min_dim_size_to_factor / batch_axis_names / logical axes used to "
        "build the optimizer?"
      )
    return axes

  p_def = params.treedef
  rows = p_def.flatten_up_to(node.v_row)
  cols = p_def.flatten_up_to(node.v_col)
  fulls = p_def.flatten_up_to(node.v)
  r_ax, c_ax, v_ax = [], [], []
  for p, ax, r, c, v in zip(params.leaves, params.axes, rows, cols, fulls):
    shape = tuple(p.shape)
    plan = factored_dims(shape, ax, min_dim_size_to_factor=min_dim_size_to_factor, batch_axis_names=batch_axis_names)
    if plan is None:
      r_ax.append(check(r, (), (), "v_row"))
      c_ax.append(check(c, (), (), "v_col"))
      v_ax.append(check(v, ax, shape, "v"))
    else:
      row_dims, col_dims = plan
      r_ax.append(check(r, _drop(ax, col_dims), _drop(shape, col_dims), "v_row"))
      c_ax.append(check(c, _drop(ax, row_dims), _drop(shape, row_dims), "v_col"))
      v_ax.append(check(v, (), (), "v"))
  return FactoredRmsState(count=(), v_row=p_def.unflatten(r_ax), v_col=p_def.unflatten(c_ax), v=p_def.unflatten(v_ax))


state_axes.register_state_axes(FactoredRmsState, factored_rms_state_axes)


def adafactor_state_logical_axes(
  opt_state: PyTree,
  params: PyTree,
  param_logical_axes: Optional[PyTree],
  *,
  min_dim_size_to_factor: int = 128,
  batch_axis_names: Sequence[str] = (),
) -> PyTree:
  """`state_axes.opt_state_logical_axes` for a state of an `adafactor` built
  with these factoring settings (the registered rule assumes the defaults).

  Returns a tree with the structure of `opt_state` whose array leaves are
  tuples of axis names, one per dim; raises ValueError as that function does."""
  rule = functools.partial(
    factored_rms_state_axes, min_dim_size_to_factor=min_dim_size_to_factor, batch_axis_names=batch_axis_names
  )
  return state_axes.opt_state_logical_axes(opt_state, params, param_logical_axes, rules={FactoredRmsState: rule})

"""Logical axis names for the leaves of any optax state, so that the partitioner
shards the optimizer state like the parameters.

`opt_state_logical_axes` gives every leaf of a state its names: a subtree shaped
like the parameters (AdamW's mu/nu, a momentum buffer) takes each parameter's
names, counters and other leaves get unnamed dims. An optimizer whose state
holds statistics of other shapes (Adafactor's factored rows and columns)
registers a rule for its state type with `register_state_axes`, in its own
module; nothing here knows any optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax

PyTree = Any
AxisNames = tuple[Optional[str], ...]


def is_axes_leaf(x: Any) -> bool:
  """True for one parameter's axis names: None, a tuple/list of str|None, or a PartitionSpec."""
  if x is None:
    return True
  if isinstance(x, jax.sharding.PartitionSpec):
    return True
  return isinstance(x, (tuple, list)) and all(isinstance(a, str) or a is None for a in x)


def _normalize_axes(x: Any) -> Optional[AxisNames]:
  if x is None:
    return None
  names = tuple(x)
  for a in names:
    if not (isinstance(a, str) or a is None):
      raise ValueError(f"Logical axis names must be str or None, got {a!r} in {x!r}.")
  return names


def axes_per_leaf(tree: PyTree, logical_axes: Optional[PyTree]) -> list[Optional[AxisNames]]:
  """The logical axis names of each leaf of `tree` (None where unknown), in leaf order.

  Args:
    tree: parameters (arrays or `jax.ShapeDtypeStruct`s), or anything shaped like them.
    logical_axes: a tree with the structure of `tree` down to its leaves, holding
      one tuple of names (str or None, one per dim) or None per leaf; None for
      the whole tree means every leaf is unknown.

  Raises:
    ValueError: another tree structure, a leaf that is not a tuple of names, or
      a tuple whose length is not the leaf's rank (naming the parameter).
  """
  leaves, treedef = jax.tree.flatten(tree)
  if logical_axes is None:
    return [None] * len(leaves)
  try:
    axes_leaves = treedef.flatten_up_to(logical_axes)
  except (ValueError, TypeError) as e:
    raise ValueError(
      "logical_axes must have the same tree structure as the parameters, with one "
      f"tuple of axis names per parameter. Parameter structure: {treedef}."
    ) from e
  out = []
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  for path, leaf, ax in zip(paths, leaves, axes_leaves):
    if not is_axes_leaf(ax):
      raise ValueError(f"Logical axes for parameter {path} must be a tuple of str/None, got {ax!r}.")
    ax = _normalize_axes(ax)
    if ax is not None and len(ax) != len(leaf.shape):
      raise ValueError(
        f"Logical axes {ax} for parameter {path} have {len(ax)} names but the parameter has shape {tuple(leaf.shape)}."
      )
    out.append(ax)
  return out


def unknown_axes(leaf: Any) -> AxisNames:
  """All-None names (replicated) for a leaf of any rank."""
  return (None,) * len(leaf.shape)


@dataclasses.dataclass(frozen=True)
class ParamAxes:
  """The parameters a state was built for, flattened: what a state-type rule reads.

  `leaves` are the parameters (arrays or ShapeDtypeStructs) in `treedef` order,
  `axes` their names, one tuple per leaf with one name per dim (unknown dims None).
  """

  treedef: Any
  leaves: list[Any]
  axes: list[AxisNames]

  @classmethod
  def of(cls, params: PyTree, param_logical_axes: Optional[PyTree]) -> "ParamAxes":
    leaves, treedef = jax.tree.flatten(params)
    axes = axes_per_leaf(params, param_logical_axes)
    return cls(treedef, leaves, [ax if ax is not None else unknown_axes(p) for p, ax in zip(leaves, axes)])


# A rule gets one state node of its registered type and the parameters; it
# returns a node of the same type whose array leaves are replaced by axis names.
StateAxesRule = Callable[[Any, ParamAxes], PyTree]
_RULES: dict[type, StateAxesRule] = {}


def register_state_axes(state_type: type, rule: StateAxesRule) -> None:
  """Names the leaves of every `state_type` node (and its subclasses) with `rule`.

  Called by the module that defines the state type, at import, so that the
  rule exists wherever a state of that type can."""
  _RULES[state_type] = rule


def opt_state_logical_axes(
  opt_state: PyTree,
  params: PyTree,
  param_logical_axes: Optional[PyTree],
  *,
  rules: Optional[Mapping[type, StateAxesRule]] = None,
) -> PyTree:
  """Names the dims of every leaf of an optimizer state built from `params`.

  Args:
    opt_state: the state, or its shapes from `jax.eval_shape(tx.init, params)`.
    params: the params (arrays or `jax.ShapeDtypeStruct`s) the state was built for.
    param_logical_axes: per-parameter axis-names tree (leaves may be None).
    rules: state type -> rule, used before the registered ones (a rule built
      with other optimizer settings than the registered default).

  Returns:
    A tree with the structure of `opt_state` in which every array leaf is
    replaced by a tuple of axis names of length `leaf.ndim` (None: unnamed,
    replicated). Walk it together with the state via
    `jax.tree.map(fn, opt_state, axes)` (the state's leaves are a prefix).

  Rules, first match:
    * a node of a registered type: that type's rule;
    * a subtree with the structure of the params (a momentum buffer, AdamW's
      mu/nu): each leaf with its parameter's shape gets the parameter's names,
      any other leaf unnamed dims;
    * any other leaf (step counters, ...): unnamed dims.

  Raises:
    ValueError: from `axes_per_leaf` for bad names, or from a rule whose state
      does not match the parameters (e.g. other optimizer settings).
  """
  p = ParamAxes.of(params, param_logical_axes)
  table = tuple({**_RULES, **dict(rules or {})}.items())

  def rule_for(node: Any) -> Optional[StateAxesRule]:
    return next((rule for state_type, rule in table if isinstance(node, state_type)), None)

  def mirrors_params(node: Any) -> bool:
    return p.treedef.num_leaves > 0 and jax.tree.structure(node) == p.treedef

  def mirrored_axes(node: Any) -> PyTree:
    leaves = p.treedef.flatten_up_to(node)
    out = [
      ax if tuple(s.shape) == tuple(leaf.shape) else unknown_axes(s) for s, leaf, ax in zip(leaves, p.leaves, p.axes)
    ]
    return p.treedef.unflatten(out)

  def is_named_node(node: Any) -> bool:
    return rule_for(node) is not None or mirrors_params(node)

  def name(node: Any) -> PyTree:
    rule = rule_for(node)
    if rule is not None:
      return rule(node, p)
    if mirrors_params(node):
      return mirrored_axes(node)
    return unknown_axes(node)

  return jax.tree.map(name, opt_state, is_leaf=is_named_node)

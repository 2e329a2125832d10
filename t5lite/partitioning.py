"""Meshes and logical-axis rules: how parameters, optimizer state and batches are sharded.

Models annotate every parameter and large activation with logical axis names
('batch', 'embed', 'mlp', 'heads', 'kv', 'vocab', 'layers', ...). One table of
rules maps those names onto the mesh axes ('data', 'fsdp', 'model', 'expert').
The mesh sizes decide what the rules do: the default table shards the batch
over data and fsdp, parameters' 'embed' dimension over fsdp (ZeRO-3: params and
optimizer state sharded, gathered per layer by XLA), and heads, mlp and vocab
over model (Megatron-style tensor parallelism); an axis of size 1 is a no-op,
so (data 8) is plain data parallelism and (fsdp 8) is FSDP.

What is ours (jax and flax give meshes, NamedSharding and the rule lookup;
`mesh_shape` resolves the mesh sizes): named rule presets, dropping a rule
for a logical name whose sizes the mesh axes do not divide (e.g. 4 heads over
8 model devices: heads stay replicated, and model-info.txt says so). The train
state's shardings are `train_state`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from t5lite import checks, mesh_shape

PyTree = Any
MESH_AXES = ("data", "fsdp", "model", "expert")
# The batch is split over the expert axis too: outside the mixture-of-experts layers the expert
# devices are data parallel (as in GShard, T5X and MaxText), inside them each holds its experts.
BATCH_MESH_AXES = ("data", "fsdp", "expert")

Rules = Sequence[tuple[str, Union[None, str, tuple[str, ...]]]]

# Every preset names all logical axes, so nothing is sharded by accident.
_UNSHARDED = (
  ("length", None),
  ("kv", None),
  ("layers", None),
  ("relpos_buckets", None),
  ("abspos", None),
  ("lora_rank", None),
  ("prompt", None),
  ("token_types", None),
  ("classes", None),
  ("joined_kv", None),
  ("unmodeled", None),
)
# Mixture of experts: expert kernels [expert, ...] over the expert axis; the expert-major
# activations [expert, group, capacity, embed] keep their groups on the other batch axes,
# so that moving tokens between the two layouts is one all-to-all over the expert axis.
# Right after 'batch' in every preset: a rule earlier in the table takes its mesh axes first,
# and 'expert_group' must win 'fsdp' over an activation's 'embed'.
_EXPERT = (
  ("expert", "expert"),
  ("expert_group", ("data", "fsdp")),
)
RULE_PRESETS: dict[str, Rules] = {
  "data_parallel": (
    ("batch", BATCH_MESH_AXES),
    *_EXPERT,
    ("embed", None),
    ("mlp", None),
    ("heads", None),
    ("vocab", None),
    *_UNSHARDED,
  ),
  "fsdp": (
    ("batch", BATCH_MESH_AXES),
    *_EXPERT,
    ("embed", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("vocab", None),
    *_UNSHARDED,
  ),
  "tensor_parallel": (
    ("batch", BATCH_MESH_AXES),
    *_EXPERT,
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("vocab", "model"),
    *_UNSHARDED,
  ),
  # FSDP and tensor parallelism together; the default, since axes of size 1 do nothing.
  "fsdp_tensor_parallel": (
    ("batch", BATCH_MESH_AXES),
    *_EXPERT,
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("vocab", "model"),
    *_UNSHARDED,
  ),
}
DEFAULT_RULES = "fsdp_tensor_parallel"


def resolve_mesh_shape(
  data: int = -1, fsdp: int = 1, model: int = 1, num_devices: Optional[int] = None, expert: int = 1
) -> dict[str, int]:
  """Mesh axis sizes with at most one -1 ('all the devices left') filled in (`mesh_shape.plan_mesh`).

  `num_devices` defaults to `jax.device_count()` (every process's devices).

  Raises:
    ValueError: a size that is not -1 or an integer in [1, devices] (a bool,
      a float, 0, ...), two -1 sizes, or sizes that do not fit the devices.
  """
  return mesh_shape.plan_mesh(num_devices or jax.device_count(), data, fsdp, model, expert, where=None)


def create_mesh(
  data: int = -1,
  fsdp: int = 1,
  model: int = 1,
  devices: Optional[Sequence[jax.Device]] = None,
  expert: int = 1,
) -> Mesh:
  """A mesh over all processes' devices, ordered for the hardware by jax.make_mesh."""
  devices = list(devices) if devices is not None else jax.devices()
  sizes = resolve_mesh_shape(data, fsdp, model, len(devices), expert)
  shape = (sizes["data"], sizes["fsdp"], sizes["model"], sizes["expert"])
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == jax.devices():
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def get_rules(rules: Union[str, Rules, None]) -> tuple:
  """A rule table from a preset name or an explicit list of (logical, mesh axes)."""
  if rules is None:
    rules = DEFAULT_RULES
  if isinstance(rules, str):
    if rules not in RULE_PRESETS:
      raise ValueError(f"Unknown logical-axis rules preset {rules!r}; valid: {sorted(RULE_PRESETS)}.")
    return tuple(RULE_PRESETS[rules])
  if not isinstance(rules, (list, tuple)):
    raise ValueError(
      f"LOGICAL_AXIS_RULES={rules!r} must be a preset name ({sorted(RULE_PRESETS)}) or a list of "
      "(logical_name, mesh_axes) pairs."
    )
  out = []
  for entry in rules:
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], str):
      raise ValueError(f"A logical-axis rule must be (logical_name, mesh_axes); got {entry!r}.")
    axes = entry[1]
    for a in axes if isinstance(axes, (tuple, list)) else [axes]:
      if a is not None and a not in MESH_AXES:
        raise ValueError(f"Rule {entry!r} names mesh axis {a!r}; valid mesh axes: {MESH_AXES}.")
    out.append((entry[0], tuple(axes) if isinstance(axes, list) else axes))
  return tuple(out)


def _axes_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def logical_sizes(abstract_params: PyTree, logical_axes: PyTree) -> dict[str, set[int]]:
  """The dimension sizes each logical name takes across the parameters."""
  sizes: dict[str, set[int]] = {}
  for leaf, names in zip(jax.tree.leaves(abstract_params), axes_leaves(logical_axes)):
    for dim, name in zip(leaf.shape, names or ()):
      if name is not None:
        sizes.setdefault(name, set()).add(int(dim))
  return sizes


def axes_leaves(logical_axes: PyTree) -> list:
  """The leaves of a logical-axes tree: one tuple of names (str or None) per
  array, in `jax.tree.leaves` order of the matching parameter tree."""
  return jax.tree.leaves(
    logical_axes, is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(e, (str, type(None))) for e in x)
  )


def fit_rules(rules: Rules, mesh: Mesh, sizes: Mapping[str, Iterable[int]]) -> tuple[tuple, list[str]]:
  """Drops the mesh axes of a rule whose logical sizes they do not divide; returns notes."""
  fitted, notes = [], []
  for name, axes in rules:
    bad = [s for s in sizes.get(name, ()) if s % _axes_size(mesh, axes)]
    if axes is not None and bad:
      notes.append(
        f"'{name}' (sizes {sorted(set(sizes[name]))}) is not divisible by mesh axes {axes} "
        f"({_axes_size(mesh, axes)} devices): kept replicated."
      )
      axes = None
    fitted.append((name, axes))
  return tuple(fitted), notes


def logical_to_spec(names: Optional[Sequence[Optional[str]]], rules: Rules) -> P:
  """A PartitionSpec for one array; each mesh axis used at most once (first name wins)."""
  if not names:
    return P()
  return nn.logical_to_mesh_axes(tuple(names), rules)


def specs_for(logical_axes: PyTree, rules: Rules) -> PyTree:
  return jax.tree.map(
    lambda names: logical_to_spec(names, rules),
    logical_axes,
    is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(e, (str, type(None))) for e in x),
  )


@dataclasses.dataclass
class Partitioner:
  """Holds the mesh and the rules; turns logical names into shardings.

  Raises ValueError on construction for NUM_DEVICES other than None or an
  integer in [1, jax.device_count()], and for mesh sizes or rules that
  `resolve_mesh_shape` / `get_rules` refuse; from `fit_to`, for a model whose
  number of experts the expert axis does not divide."""

  data: int = -1
  fsdp: int = 1
  model: int = 1
  rules: Union[str, Rules, None] = None
  num_devices: Optional[int] = None  # the first N devices only (tests, benchmarks)
  expert: int = 1  # EXPERT_PARALLELISM: devices the experts are split over (and the batch, like data)

  def __post_init__(self):
    count = jax.device_count()
    self.num_devices = checks.check_int(
      "NUM_DEVICES",
      self.num_devices,
      minimum=1,
      maximum=count,
      allow_none=True,
      hint=f" (None: all {count} device{'s' if count != 1 else ''})",
    )
    devices = jax.devices()[: self.num_devices] if self.num_devices else None
    self.mesh = create_mesh(self.data, self.fsdp, self.model, devices, self.expert)
    self.base_rules = get_rules(self.rules)
    self.active_rules = self.base_rules
    self.notes: list[str] = []

  @property
  def batch_shards(self) -> int:
    return math.prod(self.mesh.shape[a] for a in BATCH_MESH_AXES)

  def fit_to(self, abstract_params: PyTree, logical_axes: PyTree) -> None:
    """Adapts the rules to a model's sizes (see `fit_rules`).

    Raises:
      ValueError: the experts of a mixture-of-experts model (its 'expert'
        dims) that the rules put on mesh axes whose size does not divide them.
    """
    sizes = logical_sizes(abstract_params, logical_axes)
    expert_axes = dict(self.base_rules).get("expert")
    devices = _axes_size(self.mesh, expert_axes)
    bad = sorted(s for s in sizes.get("expert", ()) if s % devices)
    if bad:
      raise ValueError(
        f"num_experts={bad[0]} is not divisible by EXPERT_PARALLELISM={devices} (mesh {dict(self.mesh.shape)}): "
        f"each expert device holds num_experts / EXPERT_PARALLELISM experts. Valid EXPERT_PARALLELISM: "
        f"{[d for d in mesh_shape.divisors(bad[0]) if self.mesh.size % d == 0]}."
      )
    self.active_rules, self.notes = fit_rules(self.base_rules, self.mesh, sizes)

  def sharding(self, spec: P) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def shardings_for(self, logical_axes: PyTree) -> PyTree:
    return jax.tree.map(self.sharding, specs_for(logical_axes, self.active_rules), is_leaf=lambda x: isinstance(x, P))

  @property
  def replicated(self) -> NamedSharding:
    return self.sharding(P())

  def batch_sharding(self, ndim: int = 2) -> NamedSharding:
    return self.sharding(P(BATCH_MESH_AXES, *([None] * (ndim - 1))))

  def check_batch_size(self, batch_size: int) -> None:
    if batch_size % self.batch_shards:
      raise ValueError(
        f"BATCH_SIZE={batch_size} is not divisible by the {self.batch_shards} data-parallel shards "
        f"of mesh {dict(self.mesh.shape)} (data x fsdp x expert); use a multiple of {self.batch_shards}."
      )

  def global_batch(self, local_batch: Mapping[str, np.ndarray], global_batch_size: int) -> dict[str, jax.Array]:
    """Assembles this process's rows into global arrays sharded over the batch axes."""
    out = {}
    for k, v in local_batch.items():
      shape = (global_batch_size,) + tuple(v.shape[1:])
      out[k] = jax.make_array_from_process_local_data(self.batch_sharding(v.ndim), v, shape)
    return out

  @contextlib.contextmanager
  def context(self):
    """The mesh and rules that activation constraints inside the model see."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.active_rules):
      yield


def bytes_per_device(tree: PyTree) -> int:
  """Bytes one device holds of a tree of (abstract or real) sharded arrays."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return int(total)


def total_bytes(tree: PyTree) -> int:
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))

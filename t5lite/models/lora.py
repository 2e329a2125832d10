"""LoRA: low-rank adapters on the dense kernels of attention and MLP blocks (Hu et al. 2021).

A kernel W [*in, *out] that `LoraConfig.targets` selects gets two extra
parameters next to it in the same module, `{name}_lora_a` [*in, r] (axes:
the kernel's input axes + 'lora_rank') and `{name}_lora_b` [r, *out]
('lora_rank' + the kernel's output axes), and the projection becomes
x W + (alpha / r) * dropout(x) A B. B starts at zero, so the adapted model
starts equal to its base; A is drawn like torch's nn.Linear default (the one
the `peft` library keeps: kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in))).
Because the adapters carry their kernel's logical axis names, FSDP and tensor
parallelism shard them like the kernel they adapt ('lora_rank' is never sharded).

Which parameters train, how adapter checkpoints name their base and how a
run loads them is t5lite.models.peft's; `merge` folds trained adapters into
their kernels (W + (alpha / r) A B) for export or serving. Written by hand:
flax has no LoRA, and the `peft` library is PyTorch's.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite import checks
from t5lite.models import params

Array = jax.Array
PyTree = Any

SUFFIX_A = "_lora_a"
SUFFIX_B = "_lora_b"
# Kernels LoRA can adapt: attention (self and cross) and the dense MLP's. A mixture of experts'
# expert kernels are not adapted (LoRA on experts is a research topic of its own).
ATTENTION_KERNELS = ("query", "key", "value", "out")
MLP_KERNEL = re.compile(r"^(wi(_\d+)?|wo)$")
TARGET_PRESETS = {
  "attention": ("query", "key", "value", "out"),  # every attention projection
  "attention_qv": ("query", "value"),  # Hu et al. 2021's choice for GPT-3
  "mlp": ("wi", "wi_0", "wi_1", "wi_2", "wi_3", "wo"),
  "all": ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wi_2", "wi_3", "wo"),
}
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): variance 1/(3 fan_in).
A_INIT_SCALE = 1.0 / 3.0


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which kernels get adapters, and their size.

  rank: r, the inner dimension of A [in, r] and B [r, out]; an integer >= 1
    no larger than the smaller of a selected kernel's input and output sizes.
  alpha: the adapter output is scaled by alpha / r (Hu et al. 2021, section 4.1), > 0.
  dropout_rate: dropout on the adapter's input during training, in [0, 1).
  targets: which kernels: a preset name ('attention': query, key, value and
    out of every self- and cross-attention; 'attention_qv'; 'mlp': wi / wi_i
    and wo of the dense MLPs; 'all'), a kernel name ('query', 'wo', ...), or a
    regular expression searched in the kernel's parameter path
    ('decoder/layers_3/self_attention/value'; a scanned stack's layers are
    'layers' there), or a tuple of these (a kernel any entry selects).
    A setting that selects no kernel is refused when the model is built
    (`check_targets`, which lists the kernels there are).
  """

  rank: int = 8
  alpha: float = 8.0
  dropout_rate: float = 0.0
  targets: Union[str, tuple[str, ...]] = "attention"

  def __post_init__(self):
    object.__setattr__(self, "rank", checks.check_int("LoraConfig.rank", self.rank, minimum=1))
    alpha = checks.check_float("LoraConfig.alpha", self.alpha, minimum=0.0, min_open=True)
    object.__setattr__(self, "alpha", alpha)
    rate = checks.check_float("LoraConfig.dropout_rate", self.dropout_rate, minimum=0.0, maximum=1.0, max_open=True)
    object.__setattr__(self, "dropout_rate", rate)
    targets = (self.targets,) if isinstance(self.targets, str) else self.targets
    if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
      raise checks.SettingTypeError(
        f"LoraConfig.targets={self.targets!r} must be a preset ({sorted(TARGET_PRESETS)}), a kernel name, "
        "a regular expression over parameter paths, or a non-empty tuple of these"
      )
    for t in targets:
      if t not in TARGET_PRESETS:
        try:
          re.compile(t)
        except re.error as e:
          raise checks.SettingError(f"LoraConfig.targets entry {t!r} is not a valid regular expression: {e}") from None
    object.__setattr__(self, "targets", tuple(targets))

  @property
  def scale(self) -> float:
    """alpha / r, the factor on the adapter's output."""
    return self.alpha / self.rank

  def selects(self, path: Sequence[str]) -> bool:
    """Whether the kernel at parameter `path` ('encoder', 'layers_0', 'self_attention', 'query') is adapted."""
    name, joined = path[-1], "/".join(path)
    for t in self.targets:
      if t in TARGET_PRESETS:
        if name in TARGET_PRESETS[t]:
          return True
      elif t == name or re.search(t, joined):
        return True
    return False


def is_adaptable(path: Sequence[str]) -> bool:
  """Whether `path` names a kernel LoRA can adapt (an attention projection or a dense MLP kernel)."""
  name = path[-1]
  if len(path) < 2:
    return False
  if name in ATTENTION_KERNELS:
    return path[-2] in ("self_attention", "encoder_decoder_attention")
  return path[-2] == "mlp" and bool(MLP_KERNEL.match(name))


def is_adapter(name: str) -> bool:
  """Whether a parameter named `name` is a LoRA adapter matrix."""
  return name.endswith(SUFFIX_A) or name.endswith(SUFFIX_B)


@dataclasses.dataclass(frozen=True)
class Adapter:
  """A kernel's adapter inside a module's call: A, B, the scale, the input dropout (or None)."""

  a: Array
  b: Array
  scale: float
  dropout: Optional[Callable[[Array], Array]] = None

  def __call__(self, x: Array, in_dims: int, dtype: Any) -> Array:
    """(alpha / r) * dropout(x) A B: x [..., *in] -> [..., *out] in `dtype`."""
    h = x if self.dropout is None else self.dropout(x)
    h = params.dense(h, self.a.astype(dtype), in_dims=in_dims)
    return params.dense(h, self.b.astype(dtype), in_dims=1) * jnp.asarray(self.scale, dtype)


def adapter(
  module: nn.Module,
  config: Optional[LoraConfig],
  name: str,
  shape: Sequence[int],
  axes: Sequence[str],
  in_dims: int,
  deterministic: bool = True,
) -> Optional[Adapter]:
  """The adapter of kernel `name` (shape `shape`, logical `axes`, the first `in_dims` dims its input)
  of `module`, creating `{name}_lora_a` / `{name}_lora_b`; None without a config or when
  `config.targets` does not select the kernel. Call inside the module's compact method, once.

  Raises:
    ValueError: the rank is larger than the kernel's input or output size (naming both).
  """
  if config is None or not config.selects(tuple(module.path) + (name,)):
    return None
  in_shape, out_shape = tuple(shape[:in_dims]), tuple(shape[in_dims:])
  fan_in, fan_out = math.prod(in_shape), math.prod(out_shape)
  if config.rank > min(fan_in, fan_out):
    raise checks.SettingError(
      f"LoraConfig.rank={config.rank} is larger than kernel {'/'.join(module.path + (name,))} {tuple(shape)} "
      f"allows (input size {fan_in}, output size {fan_out}); use a rank <= {min(fan_in, fan_out)}"
    )
  r = config.rank
  a_init = params.VarianceScaling(A_INIT_SCALE, "fan_in", "uniform", tuple(range(in_dims)), -1)
  a = params.param(module, name + SUFFIX_A, a_init, in_shape + (r,), tuple(axes[:in_dims]) + ("lora_rank",))
  b = params.param(module, name + SUFFIX_B, params.zeros_init, (r,) + out_shape, ("lora_rank",) + tuple(axes[in_dims:]))
  drop = None
  if config.dropout_rate > 0.0 and not deterministic:
    drop = lambda x: nn.Dropout(config.dropout_rate)(x, deterministic=False)  # noqa: E731
  return Adapter(a, b, config.scale, drop)


def check_targets(config: Optional[LoraConfig], param_paths: Sequence[Sequence[str]]) -> None:
  """Refuses a LoRA setting that selected no kernel of the model whose parameter paths are `param_paths`.

  Raises:
    ValueError: naming the targets and listing the adaptable kernels (paths,
      with each stack's layer numbers folded into 'layers_*').
  """
  if config is None:
    return
  paths = [tuple(p) for p in param_paths]
  if any(is_adapter(p[-1]) for p in paths):
    return
  kernels = sorted({re.sub(r"layers_\d+", "layers_*", "/".join(p)) for p in paths if is_adaptable(p)})
  raise checks.SettingError(
    f"LoraConfig.targets={config.targets!r} selects no kernel of this model. Kernels LoRA can adapt: "
    f"{', '.join(kernels) or 'none'}; presets: {sorted(TARGET_PRESETS)}; a target is a preset, a kernel name "
    "or a regular expression searched in these paths."
  )


def _merged_kernel(kernel: Array, a: Array, b: Array, scale: float) -> Array:
  """kernel + scale * A B, with any leading dims (a scanned stack's 'layers') batched."""
  lead = a.ndim + b.ndim - kernel.ndim - 2
  n_in = a.ndim - lead - 1
  lead_shape = kernel.shape[:lead]
  a2 = a.reshape(lead_shape + (math.prod(a.shape[lead : lead + n_in]), a.shape[-1]))
  b2 = b.reshape(lead_shape + (b.shape[lead], math.prod(b.shape[lead + 1 :])))
  delta = jnp.matmul(a2.astype(jnp.float32), b2.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
  return (kernel.astype(jnp.float32) + scale * delta.reshape(kernel.shape)).astype(kernel.dtype)


def merge(tree: PyTree, config: LoraConfig) -> PyTree:
  """The parameters with every adapter folded into its kernel, W + (alpha / r) A B, and removed.

  `tree`: a nested dict of parameters (arrays, float32) holding `{name}_lora_a` /
  `{name}_lora_b` next to kernel `name`. Returns a new tree of the base
  model's structure (the model without `lora` takes it); the adapted model
  and the base model on the merged tree agree to float32 rounding.

  Raises:
    ValueError: an adapter whose kernel or partner matrix is missing, or whose shapes do not fit it.
  """

  def walk(node: Any, where: str) -> Any:
    if not isinstance(node, dict) and not hasattr(node, "items"):
      return node
    out = {k: walk(v, f"{where}/{k}") for k, v in node.items() if not is_adapter(str(k))}
    for k in node:
      if not str(k).endswith(SUFFIX_A):
        continue
      base = str(k)[: -len(SUFFIX_A)]
      if base not in node or base + SUFFIX_B not in node:
        raise ValueError(f"{where}/{k}: adapter without its kernel {base!r} or its {base + SUFFIX_B!r}")
      a, b, kernel = node[k], node[base + SUFFIX_B], node[base]
      if a.shape[-1] != b.shape[a.ndim + b.ndim - kernel.ndim - 2]:
        raise ValueError(f"{where}/{base}: adapter shapes {a.shape} and {b.shape} do not fit kernel {kernel.shape}")
      out[base] = _merged_kernel(kernel, a, b, config.alpha / a.shape[-1])
    return out

  return walk(tree, "")

"""The platform this process computes on, and the kernels chosen for it (the one place).

`attention` option values (model configs' `attention` field, the benchmarks'
`--attention`), named as MaxText names them:

* `dot_product`: plain einsum attention, softmax(q k^T + bias) v with a float32
  softmax; autodiff backward. Runs everywhere; XLA fuses it on GPU and TPU.
* `cudnn_flash_jax`: cuDNN fused attention through
  `jax.nn.dot_product_attention(implementation="cudnn")` (GPU only; bfloat16 or
  float16 activations; falls back to `dot_product` with one warning where cuDNN
  rejects a shape).
* `cpu_dot_product`: the XLA:CPU formulation in `t5lite.kernels.xla_cpu` (mask
  folded into the bias once per stack, hand-written backward pass). CPU only.
* `auto` (default): `cpu_dot_product` on CPU; on GPU `cudnn_flash_jax` for
  bfloat16/float16 activations and `dot_product` for float32 (cuDNN has no
  float32 kernel); `dot_product` on TPU and elsewhere.

The other XLA:CPU formulations (blocked argmax, Adafactor's means as matrix
products, the flat-index relative-position gather) follow `cpu_kernels()`.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

ATTENTION_IMPLEMENTATIONS = ("auto", "dot_product", "cudnn_flash_jax", "cpu_dot_product")
# Values of earlier releases, with what to write instead.
_RENAMED = {
  "xla": "'dot_product' (the plain einsum attention it was) or 'auto'",
}
_ONLY_ON = {"cudnn_flash_jax": "gpu", "cpu_dot_product": "cpu"}


def platform() -> str:
  """The default backend's platform name: 'cpu', 'gpu' or 'tpu' (jax.default_backend())."""
  name = jax.default_backend()
  return "gpu" if name in ("cuda", "rocm") else name


def cpu_kernels(on: Optional[str] = None) -> bool:
  """True where the XLA:CPU formulations are used: on the CPU backend only.

  `on` names a platform ('cpu', 'gpu', 'tpu'); None means this process's."""
  return (platform() if on is None else on) == "cpu"


def valid_attention(on: Optional[str] = None) -> tuple[str, ...]:
  """The `attention` values that run on platform `on` (None: this process's)."""
  on = platform() if on is None else on
  return tuple(n for n in ATTENTION_IMPLEMENTATIONS if _ONLY_ON.get(n, on) == on)


def check_attention_name(name: Any, where: str = "attention") -> str:
  """Validates an `attention` value without looking at the backend; returns it.

  Raises ValueError naming the value and the valid ones (a value of an
  earlier release gets what to write instead)."""
  if name in _RENAMED:
    raise ValueError(
      f"{where}: {name!r} is no longer an attention implementation; use {_RENAMED[name]}. "
      f"Valid values: {ATTENTION_IMPLEMENTATIONS}"
    )
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(
      f"{where}: unknown attention implementation {name!r}; valid values are {ATTENTION_IMPLEMENTATIONS}"
    )
  return name


def resolve_attention(name: str, dtype: Any = "float32", on: Optional[str] = None, where: str = "attention") -> str:
  """The implementation that runs for option `name` with activations of `dtype`
  on platform `on` (None: this process's): never 'auto'.

  Raises ValueError for an unknown name, or for one this platform cannot run
  (`cudnn_flash_jax` off GPU, `cpu_dot_product` off CPU), naming what would run.
  """
  check_attention_name(name, where)
  on = platform() if on is None else on
  if name == "auto":
    if on == "cpu":
      return "cpu_dot_product"
    if on == "gpu" and jnp.dtype(dtype).itemsize == 2:
      return "cudnn_flash_jax"
    return "dot_product"
  needs = _ONLY_ON.get(name)
  if needs is not None and needs != on:
    raise ValueError(
      f"{where}={name!r} runs on {needs.upper()} only, and this process computes on {on.upper()}; "
      f"valid here: {valid_attention(on)} ('auto' picks the fastest)"
    )
  return name

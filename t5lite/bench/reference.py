"""Plain-JAX yardsticks for a device: how long XLA takes to compile a trivial
program and a dense model, and how fast that model trains.

    python -m t5lite.bench.reference --layers 12 --d_model 768 --d_ff 2048 --batch 128 --length 512

Two measurements, each compiled ahead of time (`jit(f).lower(...).compile()`)
with the persistent compilation cache off, so the compile is cold:

* `trivial_compile_s`: `x * 2 + 1` on a small array; the fixed cost of one
  compile on this backend.
* a stack of `--layers` residual MLP layers, h + gelu(h W1) W2 with
  d_model -> d_ff -> d_model, float32 parameters cast to bfloat16 activations,
  forward + backward + an SGD update in one jit over a batch of
  batch x length tokens: `dense_compile_s` (and per layer), `dense_step_s` (the
  median of `--steps` runs after a first one) and `dense_tflops_per_s` from
  12 * tokens * d_model * d_ff FLOPs per layer (two matmuls, 3x for the
  backward pass).

When t5lite's numbers look slow, these say whether the model or the backend is
to blame. Imports only jax and numpy. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _seconds(fn):
  t0 = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return out, time.perf_counter() - t0


def init_params(layers: int, d_model: int, d_ff: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
  """Float32 (W1 [d_model, d_ff], W2 [d_ff, d_model]) per layer; W2 scaled
  down so that the residual stream stays near unit size through the stack."""
  rng = np.random.default_rng(seed)
  return [
    (
      rng.normal(0.0, d_model**-0.5, (d_model, d_ff)).astype(np.float32),
      rng.normal(0.0, 0.1 * d_ff**-0.5, (d_ff, d_model)).astype(np.float32),
    )
    for _ in range(layers)
  ]


def loss_fn(params, x: jax.Array) -> jax.Array:
  h = x
  for w1, w2 in params:
    h = h + jax.nn.gelu(h @ w1.astype(h.dtype)) @ w2.astype(h.dtype)
  return jnp.mean(jnp.square(h.astype(jnp.float32)))


@functools.partial(jax.jit, donate_argnums=(0,))
def sgd_step(params, x: jax.Array, learning_rate: float = 1e-3):
  loss, grads = jax.value_and_grad(loss_fn)(params, x)
  return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), loss


def dense_flops_per_step(layers: int, tokens: int, d_model: int, d_ff: int) -> float:
  return 12.0 * layers * tokens * d_model * d_ff


def run(args) -> dict:
  jax.config.update("jax_enable_compilation_cache", False)
  _, backend_init_s = _seconds(lambda: jax.device_put(np.ones((8,), np.float32)))
  device = jax.devices()[0]

  small = jnp.ones((8,), jnp.float32)
  trivial, trivial_compile_s = _seconds(lambda: jax.jit(lambda v: v * 2 + 1).lower(small).compile())
  assert float(trivial(small)[0]) == 3.0

  params = jax.device_put(init_params(args.layers, args.d_model, args.d_ff, args.seed))
  x = jax.device_put(
    np.random.default_rng(args.seed + 1).normal(size=(args.batch, args.length, args.d_model)).astype(jnp.bfloat16)
  )
  t0 = time.perf_counter()
  lowered = sgd_step.lower(params, x)
  lower_s = time.perf_counter() - t0
  compiled = lowered.compile()
  dense_compile_s = time.perf_counter() - t0

  (params, loss), first_step_s = _seconds(lambda: compiled(params, x))
  losses, times = [float(loss)], []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    params, loss = compiled(params, x)
    jax.block_until_ready((params, loss))
    times.append(time.perf_counter() - t0)
    losses.append(float(loss))
  step_s = statistics.median(times)
  flops = dense_flops_per_step(args.layers, args.batch * args.length, args.d_model, args.d_ff)
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # backends without memory statistics
    stats = {}
  return {
    "impl": "jax_reference",
    "backend_init_s": round(backend_init_s, 3),
    "trivial_compile_s": round(trivial_compile_s, 4),
    "dense_layers": args.layers,
    "dense_shape": [args.d_model, args.d_ff],
    "dense_batch": [args.batch, args.length],
    "dense_lower_s": round(lower_s, 3),
    "dense_compile_s": round(dense_compile_s, 3),
    "dense_compile_s_per_layer": round(dense_compile_s / args.layers, 4),
    "dense_first_step_s": round(first_step_s, 4),
    "dense_step_s": round(step_s, 5),
    "dense_flops_per_step": flops,
    "dense_tflops_per_s": round(flops / step_s / 1e12, 4),
    "dense_first_loss": round(losses[0], 5),
    "dense_last_loss": round(losses[-1], 5),
    "steps": len(times),
    "peak_device_bytes": stats.get("peak_bytes_in_use"),
    "device": device.device_kind,
    "platform": device.platform,
    "jax": jax.__version__,
  }


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--d_model", type=int, default=768)
  p.add_argument("--d_ff", type=int, default=2048)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--length", type=int, default=512)
  p.add_argument("--steps", type=int, default=8, help="timed steps after the first")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if min(args.layers, args.d_model, args.d_ff, args.batch, args.length, args.steps) < 1:
    p.error("--layers, --d_model, --d_ff, --batch, --length and --steps must be >= 1")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  print(json.dumps(run(parse_args(argv))), flush=True)


if __name__ == "__main__":
  main()

"""How each backend computes what the models say: kernel choice and backend-specific kernels.

The model modules (t5lite.models) say what is computed with plain jax/flax.
Where one backend runs a different formulation faster, that formulation lives
here, and `backend` is the one place that picks it:

* `backend`: which platform this process computes on, the `attention` option's
  values and what `auto` means on each platform, and whether the XLA:CPU
  kernels are in use.
* `xla_cpu`: formulations that exist only because XLA's CPU backend runs them
  faster (attention with a hand-written backward pass, the mask folded into the
  bias, the flat-index relative-position gather, the blocked argmax, means as
  matrix products). Never chosen on GPU or TPU.
* `cudnn`: cuDNN fused attention through `jax.nn.dot_product_attention`.

Importing this package needs only jax and numpy.
"""

"""Tests of t5lite.kernels.backend: which implementation runs where, and that the
XLA:CPU formulations are never chosen on GPU or TPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite import losses
from t5lite.kernels import backend
from t5lite.models import model as model_lib
from t5lite.models import t5
from t5lite.optim import adafactor


@pytest.mark.parametrize(
  "on,dtype,want",
  [
    ("cpu", "float32", "cpu_dot_product"),
    ("cpu", "bfloat16", "cpu_dot_product"),
    ("gpu", "bfloat16", "cudnn_flash_jax"),
    ("gpu", jnp.float16, "cudnn_flash_jax"),
    ("gpu", "float32", "dot_product"),  # cuDNN has no float32 attention kernel
    ("tpu", "bfloat16", "dot_product"),
  ],
)
def test_auto_resolves_per_backend(on, dtype, want):
  assert backend.resolve_attention("auto", dtype, on=on) == want


def test_explicit_names_run_only_where_they_can():
  assert backend.resolve_attention("dot_product", "float32", on="tpu") == "dot_product"
  assert backend.resolve_attention("cudnn_flash_jax", "bfloat16", on="gpu") == "cudnn_flash_jax"
  with pytest.raises(
    ValueError,
    match=r"'cpu_dot_product' runs on CPU only.*computes on GPU; valid here: "
    r"\('auto', 'dot_product', 'cudnn_flash_jax'\)",
  ):
    backend.resolve_attention("cpu_dot_product", "bfloat16", on="gpu")
  with pytest.raises(
    ValueError,
    match=r"'cudnn_flash_jax' runs on GPU only.*computes on TPU; valid here: "
    r"\('auto', 'dot_product'\)",
  ):
    backend.resolve_attention("cudnn_flash_jax", "bfloat16", on="tpu")
  assert backend.cpu_kernels(on="cpu") and not backend.cpu_kernels(on="gpu") and not backend.cpu_kernels(on="tpu")
  assert backend.platform() == "cpu" and backend.cpu_kernels()


def _primitives(jaxpr) -> set:
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for v in value if isinstance(value, (list, tuple)) else (value,):
        inner = getattr(v, "jaxpr", None)
        if inner is not None:
          names |= _primitives(getattr(inner, "jaxpr", inner))
  return names


def _train_step_primitives(monkeypatch, on: str) -> set:
  monkeypatch.setattr(backend, "platform", lambda: on)
  model = model_lib.EncoderDecoderModel(config=t5.t5_config("tiny", vocab_size=256, attention="auto"))
  shapes = model.input_shapes(2, {"inputs": 8, "targets": 4})
  params = jax.tree.map(
    lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(lambda: model.init_params(jax.random.key(0), shapes))
  )
  batch = {
    "encoder_input_tokens": jnp.ones((2, 8), jnp.int32),
    "decoder_input_tokens": jnp.ones((2, 4), jnp.int32),
    "decoder_target_tokens": jnp.ones((2, 4), jnp.int32),
    "decoder_loss_weights": jnp.ones((2, 4)),
  }
  opt = adafactor.adafactor(1e-3, logical_axes=model.param_logical_axes(shapes))

  def step(params):
    (loss, _), grads = jax.value_and_grad(lambda p: model.loss_fn(p, batch, None, jnp.ones((2, 4))), has_aux=True)(
      params
    )
    updates, _ = opt.update(grads, opt.init(params), params)
    acc = losses.token_accuracy(jnp.zeros((2, 4, 256)), batch["decoder_target_tokens"])
    return loss, updates, acc

  return _primitives(jax.make_jaxpr(step)(params).jaxpr)


def test_cpu_formulations_only_on_cpu(monkeypatch):
  """The same train step traced as on CPU and as on GPU/TPU: the XLA:CPU pieces
  (optimization barriers and the custom VJP of the attention kernel, the blocked
  argmax's reshape-and-gather, Adafactor's means as dot products) appear on CPU only."""
  cpu = _train_step_primitives(monkeypatch, "cpu")
  assert "optimization_barrier" in cpu
  for on in ("gpu", "tpu"):
    other = _train_step_primitives(monkeypatch, on)
    assert not {"optimization_barrier", "custom_vjp_call", "custom_vjp_call_jaxpr"} & other, on
    assert "argmax" in other


def test_cpu_argmax_and_mean_follow_the_backend(monkeypatch):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 256)), jnp.float32)
  cpu = str(jax.make_jaxpr(lambda v: losses.argmax(v))(x))  # a new function: traced anew
  monkeypatch.setattr(backend, "platform", lambda: "gpu")
  gpu = str(jax.make_jaxpr(lambda v: losses.argmax(v))(x))
  assert cpu.count("argmax") == 2 and gpu.count("argmax") == 1  # two levels on CPU only
  np.testing.assert_array_equal(losses.argmax(x), np.argmax(np.asarray(x), -1))

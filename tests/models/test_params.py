"""Tests of t5lite.models.params: counting, logical axes, creation from shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t5lite.models import layers
from t5lite.models import params as params_lib


def test_count_params_and_axes_tree_on_abstract_values():
  x = jnp.zeros((1, 3, 16))
  abstract = jax.eval_shape(layers.GatedMlp(d_ff=32).init, jax.random.key(0), x)
  assert params_lib.count_params(abstract) == 3 * 16 * 32
  assert params_lib.count_params(nn.unbox(abstract)) == 3 * 16 * 32
  axes = params_lib.logical_axes_tree(abstract)
  # Params first: each tuple of names reaches the function whole.
  dims = jax.tree.map(lambda p, names: dict(zip(names, p.shape)), nn.unbox(abstract), axes)
  assert dims["params"]["wo"] == {"mlp": 32, "embed": 16}


def _tiny_model(**overrides):
  from t5lite.models import model as model_lib, t5  # pylint: disable=g-import-not-at-top

  cfg = t5.t5_config("tiny", **{"vocab_size": 384, "num_encoder_layers": 2, "num_decoder_layers": 3, **overrides})
  model = model_lib.EncoderDecoderModel(config=cfg)
  return model, model.input_shapes(4, {"inputs": 16, "targets": 8})


def test_init_from_shapes_is_deterministic_and_draws_each_initialiser():
  model, shapes = _tiny_model()
  a = model.init_params(jax.random.key(3), shapes)
  b = model.init_params(jax.random.key(3), shapes)
  c = model.init_params(jax.random.key(4), shapes)
  abstract = nn.unbox(model.abstract_params(shapes))
  assert jax.tree.structure(a) == jax.tree.structure(abstract)
  for x, y, z, want in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c), jax.tree.leaves(abstract)):
    assert x.shape == want.shape and x.dtype == jnp.float32
    np.testing.assert_array_equal(x, y)  # same seed, same values
  enc = a["encoder"]
  # Every parameter differs from every other one of its shape, and from another seed's.
  assert not np.array_equal(enc["layers_0"]["mlp"]["wi_0"], enc["layers_0"]["mlp"]["wi_1"])
  assert not np.array_equal(enc["layers_0"]["mlp"]["wi_0"], enc["layers_1"]["mlp"]["wi_0"])
  assert not np.array_equal(enc["layers_0"]["mlp"]["wi_0"], c["encoder"]["layers_0"]["mlp"]["wi_0"])
  # The initialisers' scales: fan-in truncated normal, query with 1/sqrt(d_kv), N(0, 1) embeddings,
  # ones for the norms. tiny: d_model 128, 4 heads of 32, d_ff 512.
  att = a["decoder"]["layers_2"]["encoder_decoder_attention"]
  np.testing.assert_allclose(np.std(att["key"]), 1 / np.sqrt(128), rtol=0.05)
  np.testing.assert_allclose(np.std(att["query"]), 1 / np.sqrt(128 * 32), rtol=0.05)
  np.testing.assert_allclose(np.std(att["out"]), 1 / np.sqrt(4 * 32), rtol=0.05)
  np.testing.assert_allclose(np.std(a["decoder"]["layers_0"]["mlp"]["wo"]), 1 / np.sqrt(512), rtol=0.05)
  assert np.abs(a["decoder"]["layers_0"]["mlp"]["wo"]).max() <= 2 / np.sqrt(512) / 0.87962566 + 1e-6  # truncated
  np.testing.assert_allclose(np.std(a["token_embedder"]["embedding"]), 1.0, rtol=0.05)
  np.testing.assert_array_equal(enc["encoder_norm"]["scale"], np.ones(128, np.float32))
  rel = enc["relpos_bias"]["rel_embedding"]
  limit = np.sqrt(3.0 / ((4 + 32) / 2))  # fan_avg uniform
  assert np.abs(rel).max() <= limit and np.abs(rel).max() > 0.5 * limit


def test_scanned_layers_get_the_unscanned_values():
  model, shapes = _tiny_model()
  scanned, _ = _tiny_model(scan_layers=True)
  a = model.init_params(jax.random.key(0), shapes)
  b = scanned.init_params(jax.random.key(0), shapes)
  for stack, n in (("encoder", 2), ("decoder", 3)):
    stacked = b[stack]["layers"]
    for i in range(n):
      jax.tree.map(lambda s, u, i=i: np.testing.assert_array_equal(s[i], u), stacked, a[stack][f"layers_{i}"])


def test_init_into_shardings_equals_one_device():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  model, shapes = _tiny_model()
  mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
  axes = model.param_logical_axes(shapes)
  rules = {"embed": "data", "mlp": "model", "heads": "model", "vocab": "model"}
  shardings = jax.tree.map(
    lambda _, names: NamedSharding(mesh, P(*(rules.get(n) for n in names))),
    nn.unbox(model.abstract_params(shapes)),
    axes,
  )
  sharded = model.init_params(jax.random.key(1), shapes, shardings)
  plain = model.init_params(jax.random.key(1), shapes)
  wi = sharded["decoder"]["layers_0"]["mlp"]["wi_0"]
  assert wi.sharding.spec == P("data", "model") and len(wi.addressable_shards) == 4
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), sharded, plain)


def test_init_from_shapes_compiles_one_program_per_initialiser_and_shape():
  model, shapes = _tiny_model(num_heads=3, d_kv=24, d_model=72, d_ff=200)  # shapes no other test uses
  before = len(params_lib._compiled)  # pylint: disable=protected-access
  made = model.init_params(jax.random.key(0), shapes)
  # query (scaled), key/value, out, wi_0/wi_1, wo, norm scale, embedding, logits kernel, relpos table:
  # 9 programs for 66 parameters (2 encoder layers of 9, 3 decoder layers of 14, 6 others).
  assert len(params_lib._compiled) - before == 9  # pylint: disable=protected-access
  assert len(jax.tree.leaves(made)) == 66


def test_a_parameter_made_without_param_is_refused():
  class Odd(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param("w", nn.initializers.ones, (x.shape[-1],))
      return x * w + params_lib.param(self, "b", params_lib.ones_init, (x.shape[-1],), ("embed",))

  with params_lib.record_initializers() as recorded:
    abstract = jax.eval_shape(Odd().init, jax.random.key(0), jnp.zeros((1, 4)))
  assert recorded == {("b",): (params_lib.ones_init, (4,))}
  with pytest.raises(KeyError, match="parameter w has no recorded initialiser"):
    params_lib.init_params(jax.random.key(0), nn.unbox(abstract)["params"], recorded)
  with pytest.raises(ValueError, match=r"parameter 'b': 1 dims \(4,\) but 2 axis names"):
    jax.eval_shape(lambda: params_lib.param(Odd(), "b", params_lib.ones_init, (4,), ("embed", "mlp")))

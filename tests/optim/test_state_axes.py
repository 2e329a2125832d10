"""Tests for t5lite/optim/state_axes.py: logical axes for any optax state."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest

from t5lite.optim import adafactor, schedules, state_axes

SDS = jax.ShapeDtypeStruct
PARAMS = {"w": SDS((256, 512), jnp.float32), "b": SDS((512,), jnp.float32)}
AXES = {"w": ("embed", "mlp"), "b": ("mlp",)}


def test_params_shaped_subtrees_take_the_parameters_names():
  for tx in (
    optax.adam(1e-3),
    optax.sgd(1e-2, momentum=0.9),
    optax.chain(optax.clip_by_global_norm(1.0), optax.lion(1e-4)),
  ):
    state = jax.eval_shape(tx.init, PARAMS)
    axes = state_axes.opt_state_logical_axes(state, PARAMS, AXES)
    pairs = []
    jax.tree.map(lambda leaf, n: pairs.append((leaf, n)), state, axes)  # the state's leaves are a prefix
    assert len(pairs) == len(jax.tree.leaves(state))
    for leaf, n in pairs:
      assert len(n) == leaf.ndim
      if leaf.shape == (256, 512):
        assert n == ("embed", "mlp")
      elif leaf.shape == (512,):
        assert n == ("mlp",)
      else:
        assert n == ()  # counters
  adam = jax.eval_shape(optax.adam(1e-3).init, PARAMS)
  named = state_axes.opt_state_logical_axes(adam, PARAMS, AXES)[0]
  assert named.mu == AXES and named.nu == AXES and named.count == ()


def test_unknown_names_and_other_shapes_stay_unnamed():
  state = ({"w": SDS((256, 512), jnp.float32), "b": SDS((3,), jnp.float32)}, SDS((), jnp.int32))
  axes = state_axes.opt_state_logical_axes(state, PARAMS, {"w": None, "b": ("mlp",)})
  assert axes == ({"w": (None, None), "b": (None,)}, ())
  assert state_axes.opt_state_logical_axes(state, PARAMS, None) == ({"w": (None, None), "b": (None,)}, ())


class _Stats(NamedTuple):
  rows: dict


def test_a_registered_or_given_rule_names_its_state_type():
  def rows_rule(node, params):
    assert isinstance(params, state_axes.ParamAxes) and params.axes == [("mlp",), ("embed", "mlp")]
    return _Stats(rows={k: names[:1] for k, names in zip(("b", "w"), params.axes)})

  state = (_Stats(rows={"b": SDS((512,), jnp.float32), "w": SDS((256,), jnp.float32)}),)
  assert state_axes.opt_state_logical_axes(state, PARAMS, AXES, rules={_Stats: rows_rule}) == (
    _Stats(rows={"b": ("mlp",), "w": ("embed",)}),
  )
  # Adafactor registers its rule at import: the generic function needs nothing more.
  tx = adafactor.adafactor(schedules.constant(0.01), logical_axes=AXES, momentum=0.9)
  af_state = jax.eval_shape(tx.init, PARAMS)
  axes = state_axes.opt_state_logical_axes(af_state, PARAMS, AXES)
  assert axes == adafactor.adafactor_state_logical_axes(af_state, PARAMS, AXES)
  assert axes[0].v_row == {"w": ("embed",), "b": ()} and axes[0].v_col == {"w": ("mlp",), "b": ()}
  assert axes[0].v == {"w": (), "b": ("mlp",)}


def test_bad_logical_axes_are_refused():
  with pytest.raises(ValueError, match="have 1 names but the parameter has shape"):
    state_axes.axes_per_leaf(PARAMS, {"w": ("embed",), "b": ("mlp",)})
  with pytest.raises(ValueError, match="same tree structure"):
    state_axes.axes_per_leaf(PARAMS, {"w": ("embed", "mlp")})
  with pytest.raises(ValueError, match="must be a tuple of str/None"):
    state_axes.axes_per_leaf(PARAMS, {"w": ("embed", 3), "b": ("mlp",)})

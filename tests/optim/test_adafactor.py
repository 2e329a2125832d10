"""Tests for t5lite.optim.adafactor (and the thin AdamW wrapper).

Numbers are checked against a small float64 numpy Adafactor written below.
Shapes are tiny; factoring is switched on for them with min_dim_size_to_factor.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5lite.optim import adafactor as af
from t5lite.optim import adamw as adamw_lib
from t5lite.optim import schedules

SDS = jax.ShapeDtypeStruct


# ---------------------------------------------------------------------------
# numpy reference
# ---------------------------------------------------------------------------


def reference_adafactor(param, grads, *, lr, plan, batch=(), clip=1.0, scale=True, eps1=1e-30, eps2=1e-3):
  """Returns the list of updates plain Adafactor makes for `grads` (float64)."""
  p = np.asarray(param, np.float64)
  reduce = tuple(d for d in range(p.ndim) if d not in batch)
  r = c = v = 0.0
  out = []
  for t, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    beta2 = 1.0 - (t + 1.0) ** -0.8
    g2 = g * g + eps1
    if plan is None:
      v = beta2 * v + (1 - beta2) * g2
      v_hat = v
    else:
      row, col = plan
      r = beta2 * r + (1 - beta2) * g2.mean(axis=col)
      c = beta2 * c + (1 - beta2) * g2.mean(axis=row)
      rr = np.expand_dims(r, col)
      cc = np.expand_dims(c, row)
      v_hat = rr * cc / rr.mean(axis=row, keepdims=True)
    u = g / np.sqrt(v_hat)
    if clip is not None:
      u = u / np.maximum(1.0, np.sqrt(np.mean(u * u, axis=reduce, keepdims=True)) / clip)
    step = lr * u
    if scale:
      step = step * np.maximum(eps2, np.sqrt(np.mean(p * p, axis=reduce, keepdims=True)))
    out.append(-step)
    p = p - step
  return out


def run(tx, params, grads, jit=True):
  """Applies tx to a list of gradient trees; returns the updates and states.

  Jitted by default: one compile is much cheaper than compiling each op eagerly.
  """
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  updates, states = [], [state]
  for g in grads:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    updates.append(u)
    states.append(state)
  return updates, states


def rand(key, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32)


# ---------------------------------------------------------------------------
# Factoring decision and state shapes
# ---------------------------------------------------------------------------


def test_factored_dims_rules():
  fd = af.factored_dims
  assert fd((512, 1024)) == ((0,), (1,))
  assert fd((64, 1024)) is None
  assert fd((512, 512)) == ((0,), (1,))
  assert fd((1024,)) is None
  assert fd((8, 512, 1024), ("layers", "embed", "mlp")) == ((1,), (2,))
  # 'layers' in the middle: factor embed (1024) and mlp (512).
  assert fd((1024, 8, 512), ("embed", "layers", "mlp")) == ((2,), (0,))
  # A big 'layers' dim is never factored, even where the size rule would pick it.
  assert fd((512, 256, 1024)) == ((0,), (2,))
  assert fd((512, 256, 1024), ("layers", "embed", "mlp")) == ((1,), (2,))
  assert fd((256, 512), ("layers", "embed")) is None
  assert fd((256, 512), ("experts", "embed"), batch_axis_names=("experts",)) is None
  assert fd((256, 512), ("experts", "embed")) == ((0,), (1,))
  # A mixture of experts' kernels: the 'expert' dim is a batch dim, each expert factored on its own.
  assert fd((256, 512, 1024), ("expert", "embed", "mlp")) == ((1,), (2,))
  assert fd((8, 1024, 512), ("expert", "mlp", "embed")) == ((2,), (1,))
  assert fd((8, 6, 512, 1024), ("layers", "expert", "embed", "mlp")) == ((2,), (3,))
  assert fd((8, 512, 1024), (None, None, None)) == ((1,), (2,))
  assert fd((4, 6), min_dim_size_to_factor=4) == ((0,), (1,))
  # Attention kernels (T5X's factor rules): 'embed' rows, heads x kv columns,
  # sizes counted per set (6 * 64 = 384 columns).
  assert fd((512, 6, 64), ("embed", "heads", "kv")) == ((0,), (1, 2))
  assert fd((6, 64, 512), ("heads", "kv", "embed")) == ((2,), (0, 1))
  assert fd((8, 512, 6, 64), ("layers", "embed", "heads", "kv")) == ((1,), (2, 3))
  assert fd((128, 4, 32), ("embed", "heads", "kv")) == ((0,), (1, 2))  # tiny: 128 x 128
  assert fd((512, 2, 32), ("embed", "heads", "kv")) is None  # 64 columns
  # Without names (or without an 'embed' dim): the two largest dims.
  assert fd((512, 6, 64)) is None
  assert fd((512, 6, 256), ("a", "b", "c")) == ((2,), (0,))


PARAMS = {
  "stacked": SDS((8, 512, 1024), jnp.float32),
  "middle": SDS((1024, 8, 512), jnp.float32),
  "narrow": SDS((64, 1024), jnp.float32),
  "big_layers": SDS((256, 512), jnp.float32),
  "plain": SDS((512, 1024), jnp.bfloat16),
}
AXES = {
  "stacked": ("layers", "embed", "mlp"),
  "middle": ("embed", "layers", "mlp"),
  "narrow": ("heads", "embed"),
  "big_layers": ("layers", "embed"),
  "plain": ("embed", "vocab"),
}


def test_state_shapes_with_layers_axis():
  state = jax.eval_shape(af.adafactor(1e-2, logical_axes=AXES).init, PARAMS)
  rms = state[0]
  assert isinstance(rms, af.FactoredRmsState)
  shapes = lambda tree: {k: tuple(v.shape) for k, v in tree.items()}
  assert shapes(rms.v_row) == {
    "stacked": (8, 512),
    "middle": (8, 512),
    "narrow": (),
    "big_layers": (),
    "plain": (512,),
  }
  assert shapes(rms.v_col) == {
    "stacked": (8, 1024),
    "middle": (1024, 8),
    "narrow": (),
    "big_layers": (),
    "plain": (1024,),
  }
  assert shapes(rms.v) == {"stacked": (), "middle": (), "narrow": (64, 1024), "big_layers": (256, 512), "plain": ()}
  # Statistics are float32 even for bf16 params.
  assert rms.v_row["plain"].dtype == jnp.float32


def test_state_logical_axes():
  tx = af.adafactor(schedules.rsqrt(), logical_axes=AXES, momentum=0.9)
  state = jax.eval_shape(tx.init, PARAMS)
  axes = af.adafactor_state_logical_axes(state, PARAMS, AXES)
  rms = axes[0]
  assert rms.count == ()
  assert rms.v_row == {
    "stacked": ("layers", "embed"),
    "middle": ("layers", "mlp"),
    "narrow": (),
    "big_layers": (),
    "plain": ("embed",),
  }
  assert rms.v_col == {
    "stacked": ("layers", "mlp"),
    "middle": ("embed", "layers"),
    "narrow": (),
    "big_layers": (),
    "plain": ("vocab",),
  }
  assert rms.v["narrow"] == ("heads", "embed") and rms.v["stacked"] == ()
  # The momentum buffer is sharded like its parameter.
  ema = [s for s in axes if isinstance(s, optax.EmaState)][0]
  assert ema.ema == AXES and ema.count == ()
  # Every state leaf gets exactly one name per dim.
  jax.tree.map(lambda leaf, names: (len(names) == leaf.ndim) or pytest.fail(f"{names} vs {leaf.shape}"), state, axes)

  with pytest.raises(ValueError, match="min_dim_size_to_factor"):
    af.adafactor_state_logical_axes(state, PARAMS, AXES, min_dim_size_to_factor=2048)


def test_bad_logical_axes_rejected():
  params = {"w": jnp.zeros((4, 6))}
  with pytest.raises(ValueError, match="have 3 names but the parameter has shape"):
    af.adafactor(0.1, logical_axes={"w": ("layers", "embed", "mlp")}).init(params)
  with pytest.raises(ValueError, match="same tree structure"):
    af.adafactor(0.1, logical_axes={"v": ("a", "b")}).init(params)


# ---------------------------------------------------------------------------
# Update math
# ---------------------------------------------------------------------------


def test_one_step_unfactored_by_hand():
  p = rand(0, (3, 4))
  g = rand(1, (3, 4))
  (update,), _ = run(af.adafactor(0.1), p, [g])
  p64, g64 = np.asarray(p, np.float64), np.asarray(g, np.float64)
  v = g64**2 + 1e-30  # beta2 = 0 at step 0
  u = g64 / np.sqrt(v)
  u = u / max(1.0, np.sqrt(np.mean(u**2)))
  expected = -0.1 * u * max(1e-3, np.sqrt(np.mean(p64**2)))
  np.testing.assert_allclose(update, expected, rtol=1e-5)
  # With a tiny parameter the scale is floored at epsilon2.
  (update,), _ = run(af.adafactor(0.1), jnp.zeros((3, 4)), [g])
  np.testing.assert_allclose(update, -0.1 * 1e-3 * np.sign(g64), rtol=1e-5)


@pytest.mark.parametrize(
  "shape, axes, plan, batch",
  [
    ((4, 6), None, ((0,), (1,)), ()),
    ((6, 4), None, ((1,), (0,)), ()),
    ((2, 4, 6), ("layers", "a", "b"), ((1,), (2,)), (0,)),
    ((6, 2, 4), ("a", "layers", "b"), ((2,), (0,)), (1,)),
    ((6, 2, 3), ("embed", "heads", "kv"), ((0,), (1, 2)), ()),
    ((2, 3, 6), ("heads", "kv", "embed"), ((2,), (0, 1)), ()),
    ((2, 6, 2, 3), ("layers", "embed", "heads", "kv"), ((1,), (2, 3)), (0,)),
  ],
)
def test_factored_updates_match_numpy(shape, axes, plan, batch):
  p = rand(2, shape)
  grads = [rand(10 + i, shape, scale=1.0 + i) for i in range(3)]
  tx = af.adafactor(0.05, min_dim_size_to_factor=4, logical_axes=axes)
  assert af.factored_dims(shape, axes, min_dim_size_to_factor=4) == plan
  updates, states = run(tx, p, grads)
  assert states[-1][0].v.shape == ()  # factored: no full second moment
  expected = reference_adafactor(p, grads, lr=0.05, plan=plan, batch=batch)
  for got, want in zip(updates, expected):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-9)


def test_scanned_layers_equal_unscanned():
  layers = [rand(20 + i, (4, 6), scale=0.1 * (i + 1)) for i in range(3)]
  grads = [[rand(30 + 3 * s + i, (4, 6), scale=10.0 ** (i - 1)) for i in range(3)] for s in range(2)]
  stacked = jnp.stack(layers)
  tx_scan = af.adafactor(0.1, min_dim_size_to_factor=4, logical_axes=("layers", "embed", "mlp"))
  up_scan, _ = run(tx_scan, stacked, [jnp.stack(g) for g in grads])
  tx_flat = af.adafactor(0.1, min_dim_size_to_factor=4)
  up_flat, _ = run(tx_flat, layers, grads)
  for s in range(2):
    np.testing.assert_allclose(up_scan[s], jnp.stack(up_flat[s]), rtol=1e-5, atol=1e-9)


def test_each_expert_is_its_own_parameter():
  """Experts stacked on an 'expert' axis take the steps they would take as separate kernels:
  their own factored statistics, update clipping and parameter scale (gradients an order of
  magnitude apart, so shared statistics would change every step)."""
  experts = [rand(50 + i, (4, 6), scale=0.1 * (i + 1)) for i in range(3)]
  grads = [[rand(60 + 3 * s + i, (4, 6), scale=10.0 ** (i - 1)) for i in range(3)] for s in range(2)]
  tx_stacked = af.adafactor(0.1, min_dim_size_to_factor=4, logical_axes=("expert", "embed", "mlp"))
  up_stacked, _ = run(tx_stacked, jnp.stack(experts), [jnp.stack(g) for g in grads])
  up_separate, _ = run(af.adafactor(0.1, min_dim_size_to_factor=4), experts, grads)
  for s in range(2):
    np.testing.assert_allclose(up_stacked[s], jnp.stack(up_separate[s]), rtol=1e-5, atol=1e-9)


def test_update_clipping_engages_when_rms_above_threshold():
  p = jnp.ones((4,))
  # A small gradient then a large one: v is still dominated by the new gradient
  # only through (1 - beta2) = 2^-0.8, so |g / sqrt(v)| = 2^0.4 > 1.
  grads = [jnp.full((4,), 1e-3), jnp.ones((4,))]
  unclipped, _ = run(af.adafactor(1.0, clipping_threshold=None, multiply_by_parameter_scale=False), p, grads)
  clipped, _ = run(af.adafactor(1.0, multiply_by_parameter_scale=False), p, grads)
  beta2 = 1 - 2.0**-0.8
  raw = 1.0 / np.sqrt(beta2 * 1e-6 + (1 - beta2))
  assert raw > 1.3
  np.testing.assert_allclose(unclipped[1], -raw * np.ones(4), rtol=1e-5)
  np.testing.assert_allclose(clipped[1], -np.ones(4), rtol=1e-5)
  # Threshold 0.5 halves the first-step update (rms 1 there).
  half, _ = run(af.adafactor(1.0, clipping_threshold=0.5, multiply_by_parameter_scale=False), p, grads[:1])
  np.testing.assert_allclose(half[0], -0.5 * np.ones(4), rtol=1e-5)


def test_momentum_weight_decay_and_schedule():
  p = jnp.full((3,), 2.0)
  g = jnp.array([1.0, -2.0, 0.5])
  lr = lambda step: 0.1 * (step + 1.0)
  tx = af.adafactor(lr, multiply_by_parameter_scale=False, momentum=0.9, weight_decay_rate=0.01)
  state = tx.init(p)
  u0, state = tx.update(g, state, p)
  # y = sign(g); m = 0.1 * lr(0) * y; update = -(m + 0.01 p)
  np.testing.assert_allclose(u0, -(0.1 * 0.1 * np.sign(g) + 0.01 * 2.0), rtol=1e-5)
  p1 = optax.apply_updates(p, u0)
  u1, _ = tx.update(g, state, p1)
  m1 = 0.9 * 0.01 * np.sign(g) + 0.1 * 0.2 * np.sign(g)  # lr(1) = 0.2, y = sign(g) again
  np.testing.assert_allclose(u1, -(m1 + 0.01 * np.asarray(p1)), rtol=1e-5)


def test_converges_on_quadratic():
  target = {"w": rand(40, (8, 8)), "b": rand(41, (5,))}
  params = jax.tree.map(jnp.zeros_like, target)
  loss = lambda q: sum(jnp.sum((q[k] - target[k]) ** 2) for k in q)
  tx = af.adafactor(
    schedules.linear_decay(0.5, decay_steps=200), multiply_by_parameter_scale=False, min_dim_size_to_factor=8
  )

  def step(carry, _):
    q, s = carry
    u, s = tx.update(jax.grad(loss)(q), s, q)
    return (optax.apply_updates(q, u), s), None

  (final, state), _ = jax.jit(lambda q: jax.lax.scan(step, (q, tx.init(q)), None, length=200))(params)
  assert state[0].v["w"].shape == ()  # the 8x8 weight was factored
  assert float(loss(params)) > 10.0
  assert float(loss(final)) < 1e-3


def test_jit_and_state_structure_stable():
  axes = {"k": ("layers", "embed", "mlp"), "s": ("embed",)}
  params = {"k": rand(50, (2, 4, 8)), "s": rand(51, (8,))}
  tx = af.adafactor(
    schedules.rsqrt(0.5, 10),
    min_dim_size_to_factor=4,
    momentum=0.5,
    weight_decay_rate=1e-3,
    logical_axes=axes,
  )
  grads = [jax.tree.map(lambda x, i=i: x * (i + 1.0), params) for i in range(3)]
  jitted, states = run(tx, params, grads, jit=True)
  ref = states[0]
  for s in states[1:]:
    assert jax.tree.structure(s) == jax.tree.structure(ref)
    same = jax.tree.map(lambda a, b: a.shape == b.shape and a.dtype == b.dtype, s, ref)
    assert all(jax.tree.leaves(same))
  eager, _ = run(tx, params, grads[:1], jit=False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), jitted[0], eager[0])


def test_argument_validation():
  with pytest.raises(ValueError, match="momentum"):
    af.adafactor(0.1, momentum=1.5)
  with pytest.raises(ValueError, match="clipping_threshold"):
    af.adafactor(0.1, clipping_threshold=0.0)
  with pytest.raises(TypeError, match="batch_axis_names"):
    af.adafactor(0.1, batch_axis_names="experts")


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(learning_rate=0.0), "adafactor.adafactor.learning_rate=0.0 must be a finite number > 0.0 (or a schedule"),
    (dict(learning_rate=float("nan")), "adafactor.adafactor.learning_rate=nan must be a finite number > 0.0"),
    (dict(decay_rate=0.0), "adafactor.adafactor.decay_rate=0.0 must be a finite number in (0.0, 1.0]"),
    (dict(decay_rate=1.5), "adafactor.adafactor.decay_rate=1.5 must be a finite number in (0.0, 1.0]"),
    (dict(decay_rate=True), "adafactor.adafactor.decay_rate=True must be a finite number in (0.0, 1.0], not a bool"),
    (
      dict(clipping_threshold=-1.0),
      "adafactor.adafactor.clipping_threshold=-1.0 must be None or a finite number > 0.0",
    ),
    (dict(clipping_threshold=float("inf")), "adafactor.adafactor.clipping_threshold=inf must be None or a finite"),
    (dict(epsilon1=-1e-30), "adafactor.adafactor.epsilon1=-1e-30 must be a finite number >= 0.0"),
    (dict(epsilon2=float("nan")), "adafactor.adafactor.epsilon2=nan must be a finite number >= 0.0"),
    (dict(epsilon2="1e-3"), "adafactor.adafactor.epsilon2='1e-3' must be a finite number >= 0.0, not a string"),
    (dict(min_dim_size_to_factor=0), "adafactor.adafactor.min_dim_size_to_factor=0 must be an integer >= 1"),
    (
      dict(min_dim_size_to_factor=128.0),
      "adafactor.adafactor.min_dim_size_to_factor=128.0 must be an integer >= 1, not a float",
    ),
    (
      dict(momentum=1.0),
      "adafactor.adafactor.momentum=1.0 must be None or a finite number in [0.0, 1.0) (None: no momentum)",
    ),
    (dict(weight_decay_rate=-0.1), "adafactor.adafactor.weight_decay_rate=-0.1 must be a finite number >= 0.0"),
    (dict(decay_offset=-1), "adafactor.adafactor.decay_offset=-1 must be an integer >= 0"),
  ],
)
def test_hyper_parameters_are_checked(kwargs, message):
  """Ranges, NaN, infinity and types; messages name the gin binding."""
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(ValueError) as e:
    af.adafactor(**kwargs)
  assert str(e.value).startswith(message), str(e.value)


def test_boundary_hyper_parameters_are_accepted():
  params = {"w": jnp.ones((4, 6))}
  for kwargs in (
    dict(decay_rate=1.0),
    dict(clipping_threshold=None),
    dict(epsilon1=0.0, epsilon2=0.0),
    dict(momentum=0.0),
    dict(weight_decay_rate=0.0),
    dict(learning_rate=schedules.constant(0.1)),
  ):
    tx = af.adafactor(**{"learning_rate": 0.1, **kwargs})
    updates, _ = tx.update({"w": jnp.ones((4, 6))}, tx.init(params), params)
    assert bool(jnp.all(jnp.isfinite(updates["w"]))), kwargs
  with pytest.raises(ValueError, match=r"^decay_rate=2 must be a finite number in \(0.0, 1.0\]"):
    af.scale_by_factored_rms_with_axes(decay_rate=2)


# ---------------------------------------------------------------------------
# AdamW wrapper (kept here: it has no test file of its own)
# ---------------------------------------------------------------------------


def test_adamw_matches_optax_and_clips():
  params = {"w": rand(60, (3, 4))}
  grads = [{"w": rand(61 + i, (3, 4), scale=5.0)} for i in range(2)]
  ours, _ = run(adamw_lib.adamw(1e-2, weight_decay=0.1), params, grads)
  theirs, _ = run(optax.adamw(1e-2, weight_decay=0.1), params, grads)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)
  clipped, _ = run(adamw_lib.adamw(1e-2, weight_decay=0.0, global_norm_clip=1.0), params, grads)
  manual, _ = run(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.0)), params, grads)
  np.testing.assert_allclose(clipped[1]["w"], manual[1]["w"], rtol=1e-6)
  tx = adamw_lib.adamw(schedules.constant(1e-3), global_norm_clip=1.0)
  shapes = {"w": SDS((8, 16), jnp.float32)}
  state = jax.eval_shape(tx.init, shapes)
  axes = adamw_lib.adamw_state_logical_axes(state, shapes, {"w": ("embed", "mlp")})
  adam_state = axes[1][0]
  assert adam_state.mu == {"w": ("embed", "mlp")} and adam_state.nu == {"w": ("embed", "mlp")}
  assert adam_state.count == ()
  with pytest.raises(ValueError, match="b2"):
    adamw_lib.adamw(1e-3, b2=1.0)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(learning_rate=-1e-3), "adamw.adamw.learning_rate=-0.001 must be a finite number > 0.0 (or a schedule"),
    (dict(b1=1.0), "adamw.adamw.b1=1.0 must be a finite number in [0.0, 1.0)"),
    (dict(b2=float("nan")), "adamw.adamw.b2=nan must be a finite number in [0.0, 1.0)"),
    (dict(eps=-1e-8), "adamw.adamw.eps=-1e-08 must be a finite number >= 0.0"),
    (dict(eps=float("inf")), "adamw.adamw.eps=inf must be a finite number >= 0.0"),
    (dict(weight_decay=-0.1), "adamw.adamw.weight_decay=-0.1 must be a finite number >= 0.0 (or a schedule"),
    (dict(weight_decay=True), "adamw.adamw.weight_decay=True must be a finite number >= 0.0, not a bool"),
    (dict(global_norm_clip=0.0), "adamw.adamw.global_norm_clip=0.0 must be None or a finite number > 0.0"),
  ],
)
def test_adamw_hyper_parameters_are_checked(kwargs, message):
  with pytest.raises(ValueError) as e:
    adamw_lib.adamw(**{"learning_rate": 1e-3, **kwargs})
  assert str(e.value).startswith(message), str(e.value)
  adamw_lib.adamw(1e-3, b1=0.0, eps=0.0, weight_decay=0.0, global_norm_clip=None)  # boundaries are valid


def test_per_slice_clipping_and_scaling_equal_optax_without_batch_dims():
  params = {"w": rand(40, (6, 5)), "zero": jnp.zeros((7,)), "b": rand(41, (3,), scale=1e-4)}
  updates = {"w": rand(42, (6, 5), scale=3.0), "zero": rand(43, (7,), scale=3.0), "b": rand(44, (3,), scale=2.0)}
  axes = {"w": ("embed", "mlp"), "zero": ("embed",), "b": None}
  for ours, theirs in [
    (af.clip_by_block_rms_with_axes(1.0, logical_axes=axes), optax.clip_by_block_rms(1.0)),
    (af.scale_by_param_block_rms_with_axes(1e-3, logical_axes=axes), optax.scale_by_param_block_rms(1e-3)),
  ]:
    got, _ = ours.update(updates, ours.init(params), params)
    want, _ = theirs.update(updates, theirs.init(params), params)
    for k in params:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=0)
      assert not np.allclose(got[k], updates[k])  # each leaf was clipped or scaled

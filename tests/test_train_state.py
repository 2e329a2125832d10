"""Tests for t5lite/train_state.py: layouts, fresh init, restore and its checks (8 simulated CPU devices)."""

import jax
import numpy as np
import pytest

from t5lite import checkpointing, inference, partitioning, train_state
from t5lite.models import model as model_lib, t5
from t5lite.optim import adafactor, adamw, schedules

P = jax.sharding.PartitionSpec
LENGTHS = {"inputs": 32, "targets": 16}
MLP_KERNEL = ("decoder", "layers_0", "mlp", "wi_0")  # ('embed', 'mlp'), [128, 512] in tiny


def tiny_model():
  return model_lib.EncoderDecoderModel(config=t5.T5Config(**dict(t5.T5_PRESETS["tiny"], vocab_size=512)))


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _initializer(model, optimizer=adafactor.adafactor, mesh=(1, 8, 1)):
  part = partitioning.Partitioner(*mesh)
  shapes = model.input_shapes(8, LENGTHS)
  return train_state.TrainStateInitializer(model, optimizer, schedules.constant(0.01), part, shapes)


def test_param_layout_is_the_one_training_and_inference_use():
  model = tiny_model()
  init = _initializer(model)
  layout = init.params
  assert layout.logical_axes == model.param_logical_axes(model.input_shapes(8, LENGTHS))
  kernel = _get(layout.abstract, MLP_KERNEL)
  assert kernel.shape == (128, 512) and kernel.sharding.spec == P("fsdp", "model")
  assert _get(layout.shardings, MLP_KERNEL) == kernel.sharding
  assert all(a.sharding is not None for a in jax.tree.leaves(layout.abstract))
  assert all(a.sharding is None for a in jax.tree.leaves(layout.unsharded()))
  # Inference lays the parameters out the same way on the same mesh.
  abstract, shardings = inference.Predictor.shardings(model, init.partitioner)
  assert jax.tree.leaves(shardings) == jax.tree.leaves(layout.shardings)
  assert [a.shape for a in jax.tree.leaves(abstract)] == [a.shape for a in jax.tree.leaves(layout.abstract)]


def test_optimizer_state_is_sharded_like_its_parameter_for_either_optimizer():
  model = tiny_model()
  # Adafactor: the factored row statistics of [embed, mlp] keep 'embed' (fsdp), the columns 'mlp'.
  init = _initializer(model, adafactor.adafactor)
  rms = init.abstract_opt_state[0]
  assert _get(rms.v_row, MLP_KERNEL).shape == (128,) and _get(rms.v_row, MLP_KERNEL).sharding.spec == P("fsdp")
  assert _get(rms.v_col, MLP_KERNEL).shape == (512,) and _get(rms.v_col, MLP_KERNEL).sharding.spec == P("model")
  assert rms.count.sharding.is_fully_replicated
  # AdamW: mu and nu like the parameters, with no rule of AdamW's own.
  init = _initializer(model, adamw.adamw)
  adam = init.abstract_opt_state[0]
  for moment in (adam.mu, adam.nu):
    assert [a.sharding for a in jax.tree.leaves(moment)] == jax.tree.leaves(init.params.shardings)
  assert not any("optimizer state kept replicated" in n for n in init.partitioner.notes)
  assert init.state_shardings.params == init.params.shardings


def test_fresh_state_is_placed_and_deterministic(tmp_path):
  init = _initializer(tiny_model())
  a, b = init.fresh(seed=3), init.fresh(seed=3)
  other = init.fresh(seed=4)
  assert int(a.step) == 0 and a.step.dtype == np.int32
  for x, y, z, want in zip(
    jax.tree.leaves(a.params),
    jax.tree.leaves(b.params),
    jax.tree.leaves(other.params),
    jax.tree.leaves(init.abstract_params),
  ):
    assert x.sharding == want.sharding and x.shape == want.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert any(
    not np.array_equal(np.asarray(x), np.asarray(z))
    for x, z in zip(jax.tree.leaves(a.params), jax.tree.leaves(other.params))
  )
  for x, want in zip(jax.tree.leaves(a.opt_state), jax.tree.leaves(init.abstract_opt_state)):
    assert x.sharding == want.sharding


def test_restore_latest_onto_another_mesh_with_its_data_position(tmp_path):
  model = tiny_model()
  init = _initializer(model)
  data = train_state.DataStream(batch_size=8, seed=0, spec={"task": "t", "lengths": (32, 16)})
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  assert init.restore_latest(ckpt, data) is None
  state = init.fresh(seed=0)
  ckpt.save(5, state.params, state.opt_state, data.position_meta(40))
  ckpt.wait()
  other = _initializer(model, mesh=(1, 1, 8))
  other.check_checkpoints(ckpt, data)  # same model, same stream: no error
  restored, rows = other.restore_latest(ckpt, data)
  assert rows == 40 and int(restored.step) == 5
  for x, y, want in zip(
    jax.tree.leaves(restored.params), jax.tree.leaves(state.params), jax.tree.leaves(other.abstract_params)
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert x.sharding == want.sharding
  # Another data stream is refused before anything is read, naming the difference.
  with pytest.raises(ValueError, match=r"another data stream.*task: checkpoint 't', this run 'u'"):
    other.check_checkpoints(ckpt, train_state.DataStream(batch_size=8, spec={"task": "u", "lengths": (32, 16)}))
  # Another optimizer's state is refused at restore.
  with pytest.raises(ValueError, match="optimizer state"):
    _initializer(model, adamw.adamw).restore_latest(ckpt, data)
  ckpt.close()


def test_data_stream_positions():
  data = train_state.DataStream(batch_size=16, seed=2, spec={"lengths": (4, 2)})
  assert data.spec == {"lengths": [4, 2]}  # as it reads back from JSON
  meta = data.position_meta(48)
  assert meta["rows_consumed"] == 48 and meta["batches_consumed"] == 3 and meta["seed"] == 2
  assert meta["data"] == {"lengths": [4, 2]} and meta["process_count"] == 1
  logged = []
  # A batch size changed since the checkpoint: same row, said once.
  assert data.rows_consumed(6, dict(meta, batch_size=8), "/run/checkpoints", logged.append) == 48
  assert logged == [
    "BATCH_SIZE changed from 8 to 16 since step 6: continuing at row 48 of the same data stream "
    "(no example skipped or repeated)."
  ]
  # A checkpoint from before row positions: batches x its batch size, with a note.
  logged.clear()
  assert data.rows_consumed(5, {"batches_consumed": 5, "batch_size": 16}, "/run/checkpoints", logged.append) == 80
  assert logged[0].startswith("note: checkpoint step 5 predates row positions; continuing at row 80")
  with pytest.raises(ValueError, match=r"^/run was trained on another data stream .*lengths: checkpoint \[4, 3\]"):
    data.rows_consumed(5, {"rows_consumed": 80, "data": {"lengths": [4, 3]}}, "/run/checkpoints")
  # No spec on either side: nothing to compare.
  assert train_state.DataStream(batch_size=16).rows_consumed(5, meta, "/run/checkpoints") == 48


def test_model_info_names_the_mesh_and_every_parameter(tmp_path):
  init = _initializer(tiny_model())
  init.write_model_info(str(tmp_path / "run"))
  info = (tmp_path / "run" / "model-info.txt").read_text()
  assert info == init.model_info()
  lines = info.splitlines()
  assert lines[0] == "mesh: {'data': 1, 'fsdp': 8, 'model': 1, 'expert': 1} over 8 devices in 1 process(es)"
  assert f"{partitioning.bytes_per_device(init.abstract_params):,} per device" in info
  assert "decoder/layers_0/mlp/wi_0  (128, 512)  ('embed', 'mlp')  P('fsdp', 'model')" in lines
  assert sum(1 for line in lines if "  P(" in line) == len(jax.tree.leaves(init.abstract_params))


def test_make_optimizer_passes_logical_axes_only_to_factories_that_take_them():
  axes = {"w": ("embed", "mlp")}
  seen = {}

  def with_axes(learning_rate, logical_axes=None):
    seen["axes"] = logical_axes
    return adamw.adamw(learning_rate)

  train_state.make_optimizer(with_axes, 0.1, axes)
  assert seen["axes"] is axes
  train_state.make_optimizer(adamw.adamw, 0.1, axes)  # takes none: not passed
  with pytest.raises(ValueError, match="learning_rate"):
    train_state.make_optimizer(adamw.adamw, -1.0, axes)

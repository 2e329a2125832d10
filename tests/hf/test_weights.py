"""t5lite.hf.weights: a Hugging Face checkpoint read straight into a mesh's shardings (8 simulated devices)."""

import numpy as np

from t5lite import convert, partitioning, train_state
from t5lite.hf import configs, files, names, weights
from tests.hf import hf_models


def test_sharded_import_reads_each_shard_from_its_slice(tmp_path):
  """On a data x fsdp x model = 2 x 2 x 2 mesh, with scanned layer stacks, every parameter lands in the run's
  sharding with the values of the single-device import, and a sharded tensor is never read whole: each read
  is one device's shard."""
  hf_dir = hf_models.save(hf_models.t5_model("v1_1", seed=7, num_heads=4, d_ff=64, vocab_size=128), tmp_path / "hf")
  with files.Checkpoint(hf_dir) as checkpoint:
    config = configs.to_t5lite(files.read_config(hf_dir), tied_output=False, overrides={"scan_layers": True})
    model = convert.model_for(config)
    single = weights.import_params(checkpoint, config, convert.abstract_params(model))

    part = partitioning.Partitioner(data=2, fsdp=2, model=2)
    layout = train_state.ParamLayout.create(model, part, model.input_shapes(1, {"inputs": 8, "targets": 8}))
    reads = []
    real_read = checkpoint.read

    def recording_read(name, index=()):
      out = real_read(name, index)
      reads.append((name, out.size, int(np.prod(checkpoint.shape(name)))))
      return out

    checkpoint.read = recording_read
    with part.context():
      sharded = weights.import_params(checkpoint, config, layout.abstract)

  flat_single, flat_sharded = names.flat_paths(single), names.flat_paths(sharded)
  flat_shardings = names.flat_paths(layout.shardings)
  assert set(flat_single) == set(flat_sharded)
  for path, value in flat_sharded.items():
    assert value.sharding == flat_shardings[path], path
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_single[path]))
  # The embedding [128 vocab, 32 embed] is split over model (vocab) and fsdp (embed): a quarter per read.
  embedding = [(size, full) for name, size, full in reads if name == "shared.weight"]
  assert embedding and all(size * 4 == full for size, full in embedding)
  spec = flat_shardings["encoder/layers/mlp/wi_0"].spec
  assert any(axis is not None for axis in spec)
  assert max(size / full for name, size, full in reads if "DenseReluDense.wi_0" in name) <= 0.25


def test_a_run_model_of_another_architecture_is_refused(tmp_path):
  """A Hugging Face directory read straight into a run checks the run's model against its config.json: a tied
  output (which would leave the checkpoint's own lm_head unread) or another activation is named, not run."""
  import dataclasses

  import pytest

  hf_dir = hf_models.save(hf_models.t5_model("v1_1", seed=13), tmp_path / "hf")
  with files.Checkpoint(hf_dir) as checkpoint:
    right = configs.to_t5lite(files.read_config(hf_dir), tied_output=weights.output_is_tied(checkpoint, "t5"))
  abstract = convert.abstract_params(convert.model_for(right))
  params = weights.import_directory(hf_dir, dataclasses.replace(right, dtype="bfloat16"), abstract)  # runtime field
  assert set(names.flat_paths(params)) == set(names.flat_paths(abstract))
  for change, message in (
    (dict(logits_via_embedding=True), "logits_via_embedding: checkpoint False, this run True"),
    (dict(mlp_activations=("silu", "linear")), r"mlp_activations: checkpoint \('gelu', 'linear'\), this run"),
  ):
    wrong = dataclasses.replace(right, **change)
    with pytest.raises(configs.UnsupportedModelError, match=message):
      weights.import_directory(hf_dir, wrong, convert.abstract_params(convert.model_for(wrong)))

"""t5lite.hf.names: slices of a t5lite parameter read from slices of the checkpoint tensor."""

import numpy as np
import pytest

from t5lite.hf import names


def _reader(full, calls):
  def read(name, index):
    calls.append(index)
    return full[name][index]

  return read


@pytest.mark.parametrize(
  "tensor, shape",
  [
    # A torch Linear weight [heads * d_kv, d_model] as t5lite's query [d_model, heads, d_kv].
    (names.Tensor("q", (12, 10), transpose=True), (10, 3, 4)),
    # T5's attention output [d_model, heads * d_kv] as t5lite's out [heads, d_kv, d_model].
    (names.Tensor("o", (10, 12), transpose=True), (3, 4, 10)),
    # GPT-2's fused c_attn (a Conv1D, [in, 3 * out]): the key's columns as [d_model, heads, d_kv].
    (names.Tensor("c_attn", (12, 36), columns=(12, 24)), (12, 3, 4)),
    # ... and its bias columns as [heads, d_kv].
    (names.Tensor("c_attn_bias", (36,), columns=(24, 36)), (3, 4)),
  ],
)
def test_slices_equal_the_slice_of_the_whole(tensor, shape):
  rng = np.random.default_rng(0)
  full = {tensor.name: rng.normal(size=tensor.hf_shape).astype(np.float32)}
  calls = []
  whole = tensor.read(_reader(full, calls), shape, ())
  # The whole parameter is the documented transform of the checkpoint tensor.
  block = full[tensor.name]
  if tensor.columns:
    block = block[..., tensor.columns[0] : tensor.columns[1]]
  expected = (block.T if tensor.transpose else block).reshape(shape)
  np.testing.assert_array_equal(whole, expected)
  # Every slice of it is read from a slice of the checkpoint no larger than it needs (along the first axis of
  # each split group), including slices of inner axes.
  for index in [
    (slice(2, 5),),
    (slice(0, 1), slice(1, 3)),
    (slice(None), slice(2, 3), slice(1, 3)),
    (slice(1, 2), slice(None), slice(3, 4)),
  ][: len(shape) + 1]:
    index = index[: len(shape)]
    calls.clear()
    part = tensor.read(_reader(full, calls), shape, index)
    np.testing.assert_array_equal(part, expected[index])
    read_elements = np.prod([s.stop - s.start for s in calls[0]]) if calls[0] else block.size
    assert read_elements < block.size or index[0] == slice(None)


def test_export_is_the_inverse_of_import():
  tensor = names.Tensor("o", (10, 12), transpose=True)
  value = np.arange(120, dtype=np.float32).reshape(3, 4, 10)
  back = tensor.to_checkpoint(value)
  assert back.shape == (10, 12)
  np.testing.assert_array_equal(tensor.read(lambda n, i: back[i], (3, 4, 10), ()), value)


def test_stacked_reads_only_the_layers_asked_for():
  layers = tuple(names.Tensor(f"l{i}", (4, 2), transpose=True) for i in range(5))
  full = {t.name: np.full((4, 2), i, np.float32) for i, t in enumerate(layers)}
  calls = []
  out = names.Stacked(layers).read(lambda n, i: (calls.append(n), full[n][i])[1], (5, 2, 4), (slice(1, 3),))
  assert calls == ["l1", "l2"]
  np.testing.assert_array_equal(out[:, 0, 0], [1, 2])


def test_a_shape_that_does_not_split_the_checkpoint_layout_is_refused():
  with pytest.raises(ValueError, match=r"shape \(10, 5, 4\) does not split the checkpoint layout \(10, 12\)"):
    names.Tensor("q", (12, 10), transpose=True).read(lambda n, i: np.zeros((12, 10)), (10, 5, 4), ())

"""Tests of t5lite.models.embeddings: T5's relative position buckets and bias."""

import jax.numpy as jnp
import numpy as np
import pytest

from t5lite.models import embeddings


# Hand-computed T5 buckets for relative_position = key_pos - query_pos with
# 32 buckets and max distance 128. Bidirectional: 16 buckets per direction,
# 8 exact ones, then bucket 8 + floor(8 * log(n / 8) / log(16)); keys after
# the query add 16. Causal: 16 exact buckets, then
# 16 + floor(16 * log(n / 16) / log(8)); keys after the query -> 0.
BIDIRECTIONAL = {
  0: 0,
  -1: 1,
  -7: 7,
  -8: 8,
  -12: 9,
  -16: 10,
  -20: 10,
  -24: 11,
  -32: 12,
  -48: 13,
  -64: 14,
  -90: 14,
  -100: 15,
  -127: 15,
  -128: 15,
  -1000: 15,
  1: 17,
  7: 23,
  8: 24,
  16: 26,
  32: 28,
  127: 31,
  1000: 31,
}
CAUSAL = {
  5: 0,
  1: 0,
  0: 0,
  -1: 1,
  -15: 15,
  -16: 16,
  -20: 17,
  -24: 19,
  -32: 21,
  -64: 26,
  -100: 30,
  -127: 31,
  -128: 31,
  -5000: 31,
}


@pytest.mark.parametrize("bidirectional,table", [(True, BIDIRECTIONAL), (False, CAUSAL)])
def test_relative_position_bucket_table(bidirectional, table):
  rel = np.array(list(table), np.int32)
  want = np.array(list(table.values()), np.int32)
  got_np = embeddings.relative_position_bucket(rel, bidirectional, 32, 128)
  assert isinstance(got_np, np.ndarray)
  np.testing.assert_array_equal(got_np, want)
  got_jnp = embeddings.relative_position_bucket(jnp.asarray(rel), bidirectional, 32, 128)
  np.testing.assert_array_equal(np.asarray(got_jnp), want)


def test_relative_position_bias_positions_match_static():
  module = embeddings.RelativePositionBias(num_heads=3, num_buckets=8, max_distance=16, bidirectional=True)
  table = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)), jnp.float32)
  params = {"params": {"rel_embedding": table}}
  static = module.apply(params, 5, 5)
  assert static.shape == (1, 3, 5, 5)
  # Row 0: arange positions; row 1: a packed row whose second segment restarts at 0.
  pos = jnp.asarray([[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]], jnp.int32)
  dyn = module.apply(params, 5, 5, pos, pos)
  assert dyn.shape == (2, 3, 5, 5)
  np.testing.assert_allclose(dyn[0], static[0])
  np.testing.assert_allclose(dyn[1, :, 2:, 2:], static[0, :, :3, :3])
  # 8 buckets, bidirectional: 4 per side, 2 exact. Key 2 seen from query 3
  # (relative position -1) -> bucket 1; key 1 from query 0 (+1) -> 4 + 1 = 5.
  np.testing.assert_allclose(static[0, :, 3, 2], table[:, 1])
  np.testing.assert_allclose(static[0, :, 0, 1], table[:, 5])

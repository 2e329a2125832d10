"""Sparse mixture-of-experts feed-forward block (Switch Transformer, ST-MoE).

A float32 router scores each token against `num_experts` experts; each token
goes to its top-k experts (k = 1: Switch routing, Fedus et al. 2021; k = 2:
GShard / ST-MoE) while they have room. Experts are the model's own MLP
(`mlp_activations`, T5 v1.1's gated GELU by default) with a leading 'expert'
axis on every kernel, which the logical-axis rules put on the 'expert' mesh
axis. Written by hand: flax and optax have no MoE layer.

Routing works in groups, and a group is one sequence (one row of the batch,
as MaxText groups tokens): capacities, dropped tokens and the auxiliary losses
depend only on the row, never on how the batch is sharded or split into
microbatches, so a run gives the same losses on any mesh.

Per group of S tokens, with E experts and top-k routing (t5lite's choices
where the papers leave room, written down in docs/architecture.md):
  * capacity C = ceil(capacity_factor * k * S / E), at least
    min_expert_capacity and at most S;
  * priority: every token's first choice in sequence order, then every
    token's second choice (GShard); an assignment past its expert's C is
    dropped and the token keeps only its residual (counted in the metrics);
  * gates: the router probability of the chosen expert (Switch); with k > 1
    the k probabilities renormalised to sum to 1 (GShard);
  * padding (token id 0 outside a sequence, see `stacks`) is never routed and
    is left out of the losses and metrics;
  * load-balancing loss E * sum_e f_e P_e (Switch eq. 4; f_e: fraction of the
    group's tokens whose top-k includes e, before capacity; P_e: their mean
    router probability for e): 1 for top-1 and perfectly balanced routing,
    k for top-k;
  * router z-loss mean_tokens(logsumexp(logits)^2) (ST-MoE eq. 5).

Dispatch and combine are einsums with one-hot [G, S, E, C] tensors, as in
GShard and T5X (flaxformer): the expert inputs [E, G, C, d] are constrained
to ('expert', 'expert_group', ...), so that with the batch sharded over
('data', 'fsdp', 'expert') XLA's SPMD partitioner turns the reshard into the
all-to-all. Each layer sows its per-group statistics into the
'intermediates' collection; `collect_stats` gathers them for the loss and
the train metrics (`metric_sums`, `summarize`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite.models import activations, params

Array = jax.Array
STATS = "moe_stats"  # the sow name in the 'intermediates' collection
ROUTER_INIT = params.Normal(0.02)  # flaxformer's router initialiser: small logits, near-uniform routing at first


def expert_capacity(
  tokens_per_group: int, num_experts: int, num_selected: int, capacity_factor: float, min_capacity: int
) -> int:
  """Slots per expert and group: ceil(capacity_factor * k * S / E), clipped to [min_capacity, S].

  E.g. S=8 tokens, E=4, k=1, factor 1.25 -> ceil(2.5) = 3. A group of one
  token (a decoding step) gets capacity 1, so decoding never drops a token.
  """
  capacity = math.ceil(capacity_factor * num_selected * tokens_per_group / num_experts)
  return int(min(max(capacity, min_capacity), tokens_per_group))


def route(logits: Array, valid: Optional[Array], num_selected: int, capacity: int) -> dict[str, Array]:
  """Top-k token-choice routing with expert capacity, per group.

  Args:
    logits: float32 router logits [G, S, E] (G groups of S tokens).
    valid: bool [G, S], False for padding (never routed); None: all valid.
    num_selected: k, 1 <= k <= E.
    capacity: slots per expert and group (`expert_capacity`).

  Returns a dict of float32 arrays:
    dispatch [G, S, E, C]: 1 where token s fills slot c of expert e;
    combine [G, S, E, C]: dispatch times the token's gate for that expert;
    aux_loss [G]: the load-balancing loss of each group;
    z_loss [G]: the router z-loss of each group;
    tokens [G]: valid tokens; dropped [G]: assignments over capacity
      (of tokens * k); entropy [G]: summed router entropy (nats) of the valid
      tokens; expert_counts [E]: assignments per expert before capacity,
      summed over the groups.
  """
  logits = logits.astype(jnp.float32)
  g, s, e = logits.shape
  if valid is None:
    valid = jnp.ones((g, s), bool)
  validf = valid.astype(jnp.float32)
  tokens = jnp.sum(validf, axis=1)
  denom = jnp.maximum(tokens, 1.0)
  probs = jax.nn.softmax(logits, axis=-1)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  z_loss = jnp.sum(jnp.square(log_z) * validf, axis=1) / denom
  entropy = -jnp.sum(probs * jax.nn.log_softmax(logits, axis=-1), axis=-1)

  gates, index = jax.lax.top_k(probs, num_selected)  # [G, S, k]; ties: the lower expert index
  if num_selected > 1:
    gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
  choice = jax.nn.one_hot(index, e, dtype=jnp.float32) * validf[..., None, None]  # [G, S, k, E]

  routed = jnp.max(choice, axis=2)  # [G, S, E]: e among the token's top-k
  fraction = jnp.sum(routed, axis=1) / denom[:, None]
  mean_prob = jnp.sum(probs * validf[..., None], axis=1) / denom[:, None]
  aux_loss = e * jnp.sum(fraction * mean_prob, axis=-1)

  # Slots in priority order: choice 0 of tokens 0..S-1, then choice 1, ...
  by_priority = jnp.swapaxes(choice, 1, 2).reshape(g, num_selected * s, e)
  position = (jnp.cumsum(by_priority, axis=1) - 1.0) * by_priority  # slot index where chosen, else 0
  kept = by_priority * (position < capacity)
  slot = jax.nn.one_hot(position.astype(jnp.int32), capacity, dtype=jnp.float32) * kept[..., None]  # [G, kS, E, C]
  slot = jnp.swapaxes(slot.reshape(g, num_selected, s, e, capacity), 1, 2)  # [G, S, k, E, C]
  dispatch = jnp.sum(slot, axis=2)
  combine = jnp.sum(slot * gates[..., None, None], axis=2)
  return {
    "dispatch": dispatch,
    "combine": combine,
    "aux_loss": aux_loss,
    "z_loss": z_loss,
    "tokens": tokens,
    "dropped": jnp.sum(by_priority, axis=(1, 2)) - jnp.sum(kept, axis=(1, 2)),
    "entropy": jnp.sum(entropy * validf, axis=1),
    "expert_counts": jnp.sum(choice, axis=(0, 1, 2)),
  }


class MoeBlock(nn.Module):
  """Mixture-of-experts MLP: x [batch, length, d_model] -> same shape, in the activation dtype.

  `config`: a TransformerConfig with num_experts > 0 (its d_ff,
  mlp_activations, use_bias and MoE fields). Parameters: `router` [d_model,
  E] ('embed', 'unmodeled'), N(0, 0.02^2) as in flaxformer, float32 and used in float32; per expert the
  dense MLP's kernels with a leading expert axis: `wi` or `wi_0`, `wi_1`, ...
  [E, d_model, d_ff] ('expert', 'embed', 'mlp'), `wo` [E, d_ff, d_model]
  ('expert', 'mlp', 'embed'), initialised per expert like the dense ones
  (fan-in of d_model / d_ff); with use_bias `*_bias` [E, d_ff] / [E, d_model].
  `valid` bool [batch, length]: False for padding, which is not routed and
  gets a zero output. Not `deterministic`: train capacity factor, router
  jitter and expert dropout (from the 'dropout' rng); otherwise the eval
  capacity factor. Sows one dict of per-layer sums (see `route`) under
  'intermediates'/'moe_stats' when that collection is mutable.
  """

  config: Any

  @nn.compact
  def __call__(self, x: Array, valid: Optional[Array] = None, deterministic: bool = True) -> Array:
    cfg = self.config
    dt = jnp.dtype(cfg.dtype)
    b, length, d_model = x.shape
    e, k = cfg.num_experts, cfg.num_selected_experts
    router = params.param(self, "router", ROUTER_INIT, (d_model, e), ("embed", "unmodeled"))
    router_in = x.astype(jnp.float32)
    if not deterministic and cfg.router_jitter_noise > 0:
      eps = cfg.router_jitter_noise
      router_in = router_in * jax.random.uniform(
        self.make_rng("dropout"), router_in.shape, jnp.float32, 1.0 - eps, 1.0 + eps
      )
    router_in = nn.with_logical_constraint(router_in, ("batch", "length", "embed"))
    logits = jnp.einsum("gsd,de->gse", router_in, router, precision=jax.lax.Precision.HIGHEST)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "unmodeled"))
    factor = cfg.eval_capacity_factor if deterministic else cfg.train_capacity_factor
    capacity = expert_capacity(length, e, k, factor, cfg.min_expert_capacity)
    r = route(logits, valid, k, capacity)

    x = x.astype(dt)
    expert_in = jnp.einsum("gsec,gsd->egcd", r["dispatch"].astype(dt), x)
    expert_in = nn.with_logical_constraint(expert_in, ("expert", "expert_group", "length", "embed"))
    acts = cfg.mlp_activations
    names = ["wi"] if len(acts) == 1 else [f"wi_{i}" for i in range(len(acts))]
    kernel_init = params.kernel_init(in_axis=-2, out_axis=-1, batch_axis=(0,))
    h = None
    for name, act in zip(names, acts):
      wi = params.param(self, name, kernel_init, (e, d_model, cfg.d_ff), ("expert", "embed", "mlp"))
      y = jnp.einsum("egcd,edf->egcf", expert_in, wi.astype(dt))
      if cfg.use_bias:
        bias = params.param(self, f"{name}_bias", params.zeros_init, (e, cfg.d_ff), ("expert", "mlp"))
        y = y + bias.astype(dt)[:, None, None, :]
      y = activations.activation(act, y)
      h = y if h is None else h * y
    h = nn.with_logical_constraint(h, ("expert", "expert_group", "length", "mlp"))
    rate = cfg.dropout_rate if cfg.expert_dropout_rate is None else cfg.expert_dropout_rate
    h = nn.Dropout(rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    wo = params.param(self, "wo", kernel_init, (e, cfg.d_ff, d_model), ("expert", "mlp", "embed"))
    out = jnp.einsum("egcf,efd->egcd", h, wo.astype(dt))
    if cfg.use_bias:
      out = (
        out
        + params.param(self, "wo_bias", params.zeros_init, (e, d_model), ("expert", "embed")).astype(dt)[
          :, None, None, :
        ]
      )
    out = nn.with_logical_constraint(out, ("expert", "expert_group", "length", "embed"))
    y = jnp.einsum("gsec,egcd->gsd", r["combine"].astype(dt), out)
    stats = {name: jnp.sum(r[name]) for name in ("aux_loss", "z_loss", "tokens", "dropped", "entropy")}
    stats["expert_counts"] = r["expert_counts"]
    stats["layers"] = jnp.float32(1.0)
    self.sow("intermediates", STATS, stats)
    return nn.with_logical_constraint(y, ("batch", "length", "embed"))


def collect_stats(intermediates: Mapping[str, Any]) -> Optional[dict[str, Array]]:
  """Sums of every MoE layer's sown statistics, or None when there are none.

  `intermediates`: the 'intermediates' collection of a forward pass (each
  layer's dict, stacked along leading axes when layers are scanned). Returns
  float32 scalars aux_loss, z_loss (summed over groups and layers), tokens,
  dropped, entropy, layers (the number of MoE layers applied), and
  expert_counts [num_moe_layers, E].
  """
  found = []

  def visit(tree):
    if isinstance(tree, Mapping):
      for key, value in tree.items():
        if key == STATS:
          found.extend(value if isinstance(value, tuple) else (value,))
        else:
          visit(value)

  visit(intermediates)
  if not found:
    return None
  out = {name: sum(jnp.sum(f[name]) for f in found) for name in ("aux_loss", "z_loss", "tokens", "dropped", "entropy")}
  out["layers"] = sum(jnp.sum(f["layers"]) for f in found)
  counts = [f["expert_counts"].reshape(-1, f["expert_counts"].shape[-1]) for f in found]
  out["expert_counts"] = jnp.concatenate(counts, axis=0)
  return out


def metric_sums(stats: Mapping[str, Array], groups: int) -> dict[str, Array]:
  """Statistics of one forward pass (`collect_stats`) as sums that add up across microbatches and
  batches: aux_loss and z_loss averaged over the MoE layers (still summed over the groups),
  tokens, dropped, entropy, expert_counts [num_moe_layers, E], and `groups`, the rows of the
  batch (float32). `summarize` turns their totals into metrics."""
  layers = jnp.maximum(stats["layers"], 1.0)
  return {
    "aux_loss": stats["aux_loss"] / layers,
    "z_loss": stats["z_loss"] / layers,
    "tokens": stats["tokens"],
    "dropped": stats["dropped"],
    "entropy": stats["entropy"],
    "expert_counts": stats["expert_counts"],
    "groups": jnp.float32(groups),
  }


def summarize(sums: Mapping[str, Array]) -> dict[str, Array]:
  """Metrics from `metric_sums` totals (summed over microbatches, or over eval batches).

  Returns 'moe/aux_loss' and 'moe/router_z_loss' (means over groups and MoE
  layers, before their factors), 'moe/dropped_fraction' (assignments over
  capacity / all assignments), 'moe/expert_load_min' / '_max' (the smallest
  and largest fraction of a layer's assignments one expert received, before
  capacity; 1 / E when balanced), 'moe/router_entropy' (nats per token).
  """
  groups = jnp.maximum(sums["groups"], 1.0)
  counts = sums["expert_counts"]
  load = counts / jnp.maximum(jnp.sum(counts, axis=-1, keepdims=True), 1.0)
  assignments = jnp.maximum(jnp.sum(counts), 1.0)
  return {
    "moe/aux_loss": sums["aux_loss"] / groups,
    "moe/router_z_loss": sums["z_loss"] / groups,
    "moe/dropped_fraction": sums["dropped"] / assignments,
    "moe/expert_load_min": jnp.min(load),
    "moe/expert_load_max": jnp.max(load),
    "moe/router_entropy": sums["entropy"] / jnp.maximum(sums["tokens"], 1.0),
  }

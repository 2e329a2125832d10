"""Parameter-efficient fine-tuning: which parameters train, and splitting a parameter tree by it.

A model whose config sets `lora` (t5lite.models.lora) or `prompt_tuning`
(t5lite.models.prompt_tuning) trains only its adapters: the parameters named
`*_lora_a`, `*_lora_b` and `soft_prompt`. Everything else is the frozen base.
The train step differentiates with respect to the trainable part only and the
optimizer sees only that part, so neither gradients nor optimizer state exist
for the base (docs/architecture.md, "Parameter-efficient fine-tuning").
Trees here are nested dicts of arrays (or ShapeDtypeStructs, or logical-axis
tuples, or shardings: any leaves), keyed like the model's parameters.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from t5lite.models import lora, prompt_tuning

PyTree = Any


def enabled(config: Any) -> bool:
  """Whether a model config asks for parameter-efficient fine-tuning (lora or prompt_tuning set)."""
  return getattr(config, "lora", None) is not None or getattr(config, "prompt_tuning", None) is not None


def describe(config: Any) -> dict:
  """What an adapter checkpoint's meta records of the adapters' configuration (JSON): {'lora': {'rank',
  'alpha'} or None, 'prompt_tuning': {'length'} or None}.

  The LoRA scale alpha / r changes the adapted model's outputs but is not in
  the parameters' shapes, so serving adapters under another alpha would be
  silently wrong (`inference.Predictor.use_adapters` compares these). Which
  kernels are adapted is in the shapes; dropout and initialisation only
  matter in training.
  """
  lora_cfg = getattr(config, "lora", None)
  prompt_cfg = getattr(config, "prompt_tuning", None)
  return {
    "lora": None if lora_cfg is None else {"rank": int(lora_cfg.rank), "alpha": float(lora_cfg.alpha)},
    "prompt_tuning": None if prompt_cfg is None else {"length": int(prompt_cfg.length)},
  }


def summary(described: Mapping[str, Any]) -> str:
  """`describe`'s record in words: 'LoRA adapters (rank 8, alpha 16.0)', 'a soft prompt of 20 vectors', both, or 'no adapters'."""
  parts = []
  if described.get("lora"):
    parts.append(f"LoRA adapters (rank {described['lora']['rank']}, alpha {described['lora']['alpha']})")
  if described.get("prompt_tuning"):
    parts.append(f"a soft prompt of {described['prompt_tuning']['length']} vectors")
  return " and ".join(parts) or "no adapters"


def is_trainable(path: Sequence[str]) -> bool:
  """Whether the parameter at `path` (its names from the root) is an adapter or a soft prompt."""
  name = str(path[-1])
  return lora.is_adapter(name) or name == prompt_tuning.PARAM_NAME


def _is_node(x: Any) -> bool:
  return isinstance(x, Mapping) or (hasattr(x, "items") and hasattr(x, "keys") and not hasattr(x, "shape"))


def _split(tree: PyTree, keep: Callable[[tuple], bool], path: tuple = ()) -> dict:
  out = {}
  for k, v in tree.items():
    p = path + (str(k),)
    if _is_node(v):
      sub = _split(v, keep, p)
      if sub:
        out[k] = sub
    elif keep(p):
      out[k] = v
  return out


def trainable(tree: PyTree) -> dict:
  """The adapters (and soft prompt) of a parameter-shaped tree, as a nested dict (empty subtrees dropped)."""
  return _split(tree, is_trainable)


def frozen(tree: PyTree) -> dict:
  """Everything but the adapters: the base model's parameters, as a nested dict."""
  return _split(tree, lambda p: not is_trainable(p))


def combine(a: PyTree, b: PyTree) -> dict:
  """The union of two disjoint nested dicts (e.g. `frozen(t)` and `trainable(t)` give back `t`'s contents).

  Raises:
    ValueError: both hold a leaf at the same path.
  """
  out = dict(a)
  for k, v in b.items():
    if k in out:
      if not (_is_node(out[k]) and _is_node(v)):
        raise ValueError(f"parameter {k!r} is in both trees being combined")
      out[k] = combine(out[k], v)
    else:
      out[k] = v
  return out


def paths(tree: PyTree, path: tuple = ()) -> list[tuple[str, ...]]:
  """The leaf paths of a nested dict."""
  out = []
  for k, v in tree.items():
    p = path + (str(k),)
    out.extend(paths(v, p) if _is_node(v) else [p])
  return out

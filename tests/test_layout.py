"""The package's layout rules (docs/architecture.md, "Layout and import direction").

Imports point one way, down the flow: every import of a t5lite module, at the
top of a file or inside a function, goes to a module of the same or a lower
layer, and the module graph has no cycle. Read from the source with `ast`, so
lazy imports count too.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "t5lite")

# Layers, from the bottom. A module not listed by name takes its package's layer.
LAYERS = (
  # 0: no t5lite dependencies beyond each other: checks, process settings, kernels
  (
    "t5lite.checks",
    "t5lite.mesh_shape",
    "t5lite.runtime",
    "t5lite.distributed",
    "t5lite.gin_paths",
    "t5lite.throughput",
    "t5lite.metrics",
    "t5lite.summaries",
    "t5lite.kernels",
  ),
  # 1: data and the model-input feature format
  ("t5lite.data", "t5lite.features"),
  # 2: models, losses, decoding
  ("t5lite.models", "t5lite.losses", "t5lite.decoding"),
  # 3: optimizers
  ("t5lite.optim",),
  # 4: meshes and checkpoints (Hugging Face checkpoints too)
  ("t5lite.partitioning", "t5lite.checkpointing", "t5lite.hf"),
  # 5: the train state
  ("t5lite.train_state",),
  # 6: the training loop and inference
  ("t5lite.trainer", "t5lite.inference"),
  # 7: evaluation (used by train and eval) and checkpoint conversion
  ("t5lite.evaluation", "t5lite.convert", "t5lite.merge"),
  # 8: the command line under gin
  ("t5lite.gin_entry",),
  # 9: entry points
  ("t5lite.train", "t5lite.eval", "t5lite.infer", "t5lite.cli"),
  # 10: benchmarks (programs over the whole library)
  ("t5lite.bench",),
)


def _modules() -> dict[str, str]:
  out = {}
  for root, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
        out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
  """The t5lite modules (and 'gin') a file imports, anywhere in it."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from t5lite.data import vocab` imports the module t5lite.data.vocab.
      names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
    else:
      continue
    for name in names:
      if name.split(".")[0] == "gin":
        found.add("gin")
      while name.startswith("t5lite") and name not in modules:
        name = name.rpartition(".")[0]
      if name in modules:
        found.add(name)
  return found


def _layer(module: str) -> int:
  best, best_len = None, -1
  for i, members in enumerate(LAYERS):
    for m in members:
      if (module == m or module.startswith(m + ".")) and len(m) > best_len:
        best, best_len = i, len(m)
  if best is None:
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layout.py")
  return best


MODULES = _modules()
GRAPH = {m: _imports(p, MODULES) - {m} for m, p in MODULES.items()}


def test_every_import_points_down_or_sideways():
  upward = [
    f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
    for m, targets in sorted(GRAPH.items())
    if m != "t5lite"
    for t in sorted(targets - {"gin", "t5lite"})
    if _layer(t) > _layer(m)
  ]
  assert upward == []


def test_no_entry_point_imports_another():
  entry = set(LAYERS[9])
  assert sorted(f"{m} imports {t}" for m in entry for t in GRAPH[m] & entry) == []


def test_the_module_graph_has_no_cycle():
  # Package __init__ files import their own modules; a module importing its
  # package's __init__ is not a cycle of jobs.
  graph = {m: {t for t in ts if t != "gin" and not m.startswith(t + ".")} for m, ts in GRAPH.items()}
  state: dict[str, int] = {}
  cycles = []

  def visit(m, stack):
    state[m] = 1
    for t in sorted(graph[m]):
      if state.get(t) == 1:
        cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
      elif t not in state:
        visit(t, stack + [t])
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert cycles == []


def test_gin_is_imported_only_at_the_edges():
  # gin_entry: the command line; inference.read_run_config: reads a run's config.gin.
  assert sorted(m for m, targets in GRAPH.items() if "gin" in targets) == ["t5lite.gin_entry", "t5lite.inference"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_600_lines(module):
  with open(MODULES[module], encoding="utf-8") as f:
    assert sum(1 for _ in f) <= 600


def test_the_rules_catch_an_upward_import(tmp_path):
  """The checks above read lazy imports and `from package import module` forms."""
  path = tmp_path / "probe.py"
  path.write_text("def f():\n  from t5lite import trainer\n  from t5lite.data import vocab\n  import gin.config\n")
  found = _imports(str(path), MODULES)
  assert found == {"t5lite.trainer", "t5lite.data.vocab", "gin"}
  assert _layer("t5lite.trainer") > _layer("t5lite.models.t5") > _layer("t5lite.data.vocab")

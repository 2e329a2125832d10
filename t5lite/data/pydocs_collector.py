"""The program that collects the pydocs corpus, run in a child Python process by file path.

`pydocs_subprocess.collect_documents` starts it as `python -S -B -P <this file>
CONFIG_JSON`; it prints {"python": sys.version, "documents": [[name, text],
...]} as JSON on stdout. Standard library only, and never imported by t5lite:
what it collects must depend on the Python build alone.
"""

import enum
import importlib
import inspect
import json
import os
import pkgutil
import re
import sys
import warnings


def quietly(fn, *args, default=None):
  """fn(*args), or `default` when it raises anything but KeyboardInterrupt.

  Importing and inspecting arbitrary modules can raise anything, SystemExit included.
  """
  try:
    return fn(*args)
  except KeyboardInterrupt:
    raise
  except BaseException:  # noqa: BLE001
    return default


def collect(skip_modules, skip_components, no_submodules, extra_modules, progress_marker):
  """The corpus as sorted [name, text] lists: one per public standard library module, one per pydoc topic.

  Before each import it writes `progress_marker` and the module's name on
  stderr, so that the parent can tell which import killed the process.
  """
  address_re = re.compile(r" at 0x[0-9a-fA-F]+")
  blank_lines_re = re.compile(r"\n{3,}")

  def clean(text):
    text = inspect.cleandoc(text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = address_re.sub("", text)
    return blank_lines_re.sub("\n\n", text).strip()

  def own_doc(obj):
    doc = quietly(getattr, obj, "__doc__")
    return doc if isinstance(doc, str) and doc.strip() else None

  class Placeholder:
    """A default value shown by name (its repr is the name)."""

    def __init__(self, text):
      self.text = text

    def __repr__(self):
      return self.text

  # Defaults whose value depends on the machine, not on Python: shown by
  # the expression that produces them.
  volatile_objects = {id(os.environ): "os.environ"}
  volatile_strings = {os.getcwd(): "os.getcwd()"}
  for attr in ("executable", "prefix", "exec_prefix", "base_prefix", "base_exec_prefix"):
    value = getattr(sys, attr, None)
    if isinstance(value, str) and value:
      volatile_strings[value] = f"sys.{attr}"

  def shown_default(value):
    if id(value) in volatile_objects:
      return Placeholder(volatile_objects[id(value)])
    if isinstance(value, str) and value in volatile_strings:
      return Placeholder(volatile_strings[value])
    text = quietly(repr, value)
    if text is None or len(text) > 200:
      return Placeholder("...")
    return value

  def signature_text(obj):
    sig = inspect.signature(obj)
    params = [
      p if p.default is p.empty else p.replace(default=shown_default(p.default)) for p in sig.parameters.values()
    ]
    return address_re.sub("", str(sig.replace(parameters=params)))

  def signature(obj):
    return quietly(signature_text, obj, default="")

  def skipped(name):
    parts = name.split(".")
    if any(".".join(parts[:k]) in skip_modules for k in range(1, len(parts) + 1)):
      return True
    return any(p.startswith("_") or p in skip_components for p in parts[1:])

  def try_import(name):
    # Tells the parent which import was running if this process dies.
    os.write(2, f"\n{progress_marker}{name}\n".encode("utf-8"))
    return quietly(importlib.import_module, name)

  # 1. Find and import the modules, in sorted order.
  modules = {}

  def visit(name):
    if name in modules or skipped(name):
      return
    module = try_import(name)
    if module is None:
      return
    modules[name] = module
    path = getattr(module, "__path__", None)
    if path is None or name in no_submodules:
      return
    children = quietly(lambda: sorted(info.name for info in pkgutil.iter_modules(path)))
    if children is None:
      return
    for child in children:
      if not child.startswith("_"):
        visit(f"{name}.{child}")

  top_level = sorted(n for n in sys.stdlib_module_names if not n.startswith("_"))
  for name in top_level:
    visit(name)
  for name in extra_modules:
    if skipped(name):
      continue
    module = try_import(name)
    if module is not None:
      modules[name] = module
  documented = {m.__name__ for m in modules.values()} | set(modules)

  # Docs that every class inherits or that C slots copy from object/type
  # (e.g. "Initialize self.  See help(type(self)) for accurate signature.").
  generic_docs = set()
  for base in (object, type):
    for attr in dir(base):
      doc = own_doc(getattr(base, attr, None))
      if doc:
        generic_docs.add(doc)

  def inherited(cls, attr, doc):
    if doc in generic_docs:
      return True
    for base in cls.__mro__[1:]:
      if attr in base.__dict__ and own_doc(base.__dict__[attr]) == doc:
        return True
    return False

  def member_sections(cls, qualname):
    sections = []
    members = getattr(cls, "_member_map_", {}) if isinstance(cls, enum.EnumMeta) else {}
    for attr in sorted(vars(cls)):
      if attr.startswith("_") and attr not in ("__init__", "__call__"):
        continue
      if attr in members:
        continue
      value = vars(cls)[attr]
      if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
      if inspect.isclass(value):
        continue
      if inspect.isroutine(value):
        heading = f"{qualname}.{attr}{signature(value)}"
      elif hasattr(type(value), "__get__"):
        heading = f"{qualname}.{attr}"
        if own_doc(value) == own_doc(type(value)):
          continue
      else:
        continue
      doc = own_doc(value)
      if doc is None or inherited(cls, attr, doc):
        continue
      sections.append(f"{heading}\n{clean(doc)}")
    return sections

  def candidates(name, module):
    """(attr, obj) for the public classes and functions `name` documents."""
    real_name = module.__name__
    exported = getattr(module, "__all__", None)
    if isinstance(exported, (list, tuple)) and all(isinstance(n, str) for n in exported):
      names = sorted(set(exported))
    else:
      names = sorted(n for n in vars(module) if not n.startswith("_"))
    found = []
    for attr in names:
      obj = quietly(getattr, module, attr)  # None (skipped below) when the attribute raises
      if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        continue
      origin = getattr(obj, "__module__", None)
      if not isinstance(origin, str):
        continue
      # Defined here, or re-exported from a module that is not
      # documented on its own (a C accelerator like `_heapq`, `posix`);
      # re-exports of other documented modules are left to them.
      if origin not in (name, real_name) and origin in documented:
        continue
      found.append((attr, obj))
    return found

  def choose_owner(obj, claims):
    """The one (module, attr) that documents an object found in several."""
    origin = getattr(obj, "__module__", "")
    own_name = getattr(obj, "__name__", None)

    def rank(claim):
      module_rank = 0 if claim[0] == origin else 1 if claim[0] == origin.lstrip("_") else 2
      return (module_rank, claim[1] != own_name, claim)

    return min(claims, key=rank)

  def render(name, members):
    parts = []
    doc = own_doc(modules[name])
    if doc:
      parts.append(clean(doc))
    for attr, obj in members:
      qualname = f"{name}.{attr}"
      if inspect.isclass(obj):
        doc = own_doc(obj)
        if doc and doc not in generic_docs and not any(own_doc(b) == doc for b in obj.__mro__[1:]):
          parts.append(f"class {qualname}{signature(obj)}\n{clean(doc)}")
        parts.extend(quietly(member_sections, obj, qualname, default=[]))
      else:
        doc = own_doc(obj)
        if doc and doc not in generic_docs:
          parts.append(f"{qualname}{signature(obj)}\n{clean(doc)}")
    return "\n\n".join(p for p in parts if p)

  # An object reachable from several modules or names (e.g. `io.BytesIO`,
  # also exported by `xmlrpc.client`; `array.ArrayType` = `array.array`) is
  # documented once: preferably in the module that defines it or whose name
  # its private origin module carries (`_heapq` -> `heapq`), under its own
  # `__name__`, else under the first (module, name) in sorted order.
  found = {}
  claims = {}
  objects = {}
  for name in sorted(modules):
    found[name] = quietly(candidates, name, modules[name], default=[])
    for attr, obj in found[name]:
      claims.setdefault(id(obj), []).append((name, attr))
      objects[id(obj)] = obj
  owner = {key: choose_owner(objects[key], c) for key, c in claims.items()}

  documents = []
  for name in sorted(modules):
    members = [(attr, obj) for attr, obj in found[name] if owner[id(obj)] == (name, attr)]
    text = quietly(render, name, members)
    if text is not None and text.strip():
      documents.append([name, text])

  # 2. The language reference topics of `help('if')`.
  topics = quietly(lambda: importlib.import_module("pydoc_data.topics").topics, default={})
  for topic in sorted(topics):
    text = clean(topics[topic])
    if text:
      documents.append([f"topic:{topic}", text])

  documents.sort()

  return documents


def main():
  """Reads the configuration from sys.argv[1], collects, and prints the JSON on the real stdout."""
  here = os.path.dirname(os.path.abspath(__file__))
  # Without -P (Python < 3.11) the script's folder leads sys.path; nothing may be imported from it.
  if sys.path and os.path.abspath(sys.path[0] or os.curdir) == here:
    del sys.path[0]
  config = json.loads(sys.argv[1])

  # Keep the real stdout for the JSON; anything a module prints while being
  # imported (from Python or C) goes to stderr instead.
  json_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  warnings.simplefilter("ignore")

  documents = collect(
    set(config["skip_modules"]),
    set(config["skip_components"]),
    set(config["no_submodules"]),
    list(config["extra_modules"]),
    config["progress_marker"],
  )
  json.dump(
    {"python": sys.version, "documents": documents},
    json_out,
    ensure_ascii=False,
    sort_keys=True,
  )
  json_out.flush()


if __name__ == "__main__":
  main()

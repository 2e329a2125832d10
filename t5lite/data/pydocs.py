"""`pydocs`: a small English corpus built from the docs inside Python itself.

Why: tests, smoke runs and tutorials need real prose to train a tokenizer or
a tiny model on, and the machines that run them may have no network.  Every
Python installation carries a couple of megabytes of carefully written
English in its standard library: module, class and function docstrings, and
the language reference topics that `pydoc` shows for `help('if')`
(`pydoc_data.topics.topics`).  This module turns those into a TFDS dataset,
so that it can be read like any other corpus, e.g. through
`seqio.TfdsDataSource(tfds_name=TFDS_NAME)`.

What: one example per document, features {'name': Text, 'text': Text}:

* one document per importable public stdlib module (packages are walked for
  their public submodules: `json.decoder`, `email.message`,
  `xml.etree.ElementTree`, `concurrent.futures`, ...; `os.path` is included
  under that name).  The text is the module docstring followed by the
  docstrings of the module's public classes and functions and the classes'
  methods and properties, each introduced by a line with its qualified name
  and, where `inspect.signature` works, its signature, e.g.
  `json.dumps(obj, *, skipkeys=False, ...)`;
* one document per pydoc topic, named 'topic:<name>' (e.g. 'topic:if').

Documents go to 'validation' when the first 8 bytes of sha256(name), as an
integer, fall in the lowest 5% (`is_validation`); the rest is 'train'.  That
depends on nothing but the name.

How: the modules are imported in a separate Python process (`sys.executable`
with `-S`: no site-packages, no .pth hooks), started with a minimal
environment (no DISPLAY, no PYTHONPATH, PYTHONHASHSEED=0) in an empty working
folder, with stdin closed; it prints JSON.  So hundreds of imports neither
slow down nor pollute the builder's process, and a misbehaving import cannot
break the build.  Modules with import side effects (`antigravity` opens a
browser, `this` prints), tests, GUI and tooling packages are skipped; a module
that fails to import is skipped, and one that kills the child process is
skipped on a rerun.  Default values in signatures that depend on the machine
(`os.environ`, `sys.executable`, ...) are shown by name.

The output is deterministic for a given Python build: names and members are
sorted, an object exported by several modules is documented once, docstrings
inherited from `object` / `type` or from a base class are dropped, whitespace
is normalised with `inspect.cleandoc`, and memory addresses (' at 0x7f...')
are removed.

The content depends on the Python version, so the only builder config is
named after the running interpreter ('py3_11' on 3.11) and each version
builds into its own folder: `<data_dir>/pydocs/py3_11/1.0.0`.

Use `prepare_pydocs()` to build it once (under a cross-process file lock) and
reuse it afterwards; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import Any, Optional, Sequence

import tensorflow_datasets as tfds
from etils import epath

from t5lite.data import locking

__all__ = [
  "CONFIG_NAME",
  "Pydocs",
  "TFDS_NAME",
  "VALIDATION_PERCENT",
  "collect_documents",
  "default_data_dir",
  "is_validation",
  "prepare_pydocs",
]

VERSION = tfds.core.Version("1.0.0")

#: Builder config name for the running interpreter, e.g. 'py3_11'.
CONFIG_NAME = f"py{sys.version_info.major}_{sys.version_info.minor}"

#: The name to give `tfds.builder` / `seqio.TfdsDataSource(tfds_name=...)`.
TFDS_NAME = f"pydocs/{CONFIG_NAME}:{VERSION}"

#: Percentage of documents (by hash of the name) in the 'validation' split.
VALIDATION_PERCENT = 5
_VALIDATION_THRESHOLD = (1 << 64) * VALIDATION_PERCENT // 100

# Modules not imported at all (with everything below them): import side
# effects (`antigravity` opens a browser, `this` prints), GUI toolkits and
# demos, tests, packaging tools (`distutils` is deprecated, gone in 3.12 and
# shadowed by setuptools in most environments), the data module behind the
# topics (added separately), and the platform modules whose contents are
# documented under `os` / `os.path` instead.
_SKIP_MODULES = (
  "antigravity",
  "this",
  "__hello__",
  "__phello__",
  "idlelib",
  "tkinter",
  "turtle",
  "turtledemo",
  "lib2to3",
  "ensurepip",
  "distutils",
  "test",
  "pydoc_data",
  "posix",
  "nt",
  "posixpath",
  "ntpath",
  "genericpath",
)

# Name components that exclude a submodule (and everything below it).
_SKIP_COMPONENTS = ("test", "tests", "idle_test", "__main__")

# Packages whose submodules are not walked (the codecs under `encodings` are
# ~120 near-empty generated modules).
_NO_SUBMODULES = ("encodings",)

# Documented under a name that is not the module's own `__name__`.
_EXTRA_MODULES = ("os.path",)

# Environment variables passed on to the collecting process.
_KEEP_ENV = ("PATH", "TMPDIR", "SYSTEMROOT")

_COLLECT_TIMEOUT_S = 900

# A child that dies inside an import (a crash, os._exit) is run again without
# that module, at most this many times.
_MAX_CRASH_RETRIES = 5
_PROGRESS_MARKER = "pydocs-collect: importing "


def _collect_main() -> None:
  """Runs in the child process: prints {'documents': [[name, text], ...]}.

  Self-contained on purpose (its source is sent to the child with `-c`): it
  may only use the standard library and its own nested helpers.  The
  configuration comes as JSON in sys.argv[1].
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

  config = json.loads(sys.argv[1])
  skip_modules = set(config["skip_modules"])
  skip_components = set(config["skip_components"])
  no_submodules = set(config["no_submodules"])
  extra_modules = list(config["extra_modules"])
  progress_marker = config["progress_marker"]

  # Keep the real stdout for the JSON; anything a module prints while being
  # imported (from Python or C) goes to stderr instead.
  json_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  warnings.simplefilter("ignore")

  address_re = re.compile(r" at 0x[0-9a-fA-F]+")
  blank_lines_re = re.compile(r"\n{3,}")

  def clean(text):
    text = inspect.cleandoc(text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = address_re.sub("", text)
    return blank_lines_re.sub("\n\n", text).strip()

  def own_doc(obj):
    try:
      doc = obj.__doc__
    except BaseException as e:  # noqa: BLE001
      if isinstance(e, KeyboardInterrupt):
        raise
      return None
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
    try:
      text = repr(value)
    except BaseException as e:  # noqa: BLE001
      if isinstance(e, KeyboardInterrupt):
        raise
      return Placeholder("...")
    if len(text) > 200:
      return Placeholder("...")
    return value

  def signature(obj):
    try:
      sig = inspect.signature(obj)
      params = [
        p if p.default is p.empty else p.replace(default=shown_default(p.default)) for p in sig.parameters.values()
      ]
      text = str(sig.replace(parameters=params))
      return address_re.sub("", text)
    except BaseException as e:  # noqa: BLE001
      if isinstance(e, KeyboardInterrupt):
        raise
      return ""

  def skipped(name):
    parts = name.split(".")
    if any(".".join(parts[:k]) in skip_modules for k in range(1, len(parts) + 1)):
      return True
    return any(p.startswith("_") or p in skip_components for p in parts[1:])

  def try_import(name):
    # Tells the parent which import was running if this process dies.
    os.write(2, f"\n{progress_marker}{name}\n".encode("utf-8"))
    try:
      return importlib.import_module(name)
    except BaseException as e:  # noqa: BLE001
      if isinstance(e, KeyboardInterrupt):
        raise
      return None

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
    try:
      children = sorted(info.name for info in pkgutil.iter_modules(path))
    except BaseException as e:  # noqa: BLE001
      if isinstance(e, KeyboardInterrupt):
        raise
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
      try:
        obj = getattr(module, attr)
      except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
          raise
        continue
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
        try:
          parts.extend(member_sections(obj, qualname))
        except BaseException as e:  # noqa: BLE001
          if isinstance(e, KeyboardInterrupt):
            raise
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
    try:
      found[name] = candidates(name, modules[name])
    except BaseException as e:  # noqa: BLE001
      if isinstance(e, KeyboardInterrupt):
        raise
      found[name] = []
    for attr, obj in found[name]:
      claims.setdefault(id(obj), []).append((name, attr))
      objects[id(obj)] = obj
  owner = {key: choose_owner(objects[key], c) for key, c in claims.items()}

  documents = []
  for name in sorted(modules):
    members = [(attr, obj) for attr, obj in found[name] if owner[id(obj)] == (name, attr)]
    try:
      text = render(name, members)
    except BaseException as e:  # noqa: BLE001
      if isinstance(e, KeyboardInterrupt):
        raise
      continue
    if text.strip():
      documents.append([name, text])

  # 2. The language reference topics of `help('if')`.
  try:
    from pydoc_data.topics import topics
  except BaseException as e:  # noqa: BLE001
    if isinstance(e, KeyboardInterrupt):
      raise
    topics = {}
  for topic in sorted(topics):
    text = clean(topics[topic])
    if text:
      documents.append([f"topic:{topic}", text])

  documents.sort()
  json.dump(
    {"python": sys.version, "documents": documents},
    json_out,
    ensure_ascii=False,
    sort_keys=True,
  )
  json_out.flush()


def _child_command(skip_modules: Sequence[str]) -> list[str]:
  """The `python -c` command line that runs `_collect_main` in a child."""
  source = inspect.getsource(_collect_main)
  program = f"{source}\n\n_collect_main()\n"
  config = {
    "skip_modules": list(skip_modules),
    "skip_components": list(_SKIP_COMPONENTS),
    "no_submodules": list(_NO_SUBMODULES),
    "extra_modules": list(_EXTRA_MODULES),
    "progress_marker": _PROGRESS_MARKER,
  }
  flags = ["-S", "-B"]
  if sys.version_info >= (3, 11):
    flags.append("-P")  # Do not put the working folder on sys.path.
  return [sys.executable, *flags, "-c", program, json.dumps(config)]


def _child_env(workdir: str) -> dict[str, str]:
  env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
  env.update(
    PYTHONHASHSEED="0",
    PYTHONIOENCODING="utf-8",
    PYTHONDONTWRITEBYTECODE="1",
    LANG="C.UTF-8",
    LC_ALL="C.UTF-8",
    TERM="dumb",
    HOME=workdir,
  )
  return env


def collect_documents(timeout: float = _COLLECT_TIMEOUT_S) -> list[tuple[str, str]]:
  """Collects the corpus as sorted (name, text) pairs, in a child process.

  Deterministic for a given Python build.  If the child dies while importing
  a module, that module is skipped and the child run again (a few times at
  most).  Raises RuntimeError with the child's stderr if it still fails.
  """
  skip_modules = list(_SKIP_MODULES)
  for attempt in range(_MAX_CRASH_RETRIES + 1):
    with tempfile.TemporaryDirectory(prefix="pydocs_collect_") as workdir:
      result = subprocess.run(
        _child_command(skip_modules),
        cwd=workdir,
        env=_child_env(workdir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
      )
    if result.returncode == 0:
      break
    stderr = result.stderr.decode("utf-8", "replace")
    culprit = _last_import(stderr)
    if culprit is None or culprit in skip_modules or attempt == _MAX_CRASH_RETRIES:
      raise RuntimeError(
        f"Collecting the pydocs corpus failed (exit code "
        f"{result.returncode}, last import {culprit!r}):\n"
        f"{stderr[-4000:]}"
      )
    logging.warning(
      "pydocs: the collector died importing %r (exit code %d); running it again without that module.",
      culprit,
      result.returncode,
    )
    skip_modules.append(culprit)
  try:
    payload = json.loads(result.stdout.decode("utf-8"))
  except ValueError as e:
    raise RuntimeError(f"The pydocs collector printed something that is not JSON: {result.stdout[:200]!r}") from e
  documents = [(str(name), str(text)) for name, text in payload["documents"]]
  names = [name for name, _ in documents]
  if len(set(names)) != len(names):
    raise RuntimeError("The pydocs collector returned duplicate names.")
  if not documents:
    raise RuntimeError("The pydocs collector found no documents.")
  return documents


def _last_import(stderr: str) -> Optional[str]:
  """The module the child was importing last, from its progress lines."""
  for line in reversed(stderr.splitlines()):
    if line.startswith(_PROGRESS_MARKER):
      return line[len(_PROGRESS_MARKER) :].strip() or None
  return None


def is_validation(name: str) -> bool:
  """Whether the document `name` belongs to the 'validation' split.

  Uses sha256 of the UTF-8 name (not `hash()`), so it does not depend on
  PYTHONHASHSEED, the process or the platform.
  """
  digest = hashlib.sha256(name.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < _VALIDATION_THRESHOLD


class Pydocs(tfds.core.GeneratorBasedBuilder):
  """Docstrings of the Python standard library and pydoc's topics."""

  # tfds 4.9.10 finds this through `importlib_resources`, which it only
  # declares as a dependency for Python < 3.9, so the lookup fails with
  # ModuleNotFoundError on newer Pythons without that package; give the
  # answer directly.  (Used to find a checksums.tsv next to the code; there
  # is none, nothing is downloaded.)
  code_path = epath.Path(__file__)

  VERSION = VERSION
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(
      name=CONFIG_NAME,
      description=(f"Documentation of Python {sys.version_info.major}.{sys.version_info.minor}."),
    )
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly (not `dataset_info_from_configs`) so that no README
    # or CITATIONS file next to this module is picked up.
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "Docstrings of the Python standard library modules, classes, "
        "functions and methods, and the language reference topics "
        "shipped in pydoc_data.topics, one example per document."
      ),
      features=tfds.features.FeaturesDict({"name": tfds.features.Text(), "text": tfds.features.Text()}),
      homepage="https://docs.python.org/3/",
    )

  def _split_generators(self, dl_manager: Any):
    del dl_manager  # Nothing is downloaded.
    documents = collect_documents()
    train = [d for d in documents if not is_validation(d[0])]
    validation = [d for d in documents if is_validation(d[0])]
    return {
      "train": self._generate_examples(train),
      "validation": self._generate_examples(validation),
    }

  def _generate_examples(self, documents: Sequence[tuple[str, str]]):
    for name, text in documents:
      yield name, {"name": name, "text": text}


def default_data_dir() -> str:
  """$TFDS_DATA_DIR if set, else ~/.cache/t5lite/tensorflow_datasets.

  $XDG_CACHE_HOME, when set, takes the place of ~/.cache.
  """
  data_dir = os.environ.get("TFDS_DATA_DIR")
  if data_dir:
    return os.path.expanduser(data_dir)
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "t5lite", "tensorflow_datasets")


def prepare_pydocs(data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """Builds the corpus into `data_dir` once, and returns its builder.

  Safe to call from several processes at once: the check-and-build runs
  under a file lock in `data_dir`, so one process builds and the others
  wait and then reuse the result.  Later calls only read the metadata.

  Args:
    data_dir: TFDS data folder; `default_data_dir()` when None.
  """
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  os.makedirs(data_dir, exist_ok=True)
  lock_path = os.path.join(data_dir, f".pydocs-{CONFIG_NAME}.lock")
  with locking.file_lock(lock_path):
    # Constructed under the lock, so that a builder made after another
    # process finished reads the finished dataset's metadata.
    builder = Pydocs(data_dir=data_dir, config=CONFIG_NAME)
    if os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
      return builder
    # TFDS announces a build as "Downloading and preparing dataset ..."
    # with progress bars; nothing is downloaded here, so say what happens.
    print(f"t5lite: building the pydocs corpus (once) in {builder.data_dir}", file=sys.stderr)
    tfds.display_progress_bar(False)
    try:
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
          download_dir=os.path.join(data_dir, "downloads"),
          download_config=tfds.download.DownloadConfig(
            try_download_gcs=False,
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
          ),
        )
    finally:
      tfds.display_progress_bar(True)
  return builder

"""Tests for the pydocs TFDS corpus and the file lock it is built under.

The module-scoped fixture builds the real corpus once (a few seconds).
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import seqio
import tensorflow_datasets as tfds

from t5lite.data import data_dirs, locking, pydocs, pydocs_prepare, pydocs_subprocess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Measured on CPython 3.11.7: 400 documents (321 modules, 79 topics),
# 2,029,492 characters; validation 23 documents.  The bounds leave room for
# other Python versions.
MIN_DOCS, MAX_DOCS = 250, 700
MIN_CHARS, MAX_CHARS = 1_000_000, 3_500_000


def _sha256_rule(name):
  """The split rule, written out independently of pydocs.is_validation."""
  value = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
  return "validation" if value / 2.0**64 < 0.05 else "train"


def _files_with_mtimes(root):
  found = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      found[os.path.relpath(path, root)] = os.stat(path).st_mtime_ns
  return found


def _subprocess_env():
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  tfds.disable_progress_bar()
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  start = time.monotonic()
  builder = pydocs_prepare.prepare_pydocs(data_dir)
  seconds = time.monotonic() - start
  splits = {}
  for split in ("train", "validation"):
    splits[split] = [
      (ex["name"].decode("utf-8"), ex["text"].decode("utf-8"))
      for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
    ]
  print(f"pydocs build: {seconds:.1f} s")
  return {"data_dir": data_dir, "builder": builder, "splits": splits}


def test_names_and_config():
  major, minor = sys.version_info[:2]
  assert pydocs.CONFIG_NAME == f"py{major}_{minor}"
  assert pydocs.TFDS_NAME == f"pydocs/py{major}_{minor}:1.0.0"
  assert "pydocs" in tfds.list_builders(with_community_datasets=False)
  assert [c.name for c in pydocs.Pydocs.BUILDER_CONFIGS] == [pydocs.CONFIG_NAME]


def test_default_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  assert data_dirs.default_data_dir() == str(tmp_path / "tfds")
  monkeypatch.delenv("TFDS_DATA_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  assert data_dirs.default_data_dir() == str(tmp_path / "cache" / "t5lite" / "tensorflow_datasets")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert data_dirs.default_data_dir() == os.path.expanduser(
    os.path.join("~", ".cache", "t5lite", "tensorflow_datasets")
  )


def test_splits_sizes_and_names(built):
  train, validation = built["splits"]["train"], built["splits"]["validation"]
  assert train and validation
  info = built["builder"].info
  assert info.splits["train"].num_examples == len(train)
  assert info.splits["validation"].num_examples == len(validation)

  total = len(train) + len(validation)
  assert MIN_DOCS <= total <= MAX_DOCS
  assert 0.03 <= len(validation) / total <= 0.08
  chars = sum(len(text) for _, text in train + validation)
  assert MIN_CHARS <= chars <= MAX_CHARS
  assert all(text.strip() for _, text in train + validation)

  names = [name for name, _ in train + validation]
  assert len(set(names)) == len(names)
  for split, docs in built["splits"].items():
    for name, _ in docs:
      assert _sha256_rule(name) == split, name
      assert pydocs.is_validation(name) == (split == "validation")


def test_known_documents(built):
  docs = dict(built["splits"]["train"] + built["splits"]["validation"])
  assert "JSON" in docs["json"]
  assert "json.dumps(obj, *, skipkeys=False" in docs["json"]
  assert 'The "if" statement' in docs["topic:if"]
  assert "os.path.join(a, *p)" in docs["os.path"]
  assert "heapq.heappush(heap, item, /)" in docs["heapq"]  # From _heapq.
  for name in (
    "builtins",
    "collections.abc",
    "concurrent.futures",
    "email.message",
    "importlib.util",
    "json.decoder",
    "urllib.request",
    "xml.etree.ElementTree",
  ):
    assert name in docs, name
  topics = [n for n in docs if n.startswith("topic:")]
  assert 50 <= len(topics) <= 150
  for name in docs:
    parts = name.split(".")
    assert parts[0] not in ("antigravity", "this", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "test")
    assert not any(p in ("test", "tests", "__main__") for p in parts), name
    assert not any(p.startswith("_") for p in parts), name
  # No default docs inherited from object, no memory addresses.
  everything = "\n".join(docs.values())
  assert "See help(type(self)) for accurate signature." not in everything
  assert " at 0x7f" not in everything


def test_second_prepare_reuses_the_dataset(built, monkeypatch):
  root = os.path.join(built["data_dir"], "pydocs")
  before = _files_with_mtimes(root)

  def must_not_run(*args, **kwargs):
    raise AssertionError("prepare_pydocs rebuilt the dataset")

  monkeypatch.setattr(pydocs, "collect_documents", must_not_run)
  monkeypatch.setattr(pydocs.Pydocs, "_split_generators", must_not_run)
  builder = pydocs_prepare.prepare_pydocs(built["data_dir"])
  assert _files_with_mtimes(root) == before
  assert builder.info.splits["train"].num_examples == len(built["splits"]["train"])


def test_seqio_reads_it(built):
  source = seqio.TfdsDataSource(tfds_name=pydocs.TFDS_NAME, tfds_data_dir=built["data_dir"])
  assert set(source.splits) == {"train", "validation"}
  assert source.list_shards("train")
  assert source.num_input_examples("validation") == len(built["splits"]["validation"])
  ds = source.get_dataset("validation", shuffle=False)
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == len(built["splits"]["validation"])
  assert all(ex["text"] for ex in examples)


def test_collection_is_deterministic(built):
  def digest(documents):
    return hashlib.sha256(json.dumps(sorted(documents), ensure_ascii=False).encode("utf-8")).hexdigest()

  first = pydocs.collect_documents()
  second = pydocs.collect_documents()
  assert digest(first) == digest(second)
  # And it is exactly what was built.
  assert digest(first) == digest(built["splits"]["train"] + built["splits"]["validation"])


def test_concurrent_prepare_builds_once(tmp_path):
  data_dir = str(tmp_path / "shared")
  script = textwrap.dedent(
    """
        import sys
        from t5lite.data import pydocs, pydocs_prepare
        import tensorflow_datasets as tfds
        tfds.disable_progress_bar()
        calls = []
        collect = pydocs.collect_documents
        def counting(*args, **kwargs):
            calls.append(1)
            return collect(*args, **kwargs)
        pydocs.collect_documents = counting
        builder = pydocs_prepare.prepare_pydocs(sys.argv[1])
        print("BUILDS", len(calls), builder.info.splits["train"].num_examples)
        """
  )
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", script, data_dir],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      env=_subprocess_env(),
      cwd=REPO_ROOT,
    )
    for _ in range(2)
  ]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    line = [l for l in out.decode().splitlines() if l.startswith("BUILDS")][-1]
    results.append(line.split()[1:])
  assert sorted(int(builds) for builds, _ in results) == [0, 1]
  assert results[0][1] == results[1][1]


def test_file_lock_excludes_other_processes(tmp_path):
  lock_path = str(tmp_path / "sub" / "x.lock")
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time\n"
      "from t5lite.data import locking\n"
      "with locking.file_lock(sys.argv[1]):\n"
      "    print('locked', flush=True)\n"
      "    time.sleep(30)\n",
      lock_path,
    ],
    stdout=subprocess.PIPE,
    env=_subprocess_env(),
    cwd=REPO_ROOT,
  )
  try:
    assert holder.stdout.readline().strip() == b"locked"
    with pytest.raises(TimeoutError, match="x.lock"):
      with locking.file_lock(lock_path, timeout=0.3):
        pass
  finally:
    holder.kill()
    holder.wait()
  # The kernel released the dead holder's lock.
  with locking.file_lock(lock_path, timeout=5) as path:
    assert path == lock_path


def test_collector_survives_an_import_that_kills_the_process(monkeypatch, tmp_path):
  (tmp_path / "t5lite_crashy_module.py").write_text("import os\nos._exit(3)\n")
  (tmp_path / "t5lite_fine_module.py").write_text('"""A fine module."""\n')
  child_env = pydocs_subprocess._child_env
  monkeypatch.setattr(
    pydocs_subprocess,
    "_child_env",
    lambda workdir: {**child_env(workdir), "PYTHONPATH": str(tmp_path)},
  )
  monkeypatch.setattr(
    pydocs_subprocess,
    "_EXTRA_MODULES",
    ("os.path", "t5lite_crashy_module", "t5lite_fine_module"),
  )
  docs = dict(pydocs.collect_documents())
  assert docs["t5lite_fine_module"] == "A fine module."
  assert "t5lite_crashy_module" not in docs
  assert "json" in docs and "os.path" in docs


def test_collector_imports_the_standard_library_only():
  """The child program must not import t5lite or any installed package: the corpus depends on Python alone."""
  import ast  # pylint: disable=g-import-not-at-top

  tree = ast.parse(open(pydocs_subprocess.COLLECTOR_PATH, encoding="utf-8").read())
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      imported.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      imported.add((node.module or "").split(".")[0])
  assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
  assert pydocs_subprocess._child_command([])[-2] == pydocs_subprocess.COLLECTOR_PATH

"""Time and peak host memory of `t5lite convert from-hf` / `to-hf` on T5 v1.1 models of the published sizes.

    python -m t5lite.bench.convert --sizes small,base --workdir /tmp/convert-bench --output convert.jsonl

For each size a random `transformers.T5ForConditionalGeneration` with the T5 v1.1 architecture of that size
(t5lite.models.t5.T5_PRESETS: gated-GELU, untied lm_head, vocab 32128; 'tiny' uses vocab 320 for the tests)
is saved once with `save_pretrained` (safetensors, float32) into WORKDIR/hf/SIZE and reused by later runs.
Then the import (`t5lite convert from-hf`) and the export (`t5lite convert to-hf`) each run in a fresh Python
process, so that the peak resident memory is the conversion's own: the child reports the high-water mark of
its resident memory (Linux VmHWM; see `_memory_mb` for why not ru_maxrss), the parent its wall time (spawn to
exit, Python and JAX start-up included) and, from `os.wait4`, its CPU time. The child is the `t5lite` command
itself (`runtime.apply_process_settings` and `t5lite.cli.main`, as the installed command runs) with timers
around its phases and a snapshot of its memory (resident, anonymous, file-backed) after each: start-up (importing
t5lite.convert and JAX, starting the backend), reading (the import's `weights.import_params` from
safetensors; the export's orbax `checkpointing.load_params`), mapping (`weights.export_tensors`) and writing
(the import's orbax `save_checkpoint`; the export's `files.write` of model.safetensors). Phase timers and
resident-memory snapshots wrap those functions by replacing the module attributes in the child; nothing in
the library changes.

After the export, the written model.safetensors is compared tensor for tensor (names, dtypes, shapes, bytes)
with the original: `round_trip_equal`. Prints one JSON line per (size, direction) on stdout (and into
--output as JSONL), a markdown table on stderr at the end. torch and transformers are imported only here,
inside the function that builds the models; the library never imports them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

_ENTERED = time.time()  # wall clock at this module's import: the child's start-up is measured from here

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Sizes: a T5 preset (t5lite.models.t5.T5_PRESETS) and the vocabulary size of the random model.
SIZES = {
  "tiny": ("tiny", 320),
  "small": ("small", 32128),
  "base": ("base", 32128),
  "large": ("large", 32128),
  "xl": ("xl", 32128),
  "xxl": ("xxl", 32128),
}
DIRECTIONS = ("import", "export")
_MB = 1024.0 * 1024.0


def stage(message: str) -> None:
  """One progress line on stderr, flushed at once (stdout carries the JSON)."""
  print(f"[convert] {message}", file=sys.stderr, flush=True)


def parse_sizes(text: str) -> list[str]:
  """'small,base' -> ['small', 'base']. Raises ValueError for an unknown or empty size list."""
  sizes = [s.strip() for s in text.split(",") if s.strip()]
  unknown = [s for s in sizes if s not in SIZES]
  if unknown or not sizes:
    raise ValueError(f"--sizes {text!r}: unknown size(s) {unknown or '(none given)'}; valid: {', '.join(SIZES)}")
  return sizes


def hf_config_fields(size: str) -> dict[str, Any]:
  """transformers.T5Config arguments of T5 v1.1 at `size` (from T5_PRESETS and the t5lite config defaults).

  Raises ValueError for a size not in SIZES.
  """
  if size not in SIZES:
    raise ValueError(f"size {size!r}; valid: {', '.join(SIZES)}")
  from t5lite.models import t5  # pylint: disable=g-import-not-at-top

  preset, vocab = SIZES[size]
  cfg = t5.t5_config(preset, vocab_size=vocab)
  return dict(
    vocab_size=cfg.vocab_size,
    d_model=cfg.d_model,
    num_heads=cfg.num_heads,
    d_kv=cfg.d_kv,
    d_ff=cfg.d_ff,
    num_layers=cfg.num_encoder_layers,
    num_decoder_layers=cfg.num_decoder_layers,
    relative_attention_num_buckets=cfg.relative_attention_num_buckets,
    relative_attention_max_distance=cfg.relative_attention_max_distance,
    layer_norm_epsilon=cfg.layer_norm_epsilon,
    dropout_rate=cfg.dropout_rate,
  )


def safetensors_summary(path: str) -> dict[str, int]:
  """{'tensors', 'params', 'file_bytes'} of a safetensors file (read from its header, no tensor data)."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  params = 0
  with safe_open(path, framework="np") as f:
    names = list(f.keys())
    for name in names:
      shape = f.get_slice(name).get_shape()
      n = 1
      for d in shape:
        n *= int(d)
      params += n
  return {"tensors": len(names), "params": params, "file_bytes": os.path.getsize(path)}


def build_hf_dir(size: str, directory: str, seed: int = 0) -> dict[str, Any]:
  """Saves a random T5 v1.1 `T5ForConditionalGeneration` of `size` into `directory` (config.json and
  float32 model.safetensors), unless the directory already holds that model.

  Returns safetensors_summary plus {'built': bool, 'build_s': float}.
  Raises ValueError when `directory` holds a config.json of another architecture (nothing is overwritten).
  """
  fields = hf_config_fields(size)
  config_path, weights_path = os.path.join(directory, "config.json"), os.path.join(directory, "model.safetensors")
  if os.path.isfile(config_path) and os.path.isfile(weights_path):
    with open(config_path, encoding="utf-8") as f:
      found = json.load(f)
    differ = {k: (found.get(k), v) for k, v in fields.items() if found.get(k) != v}
    if differ or found.get("feed_forward_proj") != "gated-gelu":
      raise ValueError(
        f"{directory!r} holds another model than T5 v1.1 {size} (field: (found, expected) {differ}); "
        "remove it or choose another --workdir"
      )
    return dict(safetensors_summary(weights_path), built=False, build_s=0.0)

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  stage(f"building a random T5 v1.1 {size} with transformers ...")
  start = time.perf_counter()
  torch.manual_seed(seed)
  config = transformers.T5Config(
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
    **fields,
  )
  model = transformers.T5ForConditionalGeneration(config)
  if model.lm_head.weight is model.shared.weight:
    # transformers 5 ties lm_head to the input embedding when it builds a T5 whatever the config says;
    # T5 v1.1 has an output projection of its own (HF's untied init: normal, std 1).
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
  model.eval()
  staging = f"{directory}.partial-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  model.save_pretrained(staging)
  del model
  if os.path.isdir(directory):
    shutil.rmtree(directory)
  os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
  os.rename(staging, directory)
  summary = safetensors_summary(weights_path)
  with open(config_path, encoding="utf-8") as f:
    saved = json.load(f)
  dtype = saved.get("dtype", saved.get("torch_dtype"))
  if dtype not in (None, "float32"):
    raise AssertionError(f"{weights_path}: saved as {dtype}, expected float32")
  return dict(summary, built=True, build_s=time.perf_counter() - start)


def compare_safetensors(original: str, exported: str) -> dict[str, Any]:
  """Tensor-for-tensor comparison of two safetensors files (one tensor in memory at a time).

  Returns {'equal': bool, 'tensors': int, 'missing': [...], 'unexpected': [...], 'different': [...]}:
  names only in `original`, only in `exported`, and in both with another dtype, shape or any other value.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  with safe_open(original, framework="np") as a, safe_open(exported, framework="np") as b:
    names_a, names_b = set(a.keys()), set(b.keys())
    different = []
    for name in sorted(names_a & names_b):
      x, y = a.get_tensor(name), b.get_tensor(name)
      if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x.view(np.uint8), y.view(np.uint8)):
        different.append(name)
  missing, unexpected = sorted(names_a - names_b), sorted(names_b - names_a)
  return {
    "equal": not (missing or unexpected or different),
    "tensors": len(names_a),
    "missing": missing,
    "unexpected": unexpected,
    "different": different,
  }


# ---------------------------------------------------------------------------
# The child: the t5lite command with phase timers
# ---------------------------------------------------------------------------


def _memory_mb() -> dict[str, float]:
  """This process's memory now, from /proc/self/status (Linux): 'rss' (VmRSS) split into 'anon' (RssAnon) and
  'file' (RssFile: mapped file pages, e.g. a memory-mapped safetensors file, which the kernel can drop) and
  'shmem' (RssShmem), and
  'peak' (VmHWM, the high-water mark of the resident size). Elsewhere only 'peak', from ru_maxrss.

  Not ru_maxrss on Linux: a child's ru_maxrss starts at its parent's resident size when it was forked
  (the kernel keeps the high-water mark of the image that exec replaced), which would count this benchmark's
  own torch model as the conversion's memory.
  """
  keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem", "VmHWM:": "peak"}
  out: dict[str, float] = {}
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        key = line.split(":", 1)[0] + ":"
        if key in keys:
          out[keys[key]] = round(int(line.split()[1]) / 1024.0, 1)  # kB
  except OSError:
    pass
  if "peak" not in out:
    out["peak"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # kB on Linux
  return out


def child_main(record_path: str, cli_argv: Sequence[str]) -> int:
  """Runs `t5lite <cli_argv>` in this process as the installed command does, timing its phases; writes
  {'startup_s', 'phases': {name: {'s', 'memory_mb'}}, 'command_s', 'peak_rss_mb', ...} to `record_path`."""
  from t5lite import runtime  # pylint: disable=g-import-not-at-top

  settings = runtime.apply_process_settings()
  t0 = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top

  from t5lite import checkpointing, cli, convert  # pylint: disable=g-import-not-at-top
  from t5lite.hf import files, weights  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  record: dict[str, Any] = {
    "python_start_epoch": _ENTERED,
    "startup_s": time.perf_counter() - t0,
    "startup_memory_mb": _memory_mb(),
    "phases": {},
  }

  def timed(module: Any, attr: str, phase: str) -> None:
    if not callable(getattr(module, attr, None)):
      raise AttributeError(f"{module.__name__}.{attr} is gone: update the phases in t5lite/bench/convert.py")
    inner: Callable = getattr(module, attr)

    def wrapper(*args, **kwargs):
      start = time.perf_counter()
      out = jax.block_until_ready(inner(*args, **kwargs))  # import_params builds arrays asynchronously
      seconds = time.perf_counter() - start
      entry = record["phases"].setdefault(phase, {"s": 0.0})
      entry.update(s=entry["s"] + seconds, memory_mb=_memory_mb())
      return out

    setattr(module, attr, wrapper)

  timed(weights, "import_params", "read")  # from-hf: safetensors -> jax arrays
  timed(convert, "save_checkpoint", "write")  # from-hf: orbax
  timed(checkpointing, "load_params", "read")  # to-hf: orbax
  timed(weights, "export_tensors", "map")  # to-hf: t5lite tree -> HF names (numpy)
  timed(files, "write", "write")  # to-hf: model.safetensors
  start = time.perf_counter()
  rc = cli.main(list(cli_argv))
  record.update(
    command_s=time.perf_counter() - start,
    # The high-water mark is read from counters the kernel updates lazily: take the largest reading.
    peak_rss_mb=max(
      [_memory_mb()["peak"], record["startup_memory_mb"]["peak"]]
      + [p["memory_mb"]["peak"] for p in record["phases"].values()]
    ),
    rc=rc,
    platform=device.platform,
    jax=jax.__version__,
    malloc_tuned=settings["malloc_tuned"],
    xla_flags=os.environ.get("XLA_FLAGS", ""),
  )
  with open(record_path, "w", encoding="utf-8") as f:
    json.dump(record, f)
  return rc


def run_child(cli_argv: Sequence[str], record_path: str, log_path: str, env: Optional[Mapping[str, str]]) -> dict:
  """Runs child_main in a fresh process; returns its record (peak_rss_mb: the child's own, see `_memory_mb`) plus
  wall_s (spawn to exit) and cpu_s (user + system) from the parent's wait4.

  Raises RuntimeError (with the end of its log) when the command fails.
  """
  cmd = [sys.executable, "-m", "t5lite.bench.convert", "--child", record_path, *cli_argv]
  if os.path.exists(record_path):
    os.remove(record_path)
  start_epoch, start = time.time(), time.perf_counter()
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, env=None if env is None else dict(env), stdout=log, stderr=log)
    # wait4: this child's own CPU time (RUSAGE_CHILDREN would sum every child so far).
    _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - start
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode != 0 or not os.path.isfile(record_path):
    with open(log_path, encoding="utf-8", errors="replace") as f:
      tail = f.read()[-3000:]
    raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
  with open(record_path, encoding="utf-8") as f:
    record = json.load(f)
  record["python_start_s"] = max(0.0, record.pop("python_start_epoch") - start_epoch)
  record.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime)
  return record


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------


def _line(size: str, direction: str, model: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
  phases = {name: round(p["s"], 4) for name, p in child["phases"].items()}
  other = child["command_s"] - sum(phases.values())
  startup = child["startup_memory_mb"]
  startup_rss = startup.get("rss", startup["peak"])
  return {
    "bench": "convert",
    "size": size,
    "direction": direction,
    "params": model["params"],
    "tensors": model["tensors"],
    "file_mb": round(model["file_bytes"] / _MB, 1),
    "wall_s": round(child["wall_s"], 2),
    "peak_rss_mb": round(child["peak_rss_mb"], 1),
    "peak_rss_over_file": round(child["peak_rss_mb"] * _MB / model["file_bytes"], 2),
    "cpu_s": round(child["cpu_s"], 2),
    "cpu_per_wall": round(child["cpu_s"] / child["wall_s"], 2),
    "python_start_s": round(child["python_start_s"], 2),
    "startup_s": round(child["startup_s"], 2),
    "startup_rss_mb": startup_rss,
    # What the conversion adds on top of a started JAX process, per byte of the safetensors file.
    "peak_above_startup_over_file": round((child["peak_rss_mb"] - startup_rss) * _MB / model["file_bytes"], 2),
    "phase_s": phases,
    "other_s": round(max(0.0, other), 2),
    # At the end of each phase: the peak so far, and the resident memory then, anonymous and file-backed.
    "phase_memory_mb": {name: p["memory_mb"] for name, p in child["phases"].items()},
    "platform": child["platform"],
    "malloc_tuned": child["malloc_tuned"],
    "jax": child["jax"],
  }


def run(
  sizes: Sequence[str],
  workdir: str,
  *,
  keep: bool = False,
  seed: int = 0,
  env: Optional[Mapping[str, str]] = None,
  emit: Optional[Callable[[dict], None]] = None,
) -> list[dict[str, Any]]:
  """The benchmark (see the module docstring): two records per size, 'import' then 'export'.

  env: the children's environment (default: this process's). emit: called with each record as it is made.
  keep: leave the converted directories (WORKDIR/out/SIZE/{t5lite,hf}) in place; by default they are removed
  after the size is measured (the random HF models in WORKDIR/hf/ are always kept for reuse).
  Raises ValueError for an unknown size, RuntimeError when a conversion fails or the round trip differs.
  """
  for size in sizes:
    hf_config_fields(size)  # bad names first, before any work
  workdir = os.path.abspath(workdir)
  env = dict(os.environ if env is None else env)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  records = []
  for size in sizes:
    hf_dir = os.path.join(workdir, "hf", size)
    model = build_hf_dir(size, hf_dir, seed=seed)
    stage(
      f"{size}: {model['params'] / 1e6:.1f}M params, {model['file_bytes'] / _MB:.1f} MB"
      + (f" (built in {model['build_s']:.1f} s)" if model["built"] else " (reused)")
    )
    out = os.path.join(workdir, "out", size)
    shutil.rmtree(out, ignore_errors=True)  # ours, from an earlier run
    os.makedirs(out)
    t5lite_dir, back_dir = os.path.join(out, "t5lite"), os.path.join(out, "hf")
    commands = {
      "import": ["convert", "from-hf", "--hf_dir", hf_dir, "--output", t5lite_dir],
      "export": ["convert", "to-hf", "--checkpoint", t5lite_dir, "--output", back_dir],
    }
    for direction in DIRECTIONS:
      stage(f"{size}: {direction} (t5lite {' '.join(commands[direction][:2])}) ...")
      child = run_child(
        commands[direction],
        os.path.join(out, f"{direction}.record.json"),
        os.path.join(out, f"{direction}.log"),
        env,
      )
      line = _line(size, direction, model, child)
      if direction == "export":
        check = compare_safetensors(
          os.path.join(hf_dir, "model.safetensors"), os.path.join(back_dir, "model.safetensors")
        )
        line.update(round_trip_equal=check["equal"], round_trip_tensors=check["tensors"])
        if not check["equal"]:
          raise RuntimeError(f"{size}: the exported model.safetensors differs from the original: {check}")
      line["date"] = time.strftime("%Y-%m-%d")
      line["cpus"] = os.cpu_count()
      line["loadavg_1m"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
      line["python"] = platform.python_version()
      records.append(line)
      if emit is not None:
        emit(line)
    if not keep:
      shutil.rmtree(out, ignore_errors=True)
  return records


def markdown_table(records: Sequence[Mapping[str, Any]]) -> str:
  """The records as docs/performance.md's table: one row per size, import and export side by side (sizes in
  MiB, as every *_mb field of the records)."""
  rows = [
    "| size | params | file MiB | import s | import peak RSS MiB | export s | export peak RSS MiB |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  by = {(r["size"], r["direction"]): r for r in records}
  for size in dict.fromkeys(r["size"] for r in records):
    imp, exp = by.get((size, "import")), by.get((size, "export"))
    if imp is None or exp is None:
      continue
    rows.append(
      f"| {size} | {imp['params'] / 1e6:.1f}M | {imp['file_mb']:.0f} | {imp['wall_s']:.1f} | "
      f"{imp['peak_rss_mb']:.0f} | {exp['wall_s']:.1f} | {exp['peak_rss_mb']:.0f} |"
    )
  return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["--child"]:
    if len(argv) < 3:
      raise SystemExit("usage: python -m t5lite.bench.convert --child RECORD_JSON convert from-hf|to-hf ...")
    return child_main(argv[1], argv[2:])
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="small,base", help=f"comma-separated, of {', '.join(SIZES)}")
  p.add_argument("--workdir", required=True, help="random HF models are saved (and reused) in WORKDIR/hf/SIZE")
  p.add_argument("--output", default=None, help="JSONL file the records are appended to")
  p.add_argument("--keep", action="store_true", help="keep the converted directories (WORKDIR/out/SIZE)")
  p.add_argument("--seed", type=int, default=0, help="torch seed of the random models")
  args = p.parse_args(argv)
  try:
    sizes = parse_sizes(args.sizes)
  except ValueError as e:
    p.error(str(e))

  def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)
    if args.output:
      with open(args.output, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")

  records = run(sizes, args.workdir, keep=args.keep, seed=args.seed, emit=emit)
  print(markdown_table(records), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())

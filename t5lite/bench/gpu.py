"""The prepared one-shot GPU benchmark: every number we want from a device
machine, in one command that keeps to a total time budget.

    python -m t5lite.bench.gpu --output runs/bench-gpu.jsonl       # on the GPU (make bench-gpu)
    python -m t5lite.bench.gpu --smoke                              # the same plan, tiny, on the CPU
    python -m t5lite.bench.gpu --only reference,base_cold           # a subset

Runs a plan of benchmarks, most important first, each in its own subprocess
with its own timeout:

  reference              plain JAX (t5lite.bench.reference): compile time of a trivial
                         jit; compile and step time of a 12-layer dense MLP stack
  attention_check        t5lite.bench.attention_check: loss and gradients of tiny
                         bfloat16 T5 and decoder-only models (packed and padded
                         batches) with cuDNN attention (what 'auto' runs on a GPU)
                         against the plain einsum attention, and whether cuDNN ran
  base_cold              t5lite.bench.train_step, T5 v1.1 base, bfloat16, batch 128,
                         inputs 512, targets 114, attention 'auto', with an empty
                         compilation cache
  base_warm              the same command with the same cache: time to first step warm
  base_attn_dot_product  base with the plain einsum attention: a base number even
                         when cuDNN attention ('auto') fails
  hf_base                HF transformers (PyTorch) on the same shapes (--hf_script)
  switch_base_8          Switch Transformer base, 8 experts every other layer (top-1), the
                         shapes of base: tokens/s and MFU from active parameters (issue 15)
  large                  T5 v1.1 large, batch 64
  1b                     decoder-only 1b, batch 16, length 2048
  base_attn_<name>       base with the other attention implementations
  {large,1b}_remat_minimal, {large,1b}_scan   the performance knobs

A run that would not fit in what is left of `--budget_s` gets a shorter
timeout, or is skipped when under `--min_run_s` is left. Each run prints ONE
JSON line on stdout as soon as it ends: "run", "status" (ok, timeout, error,
skipped), "wall_s" and the child's own JSON fields (of a run cut off by its
timeout, those of the last JSON line it printed, if any); the children's
progress lines pass through on stderr, so a run cut off shows where it was. An
"env" line comes first (versions, the plan) and a "summary" line last (t5lite
base tokens/s over HF's, the MFU of each run, the attention check's verdict,
whether only 'auto' failed, and switch_base_8 tokens/s over base's). `--output
FILE` writes the same lines to FILE. Exits 0 whatever the runs did.

Runs with the system Python from the repository root (no venv needed); it and
its t5lite children import neither TensorFlow, seqio nor gin. `--smoke` runs
the same plan shape with tiny sizes on the CPU (tests/bench/test_gpu.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from t5lite.bench import jsonl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_HF_SCRIPT = os.path.join(".device", "hf_t5_train_step_gpu.py")

# Attention variants of base. "auto" (the default, which picks per backend)
# is base_cold itself. The first runs right after base_warm (FIRST_VARIANT),
# the others after 1b.
GPU_ATTENTION = ("dot_product", "cudnn_flash_jax")
SMOKE_ATTENTION = ("dot_product",)
FIRST_VARIANT = "dot_product"


@dataclasses.dataclass
class Run:
  """One benchmark: `python argv...` from the repository root."""

  name: str
  argv: list[str]
  timeout_s: float
  skip: Optional[str] = None  # why it will not run, when known before it starts
  note: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The plan's shapes and timeouts for one mode (GPU or CPU smoke)."""

  reference: tuple[str, ...]
  attention_check: tuple[str, ...]
  base: tuple[str, ...]
  switch_base: tuple[str, ...]  # a Switch Transformer with base's shapes (issue 15)
  large: tuple[str, ...]
  one_b: tuple[str, ...]
  common: tuple[str, ...]  # passed to every train_step run
  hf: tuple[str, ...]
  cache_flags: tuple[str, ...]  # with --compilation_cache_dir
  cache_every_run: bool  # False: only base_cold/base_warm use the cache, the rest compile cold
  timeouts: dict


GPU = Sizes(
  reference=("--layers", "12", "--d_model", "768", "--d_ff", "2048", "--batch", "128", "--length", "512"),
  attention_check=("--candidate", "cudnn_flash_jax", "--dtype", "bfloat16"),
  base=("--preset", "base", "--batch", "128", "--inputs", "512", "--targets", "114"),
  switch_base=("--preset", "switch_base_8", "--batch", "128", "--inputs", "512", "--targets", "114"),
  large=("--preset", "large", "--batch", "64", "--inputs", "512", "--targets", "114"),
  one_b=("--model", "decoder_only", "--preset", "1b", "--batch", "16", "--inputs", "1024", "--targets", "1024"),
  common=("--dtype", "bfloat16"),
  hf=("--preset", "base", "--batch", "128", "--dtype", "bfloat16"),
  cache_flags=(),
  cache_every_run=False,
  timeouts={
    "reference": 60,
    "attention_check": 45,
    "base_cold": 150,
    "base_warm": 60,
    "hf_base": 90,
    "switch_base_8": 150,
    "large": 150,
    "1b": 150,
    "variant": 100,
  },
)

# Tiny sizes for 2 CPU cores. float32 and a small vocabulary keep each compile
# short, and every run after base_warm shares base's cache (the state init and
# any program already compiled load from it) so that the plan fits the smoke
# test's time (docs/performance.md). The cache threshold is 0 so that every
# program is cached, however quickly it compiled. The attention check compares
# the CPU kernel (cpu_dot_product, what 'auto' runs on the CPU) with the plain
# attention in float32, where the two agree to under 1e-6, on one-layer stacks
# (eight programs to compile); it does not use the cache, so base_cold stays cold.
SMOKE = Sizes(
  reference=("--layers", "2", "--d_model", "64", "--d_ff", "128", "--batch", "2", "--length", "16"),
  attention_check=("--candidate", "cpu_dot_product", "--dtype", "float32", "--layers", "1", "--vocab_size", "256"),
  base=("--preset", "tiny", "--batch", "2", "--inputs", "32", "--targets", "8"),
  switch_base=("--preset", "switch_tiny", "--batch", "2", "--inputs", "32", "--targets", "8"),
  large=("--preset", "tiny", "--batch", "2", "--inputs", "32", "--targets", "8"),
  one_b=("--model", "decoder_only", "--preset", "tiny", "--batch", "2", "--inputs", "16", "--targets", "16"),
  common=("--dtype", "float32", "--vocab_size", "256"),
  hf=(
    "--preset",
    "tiny",
    "--batch",
    "2",
    "--dtype",
    "float32",
    "--input-len",
    "32",
    "--target-len",
    "8",
    "--vocab",
    "256",
    "--warmup",
    "1",
  ),
  cache_flags=("--compilation_cache_min_compile_s", "0"),
  cache_every_run=True,
  timeouts={
    "reference": 60,
    "attention_check": 120,
    "base_cold": 120,
    "base_warm": 90,
    "hf_base": 90,
    "switch_base_8": 120,
    "large": 120,
    "1b": 120,
    "variant": 120,
  },
)


def build_plan(
  sizes: Sizes,
  *,
  steps: int,
  cache_dir: str,
  attention_variants: Sequence[str],
  attention_names: Optional[Sequence[str]],
  hf_script: str,
  hf_skip: Optional[str],
  timeout_scale: float = 1.0,
) -> list[Run]:
  """The runs in order. `attention_names` are the valid implementations (None:
  unknown, every variant is skipped); `hf_skip` says why HF cannot run."""
  t = {k: v * timeout_scale for k, v in sizes.timeouts.items()}
  step_flags = ["--steps", str(steps)]

  cache = ("--compilation_cache_dir", cache_dir, *sizes.cache_flags)

  def t5lite(shape, *extra, cached=sizes.cache_every_run):
    return ["-m", "t5lite.bench.train_step", *shape, *sizes.common, *step_flags, *extra, *(cache if cached else ())]

  def variant(name):
    skip = None
    if attention_names is None:
      skip = "the attention implementations could not be read from t5lite"
    elif name not in attention_names:
      skip = f"attention {name!r} is not one of this t5lite's {tuple(attention_names)}"
    return Run(f"base_attn_{name}", t5lite(sizes.base, "--attention", name), t["variant"], skip=skip)

  # A base number first, even where 'auto' (cuDNN attention on a GPU) fails:
  # the attention check says whether it can work, base_attn_dot_product runs
  # base without it.
  plan = [
    Run("reference", ["-m", "t5lite.bench.reference", *sizes.reference, *step_flags], t["reference"]),
    Run("attention_check", ["-m", "t5lite.bench.attention_check", *sizes.attention_check], t["attention_check"]),
    Run("base_cold", t5lite(sizes.base, cached=True), t["base_cold"]),
    Run("base_warm", t5lite(sizes.base, cached=True), t["base_warm"]),
    *[variant(n) for n in attention_variants if n == FIRST_VARIANT],
    Run("hf_base", [hf_script, *sizes.hf, *step_flags], t["hf_base"], skip=hf_skip),
    # Issue 15: the Switch Transformer next to dense base (same shapes; MFU counts active parameters).
    Run("switch_base_8", t5lite(sizes.switch_base), t["switch_base_8"]),
    Run("large", t5lite(sizes.large), t["large"]),
    Run("1b", t5lite(sizes.one_b), t["1b"]),
    *[variant(n) for n in attention_variants if n != FIRST_VARIANT],
  ]
  for flag, suffix in ((("--remat_policy", "minimal"), "remat_minimal"), (("--scan_layers",), "scan")):
    plan.append(Run(f"large_{suffix}", t5lite(sizes.large, *flag), t["variant"]))
    plan.append(Run(f"1b_{suffix}", t5lite(sizes.one_b, *flag), t["variant"]))
  return plan


def read_attention_names(env: dict) -> Optional[list[str]]:
  """t5lite's attention implementations, read in a CPU-only subprocess so
  that this process never starts a JAX backend (the children need the GPU)."""
  code = "import json; from t5lite.bench import train_step as t; print(json.dumps(list(t.attention_implementations())))"
  try:
    out = subprocess.run(
      [sys.executable, "-c", code],
      cwd=REPO,
      env={**env, "JAX_PLATFORMS": "cpu"},
      stdout=subprocess.PIPE,
      text=True,
      timeout=120,
      check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])
  except (subprocess.SubprocessError, OSError, ValueError, IndexError):
    return None


def hf_skip_reason(script: str) -> Optional[str]:
  if not os.path.isfile(script):
    return f"{script} does not exist (copy it from ../shared/bench)"
  for module in ("torch", "transformers"):
    if importlib.util.find_spec(module) is None:
      return f"{module} is not importable"
  return None


def last_json_object(text: str) -> Optional[dict]:
  for line in reversed(text.strip().splitlines()):
    line = line.strip()
    if line.startswith("{"):
      try:
        value = json.loads(line)
      except ValueError:
        continue
      if isinstance(value, dict):
        return value
  return None


def execute(run: Run, timeout_s: float, env: dict) -> dict:
  """Runs one benchmark to completion or to its timeout; its stderr passes through."""
  cmd = [sys.executable, *run.argv]
  line = {"run": run.name}
  t0 = time.monotonic()
  try:
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired as e:
    line.update(status="timeout", wall_s=round(time.monotonic() - t0, 1), timeout_s=round(timeout_s, 3))
    partial = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    for key, value in (last_json_object(partial) or {}).items():  # what it printed before (attention_check)
      line.setdefault(key, value)
  else:
    wall = round(time.monotonic() - t0, 1)
    result = last_json_object(proc.stdout or "")
    if proc.returncode == 0 and result is not None:
      line.update(status="ok", wall_s=wall)
    else:
      line.update(status="error", wall_s=wall, returncode=proc.returncode)
      if result is None:
        line["stdout_tail"] = (proc.stdout or "")[-500:]
    for key, value in (result or {}).items():
      line.setdefault(key, value)
  if run.note:
    line["note"] = run.note
  line["cmd"] = shlex.join(["python", *run.argv])
  return line


def _peak_flops(device_kind: Optional[str]) -> Optional[float]:
  if not device_kind:
    return None
  try:
    from t5lite.throughput import PEAK_FLOPS  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return peak
  return None


def summarize(lines: Sequence[dict], wall_s: float) -> dict:
  """The ratio t5lite base / HF base (tokens/s), the MFU of each run, the
  attention check's verdict, and whether base failed with 'auto' but ran with
  the plain attention (then look at cuDNN attention first)."""
  ok = {l["run"]: l for l in lines if l.get("status") == "ok"}
  by = {l["run"]: l for l in lines}
  base_run = next((n for n in ("base_cold", "base_warm", "base_attn_dot_product") if n in ok), None)
  base = ok.get(base_run) if base_run else None
  hf = ok.get("hf_base")
  out: dict = {"run": "summary", "status": "ok", "wall_s": round(wall_s, 1)}
  out["statuses"] = {l["run"]: l["status"] for l in lines if l["run"] not in ("env", "summary")}
  check = by.get("attention_check")
  if check is None:
    out["attention_check"] = None
  else:
    # The probe's verdict (ok, mismatch, fallback, error) when it finished, else its status.
    out["attention_check"] = check.get("verdict") if check["status"] in ("ok", "error") else check["status"]
    out["attention_check_compared"] = check.get("compared")
    if "cudnn_used" in check:
      out["attention_check_cudnn_used"] = check["cudnn_used"]
  out["auto_failed_dot_product_ok"] = (
    by.get("base_cold", {}).get("status") in ("error", "timeout") and "base_attn_dot_product" in ok
  )
  out["base_run"] = base_run  # the base run of the ratio: base_attn_dot_product only when 'auto' failed
  if base and hf and hf.get("tokens_per_s"):
    out["base_vs_hf_tokens_per_s"] = round(base["tokens_per_s"] / hf["tokens_per_s"], 3)
    out["base_tokens_per_s"], out["hf_base_tokens_per_s"] = base["tokens_per_s"], hf["tokens_per_s"]
  else:
    out["base_vs_hf_tokens_per_s"] = None
  switch = ok.get("switch_base_8")
  if base and switch and base.get("tokens_per_s") and switch.get("tokens_per_s"):
    # Issue 15: the same shapes with 8 experts in every other layer (about the same active FLOPs per token).
    out["switch_base_8_vs_base_tokens_per_s"] = round(switch["tokens_per_s"] / base["tokens_per_s"], 3)
  else:
    out["switch_base_8_vs_base_tokens_per_s"] = None
  if "base_cold" in ok and "base_warm" in ok:
    for key in ("compile_s", "time_to_first_step_s"):
      out[f"base_{key}_cold_warm"] = [ok["base_cold"].get(key), ok["base_warm"].get(key)]
  mfu = {}
  for name, l in ok.items():
    if l.get("impl") == "t5lite":
      mfu[name] = l.get("mfu")
    elif l.get("impl") == "jax_reference":
      peak = _peak_flops(l.get("device") if l.get("platform") != "cpu" else None)
      mfu[name] = round(l["dense_tflops_per_s"] * 1e12 / peak, 4) if peak else None
    elif name == "hf_base":
      peak = _peak_flops(l.get("device"))
      flops = base.get("flops_per_step") if base else None
      mfu[name] = round(flops / l["median_step_s"] / peak, 4) if peak and flops and l.get("median_step_s") else None
  out["mfu"] = {k: (None if v is None else round(v, 4)) for k, v in mfu.items()}
  return out


def environment(mode: str, budget_s: float, plan: Sequence[Run]) -> dict:
  versions = {}
  for dist in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorboard", "torch", "transformers"):
    try:
      versions[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      versions[dist] = None
  needed = ("jax", "flax", "optax", "orbax.checkpoint", "tensorboard", "numpy")  # by the t5lite runs
  line = {
    "run": "env",
    "status": "ok",
    "mode": mode,
    "budget_s": budget_s,
    "python": platform.python_version(),
    "executable": sys.executable,
    "versions": versions,
    "missing_for_t5lite": [m for m in needed if not _importable(m)],
    "plan": [r.name for r in plan],
    "host": platform.node(),
    "cpus": os.cpu_count(),
  }
  if shutil.which("nvidia-smi"):
    try:
      line["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=20,
      ).stdout.strip()
    except (subprocess.SubprocessError, OSError) as e:
      line["nvidia_smi"] = f"nvidia-smi failed: {e}"
  return line


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # a missing parent package
    return False


def child_env(workdir: str, smoke: bool) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  env["TMPDIR"] = os.path.join(workdir, "tmp")  # what a killed child leaves goes with the workdir
  os.makedirs(env["TMPDIR"], exist_ok=True)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if smoke:
    env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, to prove the plan")
  p.add_argument("--budget_s", type=float, default=470.0, help="deadline for the whole plan (seconds)")
  p.add_argument("--min_run_s", type=float, default=20.0, help="skip a run when less than this is left")
  p.add_argument("--timeout_scale", type=float, default=1.0, help="multiplies every run's timeout")
  p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 8; smoke 1)")
  p.add_argument("--only", default="", help="comma-separated run names (default: the whole plan)")
  p.add_argument(
    "--hf_script",
    default=DEFAULT_HF_SCRIPT,
    help="the PyTorch baseline script (copy ../shared/bench/hf_t5_train_step_gpu.py there)",
  )
  p.add_argument("--output", default="", help="also write the JSON lines to this file")
  p.add_argument("--keep_workdir", action="store_true", help="keep the compilation cache and temp files")
  args = p.parse_args(argv)
  if args.steps is None:
    args.steps = 1 if args.smoke else 8
  if args.steps < 1 or args.budget_s <= 0 or args.timeout_scale <= 0:
    p.error("--steps must be >= 1, --budget_s and --timeout_scale > 0")
  args.only = [n.strip() for n in args.only.split(",") if n.strip()]
  args.parser = p
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  start = time.monotonic()
  args = parse_args(argv)
  sizes = SMOKE if args.smoke else GPU
  variants = SMOKE_ATTENTION if args.smoke else GPU_ATTENTION
  workdir = tempfile.mkdtemp(prefix="t5lite-bench-gpu-")
  env = child_env(workdir, args.smoke)
  hf_script = os.path.abspath(args.hf_script)

  def plan_with(names):
    return build_plan(
      sizes,
      steps=args.steps,
      cache_dir=os.path.join(workdir, "compilation_cache"),
      attention_variants=variants,
      attention_names=names,
      hf_script=hf_script,
      hf_skip=hf_skip_reason(hf_script),
      timeout_scale=args.timeout_scale,
    )

  known = [r.name for r in plan_with(())]
  unknown = [n for n in args.only if n not in known]
  if unknown:
    args.parser.error(f"--only: unknown run(s) {unknown}; valid names are {known}")
  wanted = set(args.only or known)
  names = None
  if any(n.startswith("base_attn_") for n in wanted):
    names = read_attention_names(env)
  plan = [r for r in plan_with(names) if r.name in wanted]
  if "base_warm" in wanted and "base_cold" not in wanted:
    next(r for r in plan if r.name == "base_warm").note = "base_cold did not run first: the cache started empty"

  emit = jsonl.Emitter(args.output)
  lines = emit.lines

  try:
    emit(environment("smoke" if args.smoke else "gpu", args.budget_s, plan))
    for run in plan:
      left = args.budget_s - (time.monotonic() - start)
      if run.skip:
        emit({"run": run.name, "status": "skipped", "wall_s": 0.0, "reason": run.skip})
        continue
      if left < args.min_run_s:
        emit(
          {
            "run": run.name,
            "status": "skipped",
            "wall_s": 0.0,
            "reason": f"budget: {max(left, 0.0):.0f} s left of {args.budget_s:.0f} s",
          }
        )
        continue
      timeout = min(run.timeout_s, left)
      print(f"[bench.gpu] {run.name}: timeout {timeout:.0f} s, {left:.0f} s left", file=sys.stderr, flush=True)
      emit(execute(run, timeout, env))
    emit(summarize(lines, time.monotonic() - start))
  finally:
    emit.close()
    if not args.keep_workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Switch Transformer against the dense T5 on the CPU, and per-device bytes under expert parallelism (issue 15).

    python -m t5lite.bench.moe --output runs/bench-moe.jsonl      # 500 steps each, ~8 min on 2 cores
    python -m t5lite.bench.moe --parts bytes --bytes_presets switch_tiny,switch_base_8,switch_base_16
    python -m t5lite.bench.moe --parts paired --pairs 40
    python -m t5lite.bench.moe --smoke                          # tiny, for tests/bench/test_moe.py

Part `train`: the quickstart (`gin/experiments/quickstart.gin`, dense T5 v1.1 'tiny') and the
Switch quickstart (`gin/experiments/quickstart_switch.gin`, 'switch_tiny': the same sizes with 8
experts in every other layer, top-1 routing) are each trained by `python -m t5lite.train` in a
subprocess with the same data stream (pydocs_span_corruption, shuffled and packed, seed 0), the
same Adafactor and schedule and `--steps` steps, on one device, with the compilation cache off
(a cold compile) and no checkpoint before the end. Top-1 routing with the dense d_ff gives the
same active FLOPs per token as the dense model, plus the router's [d_model, E] matmul. Read
back from each run: its MODEL_DIR/metrics.jsonl (loss and tokens/s every `--summary_every`
steps, and the moe/* metrics), its start-up lines on stderr (`train state ready in`, `first
batch in`, `train step compiled in`, `first step in`) and the parameter bytes of
model-info.txt. Counted here from the same presets (`t5lite.models.t5.T5_PRESETS` with the
quickstart's vocabulary): total and active parameters (a token uses k of E experts), FLOPs per
token (`model.flops_per_step`, active parameters) and the router's share of them; the run's
own FLOPs per token (flops_per_s / tokens_per_s) is checked against it. tokens/s is the median
over the summary windows (the trainer starts its first window after the compiled first step);
the loss is the train cross entropy (without the MoE auxiliary losses) at the last step and its
mean over the last `--loss_window` steps' summaries, both models having seen the same batches.
Each run also evaluates `--eval_batches` validation batches at its last step (default 4, the
quickstart's EVAL_STEPS; the MoE model with its eval capacity factor): the eval loss and accuracy. A
run that fails there still reports its train numbers, with status "error" and the tail of its stderr.

Part `paired`: the runs above come one after the other, and on a machine shared with other jobs
their tokens/s can differ by tens of percent for reasons of load alone. So the two train steps
also run in one process (a subprocess with one CPU device and t5lite's process settings),
alternately, `--pairs` times with the order swapped every pair, on random packed batches of the
quickstart's shapes (`t5lite.bench.train_step.StepRunner`: the Trainer's compiled step, as
`t5lite.bench.paired` pairs t5lite with PyTorch): the median over pairs of the Switch step
time / the dense step time is the cost of routing, independent of the machine's drift.

Part `bytes`: `t5lite.bench.moe_bytes` (per-device bytes of the expert kernels and their
Adafactor statistics on 8 simulated devices; in a subprocess when jax is already imported).

Prints one JSON line per training run, one for the pairs and one per (preset, mesh), then a summary line (`--output FILE`
writes the same lines); stages go to stderr as they start and end (`[moe] dense: ...`), and the
children's start-up lines pass through (`[moe:dense] startup: ...`), so a run cut off shows
where it was. No timed assertions: the numbers are for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional, Sequence

from t5lite.bench import jsonl, moe_bytes, moe_paired
from t5lite.bench.moe_paired import MODELS, QUICKSTART_BATCH, QUICKSTART_LENGTHS, QUICKSTART_VOCAB, stage

REPO = moe_bytes.REPO
DEVICES = moe_bytes.DEVICES
_DEVICE_FLAG = moe_bytes.DEVICE_FLAG
MESHES = moe_bytes.MESHES

# The startup lines of t5lite.trainer.Trainer.train, in seconds.
_STARTUP = {
  "state_init_s": re.compile(r"train state ready in ([0-9.]+) s"),
  "first_batch_s": re.compile(r"first batch in ([0-9.]+) s"),
  "compile_s": re.compile(r"train step compiled in ([0-9.]+) s"),
  "first_step_s": re.compile(r"first step in ([0-9.]+) s"),
}
_PARAM_BYTES = re.compile(r"^parameters: ([0-9,]+) bytes in all")
_MOE_KEYS = (
  "moe/aux_loss",
  "moe/router_z_loss",
  "moe/dropped_fraction",
  "moe/expert_load_min",
  "moe/expert_load_max",
  "moe/router_entropy",
)


# ---- counting (no device work) ---------------------------------------------


def build_model(preset: str, vocab_size: int):
  """The EncoderDecoderModel of a T5 preset (t5.T5_PRESETS) with this vocabulary."""
  from t5lite.models import model as model_lib, t5  # pylint: disable=g-import-not-at-top

  return model_lib.EncoderDecoderModel(config=t5.t5_config(preset, vocab_size=vocab_size))


def count_model(preset: str, vocab_size: int, batch: int, lengths: dict[str, int]) -> dict[str, Any]:
  """Parameters (total, active: k of E experts, expert), FLOPs per token and the router's share of them."""
  import flax  # pylint: disable=g-import-not-at-top

  model = build_model(preset, vocab_size)
  cfg = model.config
  shapes = model.input_shapes(1, lengths)
  abstract = flax.core.meta.unbox(model.abstract_params(shapes))
  total = active = expert = 0
  router = {"encoder": 0, "decoder": 0}
  for path, leaf, names in moe_bytes.flat_with_axes(abstract, model.param_logical_axes(shapes)):
    size = math.prod(leaf.shape)
    total += size
    if "expert" in names:
      expert += size
      active += size // leaf.shape[names.index("expert")] * cfg.num_selected_experts
    else:
      active += size
    if path.endswith("/router"):
      router[path.split("/")[0]] += size
  tokens = model.tokens_per_step(batch, lengths)
  # Forward 2 FLOPs per router parameter per token of its stack, x3 for forward + backward.
  router_flops = 6 * (router["encoder"] * lengths["inputs"] + router["decoder"] * lengths["targets"]) * batch
  return {
    "preset": preset,
    "vocab_size": vocab_size,
    "num_experts": cfg.num_experts,
    "num_selected_experts": cfg.num_selected_experts if cfg.num_experts else None,
    "moe_layer_interval": cfg.moe_layer_interval if cfg.num_experts else None,
    "params": total,
    "active_params": active,
    "expert_params": expert,
    "router_params": router["encoder"] + router["decoder"],
    "flops_per_token": model.flops_per_step(batch, lengths) / tokens,
    "router_flops_per_token": router_flops / tokens,
  }


# ---- part 'train': the quickstarts in subprocesses -------------------------


def train_env() -> dict:
  """The children's environment: one CPU device's worth of XLA_FLAGS (no simulated devices)."""
  env = dict(os.environ)
  flags = _DEVICE_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def train_argv(name: str, model_dir: str, args) -> list[str]:
  gin_file = MODELS[name][0]
  steps = args.steps
  argv = [
    "-m",
    "t5lite.train",
    f"--gin_file={gin_file}",
    f"--gin.MODEL_DIR={json.dumps(model_dir)}",
    f"--gin.TRAIN_STEPS={steps}",
    f"--gin.SUMMARY_EVERY={args.summary_every}",
    f"--gin.EVAL_EVERY={steps if args.eval_batches else 0}",
    f"--gin.EVAL_STEPS={max(args.eval_batches, 1)}",
    f"--gin.CHECKPOINT_EVERY={steps}",  # one checkpoint, after the last step
    '--gin.COMPILATION_CACHE_DIR="none"',  # a cold compile, and nothing left in ~/.cache
    "--gin.NUM_DEVICES=1",
    f"--gin.SEED={args.seed}",
    "--gin_bindings=train_lib.train.progress = False",
  ]
  if args.batch is not None:
    argv.append(f"--gin.BATCH_SIZE={args.batch}")
  if args.inputs is not None:
    argv.append(f"--gin.TASK_FEATURE_LENGTHS={json.dumps({'inputs': args.inputs, 'targets': args.targets})}")
  return argv


class TrainRun:
  """One `python -m t5lite.train` child; its stderr passes through with a prefix and is kept."""

  def __init__(self, name: str, workdir: str, args):
    self.name = name
    self.model_dir = os.path.join(workdir, name)
    shutil.rmtree(self.model_dir, ignore_errors=True)
    os.makedirs(self.model_dir)
    self.argv = train_argv(name, self.model_dir, args)
    self.stderr_lines: list[str] = []
    self.load_start = moe_paired.loadavg()
    stage(f"{name}: starting {MODELS[name][0]} ...")
    self.t0 = time.perf_counter()
    self._stdout = open(os.path.join(workdir, f"{name}.stdout.txt"), "w", encoding="utf-8")
    self.proc = subprocess.Popen(
      [sys.executable, *self.argv],
      cwd=REPO,
      env=train_env(),
      stdout=self._stdout,
      stderr=subprocess.PIPE,
      text=True,
      errors="replace",
    )
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    for line in self.proc.stderr:
      line = line.rstrip("\n")
      self.stderr_lines.append(line)
      if line.strip():
        print(f"[moe:{self.name}] {line}", file=sys.stderr, flush=True)

  def wait(self, timeout_s: float) -> tuple[str, float]:
    """(status 'ok' / 'error' / 'timeout', wall seconds)."""
    try:
      rc = self.proc.wait(timeout=max(timeout_s, 1.0))
      status = "ok" if rc == 0 else "error"
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      status = "timeout"
    wall = time.perf_counter() - self.t0
    self._reader.join(timeout=10)
    self._stdout.close()
    stage(f"{self.name}: {status} in {wall:.1f} s")
    return status, wall


def read_metrics(model_dir: str) -> list[dict]:
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def read_param_bytes(model_dir: str) -> Optional[int]:
  path = os.path.join(model_dir, "model-info.txt")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    for line in f:
      m = _PARAM_BYTES.match(line)
      if m:
        return int(m.group(1).replace(",", ""))
  return None


def summarize_run(run: TrainRun, status: str, wall_s: float, counts: dict, args) -> dict:
  """The JSON line of one training run."""
  records = read_metrics(run.model_dir)
  train = [r for r in records if r.get("split") == "train"]
  evals = [r for r in records if r.get("split") == "eval"]
  windows = [r["tokens_per_s"] for r in train if "tokens_per_s" in r]
  startup = {}
  for key, pattern in _STARTUP.items():
    found = [float(m.group(1)) for line in run.stderr_lines for m in [pattern.search(line)] if m]
    startup[key] = found[0] if found else None
  last = train[-1] if train else {}
  steps_done = last.get("step", 0)
  recent = [r for r in train if r["step"] > steps_done - args.loss_window] or train[-1:]
  flops_run = [r["flops_per_s"] / r["tokens_per_s"] for r in train if r.get("tokens_per_s")]
  param_bytes = read_param_bytes(run.model_dir)
  line: dict[str, Any] = {
    "part": "train",
    "run": run.name,
    "gin_file": MODELS[run.name][0],
    "status": status,
    "wall_s": round(wall_s, 1),
    **counts,
    "steps": steps_done,
    "batch": args.batch or QUICKSTART_BATCH,
    "lengths": {"inputs": args.inputs, "targets": args.targets} if args.inputs else dict(QUICKSTART_LENGTHS),
    "flops_per_token_run": moe_paired.r(flops_run[0], 1) if flops_run else None,
    "param_bytes_run": param_bytes,
    "tokens_per_s": moe_paired.r(statistics.median(windows), 1) if windows else None,
    "tokens_per_s_min_max": [moe_paired.r(min(windows), 1), moe_paired.r(max(windows), 1)] if windows else None,
    "step_time_s": moe_paired.r(statistics.median(r["step_time_s"] for r in train if "step_time_s" in r))
    if windows
    else None,
    "summary_windows": len(windows),
    **{k: moe_paired.r(v, 2) for k, v in startup.items()},
    "loss_last": moe_paired.r(last.get("loss")),
    "loss_mean_last": moe_paired.r(statistics.mean(r["loss"] for r in recent)) if recent else None,
    "loss_window_steps": [recent[0]["step"], recent[-1]["step"]] if recent else None,
    "accuracy_last": moe_paired.r(last.get("accuracy")),
    "accuracy_mean_last": moe_paired.r(statistics.mean(r["accuracy"] for r in recent)) if recent else None,
    "losses": [[r["step"], moe_paired.r(r["loss"])] for r in train],
    "eval": {k: moe_paired.r(evals[-1][k]) for k in ("step", "loss", "accuracy") if k in evals[-1]} if evals else None,
    "loadavg_1m_start_end": [run.load_start, moe_paired.loadavg()],
    "cmd": shlex.join(["python", *run.argv]),
  }
  if counts.get("num_experts"):
    line["moe_last"] = {k: moe_paired.r(last[k]) for k in _MOE_KEYS if k in last}
    line["moe_mean_last"] = {k: moe_paired.r(statistics.mean(r[k] for r in recent)) for k in _MOE_KEYS if k in last}
  if status != "ok":
    line["stderr_tail"] = "\n".join(run.stderr_lines[-15:])
  return line


def run_train(args, workdir: str, emit) -> list[dict]:
  batch = args.batch or QUICKSTART_BATCH
  lengths = {"inputs": args.inputs, "targets": args.targets} if args.inputs else dict(QUICKSTART_LENGTHS)
  counts = {}
  for name in args.models:
    stage(f"{name}: counting parameters and FLOPs of {MODELS[name][1]} ...")
    counts[name] = count_model(MODELS[name][1], QUICKSTART_VOCAB, batch, lengths)
  lines = []
  if args.concurrent:
    runs = [TrainRun(name, workdir, args) for name in args.models]
    results = [run.wait(args.timeout_s) for run in runs]
  else:
    runs, results = [], []
    for name in args.models:
      runs.append(TrainRun(name, workdir, args))
      results.append(runs[-1].wait(args.timeout_s))
  for run, (status, wall) in zip(runs, results):
    line = summarize_run(run, status, wall, counts[run.name], args)
    if args.concurrent:
      line["note"] = "the runs shared the cores (--concurrent): their times are not comparable"
    emit(line)
    lines.append(line)
  return lines


def start_paired(args) -> subprocess.Popen:
  """The paired part in a fresh process: one CPU device, t5lite's process settings (t5lite.runtime)."""
  cmd = [sys.executable, "-m", "t5lite.bench.moe", "--parts", "paired", "--pairs", str(args.pairs)]
  cmd += ["--seed", str(args.seed)] + (["--smoke"] if args.smoke else [])
  for flag in ("batch", "inputs", "targets"):
    if getattr(args, flag) is not None:
      cmd += [f"--{flag}", str(getattr(args, flag))]
  stage("paired: starting a subprocess with one CPU device ...")
  return subprocess.Popen(cmd, cwd=REPO, env=train_env(), stdout=subprocess.PIPE, text=True)


def finish_paired(proc: subprocess.Popen, timeout_s: float) -> dict:
  """The paired line of a `start_paired` process ('status' ok, error or timeout)."""
  try:
    out, _ = proc.communicate(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.communicate()
    return {"part": "paired", "status": "timeout"}
  found = [l for l in (json.loads(t) for t in out.splitlines() if t.startswith("{")) if l.get("part") == "paired"]
  if proc.returncode or not found:
    return {"part": "paired", "status": "error", "returncode": proc.returncode}
  return dict(found[0], status="ok")


# ---- summary ------------------------------------------------------------------


def summarize(lines: Sequence[dict], wall_s: float) -> dict:
  """Switch over dense (tokens/s, loss, FLOPs and parameters) and whether each expert-parallel
  mesh holds exactly 1 / (devices the expert leaves are split over) of the expert bytes."""
  by = {l["run"]: l for l in lines if l.get("part") == "train"}
  out: dict[str, Any] = {"part": "summary", "wall_s": round(wall_s, 1)}
  d, s = by.get("dense"), by.get("switch")
  if d and s:
    out["statuses"] = {"dense": d["status"], "switch": s["status"]}
    if d.get("tokens_per_s") and s.get("tokens_per_s"):
      out["switch_over_dense_tokens_per_s"] = round(s["tokens_per_s"] / d["tokens_per_s"], 3)
    if d.get("compile_s") and s.get("compile_s"):
      out["switch_over_dense_compile_s"] = round(s["compile_s"] / d["compile_s"], 3)
    for key in ("loss_last", "loss_mean_last"):
      if d.get(key) is not None and s.get(key) is not None:
        out[f"switch_minus_dense_{key}"] = round(s[key] - d[key], 4)
    if (d.get("eval") or {}).get("loss") is not None and (s.get("eval") or {}).get("loss") is not None:
      out["switch_minus_dense_eval_loss"] = round(s["eval"]["loss"] - d["eval"]["loss"], 4)
    out["switch_over_dense_flops_per_token"] = round(s["flops_per_token"] / d["flops_per_token"], 6)
    out["switch_minus_dense_flops_per_token"] = s["flops_per_token"] - d["flops_per_token"]
    out["router_flops_per_token"] = s["router_flops_per_token"]
    out["switch_over_dense_params"] = round(s["params"] / d["params"], 3)
    out["switch_over_dense_active_params"] = round(s["active_params"] / d["active_params"], 6)
  paired = next((l for l in lines if l.get("part") == "paired" and l.get("status") == "ok"), None)
  if paired:
    out["paired_switch_over_dense_step_time"] = paired["switch_over_dense_step_time_median"]
  params_ok, opt_ok = {}, {}
  for l in lines:
    if l.get("part") != "bytes":
      continue
    key = f"{l['preset']} {l['mesh_label']}"
    # Expert kernels [expert, embed, mlp]: 'expert' -> the expert axis, 'embed' -> fsdp.
    shards = l["mesh"]["expert"] * l["mesh"]["fsdp"]
    params_ok[key] = l["params_expert_bytes_per_device"] * shards == l["params_expert_bytes"]
    if l["mesh"]["fsdp"] == 1:  # with fsdp, Adafactor's column statistics stay whole over it
      opt_ok[key] = l["opt_state_expert_bytes_per_device"] * l["mesh"]["expert"] == l["opt_state_expert_bytes"]
  if params_ok:
    out["expert_params_split_exactly"] = params_ok
    out["expert_opt_state_split_exactly"] = opt_ok
  return out


# ---- main ----------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="tiny sizes and steps, the runs side by side (the test)")
  p.add_argument("--parts", default="train,paired,bytes", help="comma-separated: train, paired, bytes")
  p.add_argument("--models", default="dense,switch", help="comma-separated: dense, switch")
  p.add_argument(
    "--steps", type=int, default=None, help="train steps of each model (default 500, the quickstart's; smoke 3)"
  )
  p.add_argument("--summary_every", type=int, default=None, help="metrics every N steps (default 10; smoke 1)")
  p.add_argument("--pairs", type=int, default=None, help="paired: timed step pairs (default 40; smoke 2)")
  p.add_argument("--loss_window", type=int, default=100, help="loss_mean_last: the summaries of the last N steps")
  p.add_argument(
    "--eval_batches",
    type=int,
    default=None,
    help="validation batches evaluated at the last step (0: none; default 4; smoke 0)",
  )
  p.add_argument("--batch", type=int, default=None, help=f"BATCH_SIZE (default the quickstart's {QUICKSTART_BATCH})")
  p.add_argument(
    "--inputs", type=int, default=None, help="inputs length (default the quickstart's 256; with --targets)"
  )
  p.add_argument("--targets", type=int, default=None, help="targets length (default the quickstart's 58)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--concurrent",
    action="store_true",
    help="start the training runs and the pairs at once (smoke: faster; their times share the cores)",
  )
  p.add_argument(
    "--bytes_presets",
    default=None,
    help="comma-separated T5 presets (default switch_tiny,switch_base_8; smoke switch_tiny)",
  )
  p.add_argument("--timeout_s", type=float, default=None, help="per training run (default 1800; smoke 300)")
  p.add_argument("--workdir", default="", help="where the runs' MODEL_DIRs go (default: a temporary directory)")
  p.add_argument("--keep_workdir", action="store_true")
  p.add_argument("--output", default="", help="also write the JSON lines to this file")
  args = p.parse_args(argv)
  args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
  args.models = [x.strip() for x in args.models.split(",") if x.strip()]
  if not args.parts or set(args.parts) - {"train", "paired", "bytes"}:
    p.error(f"--parts {args.parts}: valid parts are train, paired, bytes")
  if not args.models or set(args.models) - set(MODELS):
    p.error(f"--models {args.models}: valid models are {', '.join(MODELS)}")
  smoke = args.smoke
  defaults = dict(
    steps=3 if smoke else 500,
    summary_every=1 if smoke else 10,
    pairs=2 if smoke else 40,
    eval_batches=0 if smoke else 4,
    batch=4 if smoke else None,
    inputs=64 if smoke else None,
    targets=16 if smoke else None,
    bytes_presets="switch_tiny" if smoke else "switch_tiny,switch_base_8",
    timeout_s=300.0 if smoke else 1800.0,
  )
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if smoke:
    args.concurrent = True
  if (args.inputs is None) != (args.targets is None):
    p.error("--inputs and --targets go together")
  if args.steps < 2 or min(args.summary_every, args.loss_window, args.pairs) < 1 or args.eval_batches < 0:
    p.error("--steps must be >= 2, --summary_every, --loss_window and --pairs >= 1, --eval_batches >= 0")
  args.bytes_presets = [x.strip() for x in args.bytes_presets.split(",") if x.strip()]
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  start = time.monotonic()
  args = parse_args(argv)
  paired_here = args.parts == ["paired"]
  if paired_here and "jax" not in sys.modules:
    from t5lite import runtime  # pylint: disable=g-import-not-at-top  (imports no jax)

    runtime.apply_process_settings()  # as `t5lite train` does, before JAX starts
  if "bytes" in args.parts and "jax" not in sys.modules and not _DEVICE_FLAG.search(os.environ.get("XLA_FLAGS", "")):
    # Before jax is imported: the bytes part runs here on 8 simulated devices. The
    # training children get XLA_FLAGS without it (train_env).
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  workdir = args.workdir or tempfile.mkdtemp(prefix="t5lite-bench-moe-")
  os.makedirs(workdir, exist_ok=True)
  emit = jsonl.Emitter(args.output)
  lines = emit.lines
  paired: Optional[subprocess.Popen] = None

  try:
    import jax  # pylint: disable=g-import-not-at-top

    emit(
      {
        "part": "env",
        "mode": "smoke" if args.smoke else "full",
        "parts": args.parts,
        "models": args.models,
        "steps": args.steps,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "cpus": os.cpu_count(),
        "loadavg_1m": moe_paired.loadavg(),
        "host": platform.node(),
      }
    )
    if "paired" in args.parts and not paired_here and args.concurrent and "train" in args.parts:
      paired = start_paired(args)  # beside the training runs (--concurrent)
    if "train" in args.parts:
      run_train(args, workdir, emit)
    if paired_here:
      emit(dict(moe_paired.run_paired(args), status="ok"))
    elif "paired" in args.parts:
      line = finish_paired(paired or start_paired(args), args.timeout_s)
      if paired is not None:
        line["note"] = "the pairs ran beside the training runs (--concurrent): their times are not comparable"
      emit(line)
    if "bytes" in args.parts:
      if jax.device_count() >= DEVICES:
        results = moe_bytes.run_bytes(args.bytes_presets, stage)
      else:
        results = moe_bytes.bytes_in_subprocess(args.bytes_presets, args.timeout_s, stage)
      for line in results:
        emit(line)
    emit(summarize(lines, time.monotonic() - start))
  finally:
    if paired is not None and paired.poll() is None:  # an error above left it running
      paired.kill()
      paired.wait()
    emit.close()
    if not (args.keep_workdir or args.workdir):
      shutil.rmtree(workdir, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

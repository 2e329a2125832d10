"""t5lite's train step and the HF transformers (PyTorch) baseline, step by step in turn.

    python -m t5lite.bench.paired --hf_python /tmp/hfvenv/bin/python \\
        --preset small --batch 8 --inputs 512 --targets 114 --steps 10

On a shared machine whose speed drifts (docs/performance.md has the 2-core
dev box's drift), two benchmarks run one after the other can differ by more
than the effect being measured. Here both
run at once but never together: t5lite runs one training step, then the
PyTorch worker (a subprocess in the environment of `--hf_python`, which needs
torch and transformers) runs one, and so on. Each pair of steps sees nearly the
same machine, so the per-pair ratio is what is reported: `ratio_median` is the
median over pairs of PyTorch step time / t5lite step time (> 1: t5lite is
faster). The idle side waits on a pipe and uses no CPU.

The t5lite side is `t5lite.bench.train_step` (the Trainer's jitted step,
Adafactor with T5 defaults, random packed batches). The PyTorch side builds
the model, optimizer and batches with the functions of the shared baseline
script `--hf_script` (`../shared/bench/hf_t5_train_step.py`:
T5ForConditionalGeneration with an untied output layer, transformers'
Adafactor, `torch.set_flush_denormal(True)`), and times each step as that
script does.

Prints ONE JSON line. The compile step (t5lite) and `--hf_warmup` steps
(PyTorch) run first and are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Optional, Sequence

from t5lite import runtime

# Runs under --hf_python. Reads one command per line on stdin ("step" or
# "quit") and answers each step with a JSON line {"wall": s, "cpu": s, "loss": x}.
_WORKER = r"""
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("hf_baseline", sys.argv[1])
hf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hf)
import torch
from transformers import T5ForConditionalGeneration
from transformers.optimization import Adafactor
preset, batch, inputs, targets, vocab, threads, seed = sys.argv[2], *map(int, sys.argv[3:9])
torch.set_num_threads(threads)
if not torch.set_flush_denormal(True):
    raise SystemExit("set_flush_denormal is not supported on this CPU")
torch.manual_seed(seed)
model = T5ForConditionalGeneration(hf.build_config(preset, vocab, 0.0))
hf.untie_lm_head(model)
model.train()
opt = Adafactor(model.parameters(), lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False)
g = torch.Generator().manual_seed(seed + 1)
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"ready": True, "params": params, "torch": torch.__version__}), flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    inp = torch.randint(2, vocab, (batch, inputs), generator=g)
    lab = torch.randint(2, vocab, (batch, targets), generator=g)
    t0, c0 = time.perf_counter(), time.process_time()
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=inp, attention_mask=torch.ones_like(inp), labels=lab)
    out.loss.backward()
    opt.step()
    loss = out.loss.item()
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "loss": loss}),
          flush=True)
"""


def default_hf_script() -> str:
  """../shared/bench/hf_t5_train_step.py beside the repository this package is in."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(os.path.dirname(repo), "shared", "bench", "hf_t5_train_step.py")


class HfWorker:
  """The PyTorch side: a subprocess that runs one step per request."""

  def __init__(self, python: str, script: str, args):
    cmd = [
      python,
      "-c",
      _WORKER,
      script,
      args.preset,
      str(args.batch),
      str(args.inputs),
      str(args.targets),
      str(args.vocab_size),
      str(args.hf_threads),
      str(args.seed),
    ]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the PyTorch worker exited (code {self.proc.wait()}); see its messages above")
    return json.loads(line)

  def step(self) -> dict:
    self.proc.stdin.write("step\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    if self.proc.poll() is None:  # still running: ask it to stop
      self.proc.stdin.write("quit\n")
      self.proc.stdin.close()
    self.proc.wait(timeout=60)


def run(args) -> dict:
  from t5lite.bench import train_step  # pylint: disable=g-import-not-at-top

  if args.model != "encoder_decoder":
    raise SystemExit("--model: the PyTorch baseline is an encoder-decoder T5; only encoder_decoder is paired")
  worker = HfWorker(args.hf_python, args.hf_script, args)
  runner = train_step.StepRunner(args)
  try:
    compile_s = runner.step(0)[0]
    for _ in range(args.hf_warmup):
      worker.step()
    ours, theirs, ours_cpu, theirs_cpu, hf_losses = [], [], [], [], []
    for i in range(1, 1 + args.steps):
      wall, cpu = runner.step(i)
      ours.append(wall)
      ours_cpu.append(cpu)
      r = worker.step()
      theirs.append(r["wall"])
      theirs_cpu.append(r["cpu"])
      hf_losses.append(r["loss"])
  finally:
    worker.close()
    runner.close()

  tokens = runner.model.tokens_per_step(args.batch, runner.lengths)
  ratios = [t / o for o, t in zip(ours, theirs)]
  med_o, med_t = statistics.median(ours), statistics.median(theirs)
  return {
    "preset": args.preset,
    "batch": args.batch,
    "inputs": args.inputs,
    "targets": args.targets,
    "dtype": args.dtype,
    "steps": args.steps,
    "ratio_median": round(statistics.median(ratios), 3),
    "ratio_min": round(min(ratios), 3),
    "ratio_max": round(max(ratios), 3),
    "pairs_t5lite_faster": sum(r > 1.0 for r in ratios),
    "t5lite_tokens_per_s": round(tokens / med_o, 1),
    "hf_tokens_per_s": round(tokens / med_t, 1),
    "t5lite_median_step_s": round(med_o, 4),
    "hf_median_step_s": round(med_t, 4),
    "t5lite_step_s": [round(x, 3) for x in ours],
    "hf_step_s": [round(x, 3) for x in theirs],
    "t5lite_cpu_per_wall": round(sum(ours_cpu) / sum(ours), 2),
    "hf_cpu_per_wall": round(sum(theirs_cpu) / sum(theirs), 2),
    "t5lite_compile_s": round(compile_s, 2),
    "t5lite_params": runner.n_params,
    "hf_params": worker.info["params"],
    "t5lite_loss_first_last": [round(runner.losses[0], 4), round(runner.losses[-1], 4)],
    "hf_loss_first_last": [round(hf_losses[0], 4), round(hf_losses[-1], 4)],
    "torch": worker.info["torch"],
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def parse_args(argv: Optional[Sequence[str]] = None):
  from t5lite.bench import train_step  # pylint: disable=g-import-not-at-top

  extra = argparse.ArgumentParser(add_help=False)
  extra.add_argument("--hf_python", required=True, help="a Python with torch and transformers")
  extra.add_argument(
    "--hf_script", default=default_hf_script(), help="the shared baseline script (default: %(default)s)"
  )
  extra.add_argument("--hf_warmup", type=int, default=2, help="untimed PyTorch steps first")
  extra.add_argument("--hf_threads", type=int, default=2, help="torch.set_num_threads")
  known, rest = extra.parse_known_args(argv)
  args = train_step.parse_args(rest)
  for k, v in vars(known).items():
    setattr(args, k, v)
  if not os.path.exists(args.hf_script):
    raise SystemExit(f"--hf_script {args.hf_script!r} does not exist; pass the path of hf_t5_train_step.py")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  runtime.apply_flags(args)  # before JAX starts
  print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
  sys.exit(main())

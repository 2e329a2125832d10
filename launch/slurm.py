"""GPU cluster launcher: an sbatch script for SLURM, or one plain command per node.

  python launch/slurm.py --nodes 4 --gpus_per_node 8 --time 48:00:00 --partition gpu \\
      --gin_file=models/t5_1_1/xl.gin --gin_file=runs/pretrain.gin \\
      --model_dir=/shared/runs/t5-xl --data=-1 --fsdp=8 [--dry_run] -- --gin.TRAIN_STEPS=100000

writes t5lite-<job>.sbatch and submits it with sbatch (with --dry_run: prints the
script and the sbatch command instead). The script runs one task per node
(`srun --kill-on-bad-exit=1`), each driving all of its node's GPUs; jax finds the
other tasks through SLURM's environment (t5lite.distributed.maybe_initialize).

  python launch/slurm.py --plain --nodes 2 --gpus_per_node 8 --coordinator host0 --port 12355 ...

prints one command per node for clusters without SLURM: run line i on node i.
Each sets T5LITE_COORDINATOR_ADDRESS=host0:12355, T5LITE_NUM_PROCESSES and
T5LITE_PROCESS_ID=i.

Both refuse a mesh (--data x --fsdp x --model, at most one -1) that does not
divide nodes x gpus_per_node, before writing or printing anything.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the checkout importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from t5lite import distributed, mesh_shape  # pylint: disable=g-import-not-at-top,wrong-import-position


def check_mesh(nodes: int, gpus_per_node: int, data: int, fsdp: int, model: int, expert: int = 1) -> dict[str, int]:
  if nodes < 1 or gpus_per_node < 1:
    raise ValueError(f"--nodes={nodes} and --gpus_per_node={gpus_per_node} must be >= 1.")
  total = nodes * gpus_per_node
  where = f"{nodes} node{'s' if nodes > 1 else ''} x {gpus_per_node} GPUs"
  sizes = mesh_shape.plan_mesh(total, data, fsdp, model, expert, where=where)
  if sizes["model"] > gpus_per_node or gpus_per_node % sizes["model"]:
    print(
      f"launch/slurm.py: warning: MODEL_PARALLELISM={sizes['model']} does not fit inside one node of "
      f"{gpus_per_node} GPUs; tensor parallelism across nodes is slow (it all-reduces every layer).",
      file=sys.stderr,
    )
  return sizes


def train_argv(args, sizes: dict[str, int]) -> list[str]:
  """The command every node runs: the nodes' python, then `common.train_args`."""
  return [args.python, *common.train_args(args, sizes)]


def sbatch_script(args, sizes: dict[str, int]) -> str:
  directives = [
    f"--job-name={args.job_name}",
    f"--nodes={args.nodes}",
    "--ntasks-per-node=1",
    f"--gpus-per-node={args.gpus_per_node}",
    f"--cpus-per-task={args.cpus_per_task}",
    f"--time={args.time}",
    f"--output={args.output}",
  ]
  if args.partition:
    directives.append(f"--partition={args.partition}")
  if args.account:
    directives.append(f"--account={args.account}")
  if args.exclusive:
    directives.append("--exclusive")
  directives += args.sbatch_arg
  total = args.nodes * args.gpus_per_node
  lines = (
    ["#!/bin/bash"]
    + [f"#SBATCH {d}" for d in directives]
    + [
      "",
      f"# Written by launch/slurm.py: {args.nodes} nodes x {args.gpus_per_node} GPUs = {total} devices, "
      f"mesh data={sizes['data']} fsdp={sizes['fsdp']} model={sizes['model']}.",
      "# One task per node drives all of the node's GPUs. t5lite.distributed.maybe_initialize() lets jax",
      "# find the other tasks through SLURM's environment; --kill-on-bad-exit stops the job when one fails.",
      "set -eo pipefail",
      f"cd {shlex.quote(args.workdir)}",
    ]
  )
  lines += args.setup
  lines += [
    f"export {distributed.ENV_LOCAL_DEVICE_COUNT}={args.gpus_per_node}",
    "",
    f"srun --kill-on-bad-exit=1 {shlex.join(train_argv(args, sizes))}",
    "",
  ]
  return "\n".join(lines)


def plain_commands(args, sizes: dict[str, int]) -> list[str]:
  if not args.coordinator:
    raise ValueError("--plain needs --coordinator: the host name or address of node 0, reachable from every node.")
  address = f"{args.coordinator}:{args.port}"
  train = shlex.join(train_argv(args, sizes))
  return [
    f"{distributed.ENV_COORDINATOR}={shlex.quote(address)} {distributed.ENV_NUM_PROCESSES}={args.nodes} "
    f"{distributed.ENV_PROCESS_ID}={i} {train}"
    for i in range(args.nodes)
  ]


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="launch/slurm.py", description=__doc__.split("\n\n")[0])
  p.add_argument("--nodes", type=int, required=True)
  p.add_argument("--gpus_per_node", type=int, default=8)
  common.add_training_args(p, model_dir_help="Run directory on a filesystem every node mounts.")
  p.add_argument(
    "--python",
    default=sys.executable,
    help="Python on the nodes (default: this one, %(default)s; it must exist on every node).",
  )
  p.add_argument("--dry_run", action="store_true", help="Print instead of writing and submitting.")
  s = p.add_argument_group("sbatch")
  s.add_argument("--job_name", default="t5lite")
  s.add_argument("--cpus_per_task", type=int, default=16, help="CPU cores per node's task (input pipeline).")
  s.add_argument("--time", default="24:00:00", help="Wall-clock limit, [D-]HH:MM:SS.")
  s.add_argument("--partition", default=None)
  s.add_argument("--account", default=None)
  s.add_argument("--exclusive", action="store_true", help="Whole nodes only.")
  s.add_argument("--output", default="%x-%j.out", help="Log file pattern (%%x job name, %%j job id).")
  s.add_argument(
    "--sbatch_arg",
    action="append",
    default=[],
    metavar="--FLAG=VALUE",
    help="Another #SBATCH line, e.g. --sbatch_arg=--mem=0 (repeatable).",
  )
  s.add_argument(
    "--setup",
    action="append",
    default=[],
    metavar="LINE",
    help="A shell line run before srun, e.g. 'module load cuda' (repeatable).",
  )
  s.add_argument("--workdir", default=os.getcwd(), help="Directory the job runs in (default: here).")
  s.add_argument("--script", default=None, help="Where to write the script (default: <job_name>.sbatch).")
  g = p.add_argument_group("plain (no SLURM)")
  g.add_argument("--plain", action="store_true", help="Print one command per node instead.")
  g.add_argument("--coordinator", default=None, help="Node 0's host name or address.")
  g.add_argument("--port", type=int, default=12355, help="A free port on node 0.")
  return p


def run(args) -> int:
  """Prints the per-node commands (--plain), or writes the sbatch script and submits it."""
  if not re.fullmatch(r"[\w.-]+", args.job_name):
    raise ValueError(f"--job_name={args.job_name!r}: use letters, digits, '.', '_' and '-'.")
  sizes = check_mesh(args.nodes, args.gpus_per_node, args.data, args.fsdp, args.model, args.expert)
  if args.plain:
    for line in plain_commands(args, sizes):
      print(line)
    return 0
  script = sbatch_script(args, sizes)
  path = args.script or f"{args.job_name}.sbatch"
  submit = ["sbatch", path]
  if args.dry_run:
    print(script, end="")
    print(f"# {path} would hold the script above; then:")
    print(shlex.join(submit))
    return 0
  with open(path, "w", encoding="utf-8") as f:
    f.write(script)
  print(f"wrote {path}", file=sys.stderr)
  print(f"+ {shlex.join(submit)}", file=sys.stderr, flush=True)
  try:
    return subprocess.call(submit)
  except FileNotFoundError:
    print(
      "launch/slurm.py: error: sbatch not found: is this a SLURM login node? (--plain runs without SLURM)",
      file=sys.stderr,
    )
    return 127


def main(argv: Optional[Sequence[str]] = None) -> int:
  return common.main(build_parser(), argv, run)


if __name__ == "__main__":
  sys.exit(main())

"""Cloud TPU launcher: a TPU VM slice through gcloud, or a GKE workload through xpk.

  python launch/tpu.py create --name t5 --zone us-central2-b --accelerator_type v4-32 [--spot]
  python launch/tpu.py setup  --name t5 --zone us-central2-b
  python launch/tpu.py run    --name t5 --zone us-central2-b --accelerator_type v4-32 \\
      --gin_file=models/t5_1_1/base.gin --gin_file=runs/pretrain.gin \\
      --model_dir=gs://BUCKET/t5-base --data=-1 --fsdp=4 -- --gin.TRAIN_STEPS=100000 ...
  python launch/tpu.py delete --name t5 --zone us-central2-b
  python launch/tpu.py xpk    --cluster C --workload W --tpu_type v4-32 --num_slices 2 \\
      --docker_image IMAGE --gin_file=... --model_dir=gs://... --data=-1

Every subcommand takes --dry_run: it prints the commands it would run, one per
line, shell-quoted, and runs nothing. `run` and `xpk` check the mesh
(--data x --fsdp x --model, at most one -1) against the slice's device count
before printing or running anything, and refuse one that does not divide it.

`setup` builds a wheel of this checkout (pip wheel), copies it and
requirements.lock to every worker (gcloud ... scp --worker=all --recurse), and
installs into a Python 3.11 venv there: the locked requirements plus jax[tpu] at
the locked jax version, then the wheel. `run` starts the same training command
on every worker (gcloud ... ssh --worker=all) with T5LITE_DISTRIBUTED=auto, so
t5lite.distributed.maybe_initialize() lets jax find the other workers.
"""

from __future__ import annotations

import argparse
import dataclasses
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST_DIR = "t5lite-dist"  # local build/<this> and remote ~/<this>
REMOTE_VENV = "t5lite-venv"  # relative to the worker's home, where ssh starts
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"


# --------------------------------------------------------------------------- #
# Slices.
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str
  chips: int
  hosts: int
  chips_per_host: int
  devices: int  # jax devices: chips, or TensorCores on v2/v3
  runtime: str  # default --version for `gcloud ... tpu-vm create`

  def describe(self) -> str:
    per_host = self.devices // self.hosts
    unit = "TensorCore" if self.devices != self.chips else "chip"
    unit += "s" if per_host > 1 else ""
    hosts = f"{self.hosts} host{'s' if self.hosts > 1 else ''}"
    return f"TPU slice {self.accelerator_type} ({hosts} x {per_host} {unit})"


# name -> (size counts TensorCores?, chips per host in multi-host slices, allowed sizes, runtime)
_FAMILIES = {
  # v2/v3: names count TensorCores and each core is a jax device; 4 chips (8 cores) a host.
  "v2": ("cores", 4, range(8, 512 + 1, 8), "tpu-ubuntu2204-base"),
  "v3": ("cores", 4, range(8, 2048 + 1, 8), "tpu-ubuntu2204-base"),
  # v4 / v5p: names count TensorCores, 2 per chip (one megacore device per chip); 4 chips a host.
  "v4": ("megacore", 4, range(8, 4096 + 1, 8), "tpu-ubuntu2204-base"),
  "v5p": ("megacore", 4, range(8, 12288 + 1, 8), "v2-alpha-tpuv5"),
  # v5e / v6e: names count chips (one core each); 1, 4 or 8 chips on one host, else 4 a host.
  "v5litepod": ("chips", 4, (1, 4, 8, 16, 32, 64, 128, 256), "v2-alpha-tpuv5-lite"),
  "v6e": ("chips", 4, (1, 4, 8, 16, 32, 64, 128, 256), "v2-alpha-tpuv6e"),
}


def slice_info(accelerator_type: str) -> Slice:
  """Chips, hosts and jax devices of an accelerator type such as v4-32 or v5litepod-16."""
  m = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)", accelerator_type.strip().lower())
  if not m:
    hint = " (v5e slices are named v5litepod-N)" if accelerator_type.lower().startswith("v5e") else ""
    raise ValueError(
      f"Unknown TPU accelerator type {accelerator_type!r}{hint}; expected one of "
      f"{', '.join(f'{f}-N' for f in _FAMILIES)}, e.g. v4-32, v5p-8, v5litepod-16, v6e-8."
    )
  family, n = m.group(1), int(m.group(2))
  kind, per_host, sizes, runtime = _FAMILIES[family]
  if n not in sizes:
    raise ValueError(f"{accelerator_type}: no such {family} slice size; valid sizes are {_ranges(sizes)}.")
  name = f"{family}-{n}"
  if kind == "cores":
    chips = n // 2
    return Slice(name, chips, chips // per_host, per_host, n, runtime)
  if kind == "megacore":
    chips = n // 2
    hosts = max(1, chips // per_host)
    return Slice(name, chips, hosts, chips // hosts, chips, runtime)
  if n <= 8:  # single-host v5e/v6e machines hold 1, 4 or 8 chips
    return Slice(name, n, 1, n, n, runtime)
  return Slice(name, n, n // per_host, per_host, n, runtime)


def _ranges(sizes) -> str:
  if isinstance(sizes, range):
    return f"multiples of {sizes.step} from {sizes.start} to {sizes.stop - 1}"
  return ", ".join(str(s) for s in sizes)


def check_mesh(tpu: Slice, data: int, fsdp: int, model: int, num_slices: int = 1, expert: int = 1) -> dict[str, int]:
  """Resolved mesh sizes for `num_slices` slices of `tpu`, or ValueError naming the valid choices."""
  total = tpu.devices * num_slices
  where = tpu.describe() if num_slices == 1 else f"{num_slices} slices of {tpu.describe()}"
  sizes = mesh_shape.plan_mesh(total, data, fsdp, model, expert, where=where)
  inner = sizes["fsdp"] * sizes["model"] * sizes["expert"]
  if num_slices > 1 and tpu.devices % inner:
    raise ValueError(
      f"Mesh {sizes} over {where}: fsdp x model x expert = {inner} must divide the "
      f"{tpu.devices} devices of one slice, so that only the data axis crosses slices (over the "
      f"data-center network). Valid fsdp x model x expert: {mesh_shape.divisors(tpu.devices)}."
    )
  return sizes


# --------------------------------------------------------------------------- #
# Commands.
# --------------------------------------------------------------------------- #
def _gcloud(verb: str, name: Optional[str], zone: str, project: Optional[str], *rest: str) -> list[str]:
  """gcloud compute tpus tpu-vm VERB [NAME] --zone=Z [--project=P] REST (scp names no TPU: NAME:path does)."""
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb] + ([name] if name else []) + [f"--zone={zone}"]
  if project:
    cmd.append(f"--project={project}")
  return cmd + list(rest)


def describe_command(args) -> list[str]:
  return _gcloud("describe", args.name, args.zone, args.project, "--format=value(acceleratorType)")


def create_command(args) -> list[str]:
  tpu = slice_info(args.accelerator_type)
  cmd = _gcloud(
    "create",
    args.name,
    args.zone,
    args.project,
    f"--accelerator-type={tpu.accelerator_type}",
    f"--version={args.version or tpu.runtime}",
  )
  if args.spot:
    cmd.append("--spot")
  if args.preemptible:
    cmd.append("--preemptible")
  return cmd


def delete_command(args) -> list[str]:
  return _gcloud("delete", args.name, args.zone, args.project, "--quiet")


def locked_jax_version(lock: str = os.path.join(REPO, "requirements.lock")) -> str:
  with open(lock, encoding="utf-8") as f:
    for line in f:
      m = re.match(r"\s*jax\s*==\s*([\w.]+)", line)
      if m:
        return m.group(1)
  raise ValueError(f"{lock} pins no jax version.")


def setup_commands(args) -> list[list[str]]:
  build = os.path.join(REPO, "build", DIST_DIR)
  python = args.python
  venv_python = f"{REMOTE_VENV}/bin/python"
  install = " && ".join(
    [
      f"(command -v {python} >/dev/null || (sudo apt-get update -q && "
      f"sudo apt-get install -y -q {python} {python}-venv))",
      f"{python} -m venv {REMOTE_VENV}",
      f"{venv_python} -m pip install -q --upgrade pip",
      f"{venv_python} -m pip install -q -r {DIST_DIR}/requirements.lock "
      f"{shlex.quote(f'jax[tpu]=={locked_jax_version()}')} -f {LIBTPU_FIND_LINKS}",
      f"{venv_python} -m pip install -q --no-deps --force-reinstall {DIST_DIR}/t5lite-*.whl",
      f"{venv_python} -c 'import jax, t5lite; print(\"jax\", jax.__version__)'",
    ]
  )
  return [
    ["rm", "-rf", build],
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", build, REPO],
    ["cp", os.path.join(REPO, "requirements.lock"), build],
    _gcloud("scp", None, args.zone, args.project, "--worker=all", "--recurse", build, f"{args.name}:~"),
    _gcloud("ssh", args.name, args.zone, args.project, "--worker=all", "--command", install),
  ]


def sh_word(word: str) -> str:
  """Like shlex.quote, but quotes inside gin values become \\" so the line nests in '...' cleanly."""
  if re.fullmatch(r"[\w@%+=:,./~\-\[\]{}\"']+", word) and not word.startswith("~"):
    return re.sub(r"([\"'])", r"\\\1", word)
  return shlex.quote(word)


def remote_train_command(args, sizes: dict[str, int], default_python: str) -> str:
  """The shell command each worker runs (default_python is used unquoted, so ~ expands)."""
  python = shlex.quote(args.python) if args.python else default_python
  prefix = f"cd {shlex.quote(args.workdir)} && " if args.workdir else ""
  words = " ".join(sh_word(w) for w in common.train_args(args, sizes))
  return f"{prefix}{distributed.ENV_MODE}=auto {python} {words}"


def run_command(args, sizes: dict[str, int]) -> list[str]:
  command = remote_train_command(args, sizes, f"~/{REMOTE_VENV}/bin/python")
  return _gcloud("ssh", args.name, args.zone, args.project, "--worker=all", "--command", command)


def xpk_command(args, sizes: dict[str, int]) -> list[str]:
  tpu = slice_info(args.tpu_type)
  cmd = [
    "xpk",
    "workload",
    "create",
    f"--cluster={args.cluster}",
    f"--workload={args.workload}",
    f"--tpu-type={tpu.accelerator_type}",
    f"--num-slices={args.num_slices}",
    f"--docker-image={args.docker_image}",
    "--command",
    remote_train_command(args, sizes, "python3"),
  ]
  if args.zone:
    cmd.append(f"--zone={args.zone}")
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


# --------------------------------------------------------------------------- #
# Command line.
# --------------------------------------------------------------------------- #
def _execute(commands: Sequence[list[str]], dry_run: bool) -> int:
  for cmd in commands:
    if dry_run:
      print(shlex.join(cmd))
      continue
    print(f"+ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    code = subprocess.call(cmd)
    if code:
      print(f"launch/tpu.py: error: command failed with exit code {code}: {shlex.join(cmd[:6])} ...", file=sys.stderr)
      return code
  return 0


def _create(args) -> int:
  describe, create = describe_command(args), create_command(args)
  if args.dry_run:
    print(shlex.join(describe))  # create runs only if this fails (no such TPU yet)
    print(shlex.join(create))
    return 0
  print(f"+ {shlex.join(describe)}", file=sys.stderr, flush=True)
  found = subprocess.run(describe, capture_output=True, text=True, check=False)
  if found.returncode == 0:
    existing = found.stdout.strip().lower()
    wanted = slice_info(args.accelerator_type).accelerator_type
    if existing and existing != wanted:
      print(
        f"launch/tpu.py: error: TPU {args.name} already exists as {existing}, not {wanted}; "
        "delete it or pick another --name.",
        file=sys.stderr,
      )
      return 1
    print(f"TPU {args.name} ({existing or wanted}) already exists in {args.zone}; reusing it.", file=sys.stderr)
    return 0
  return _execute([create], False)


def _warn_model_dir(model_dir: str, multi_host: bool) -> None:
  if multi_host and not model_dir.startswith("gs://"):
    print(
      f"launch/tpu.py: warning: MODEL_DIR={model_dir} is not on GCS. Every host writes its part of each "
      "checkpoint there, so it must be one directory all hosts see: use gs://BUCKET/... (or a shared "
      "filesystem mounted on every worker).",
      file=sys.stderr,
    )


def _add_common(p: argparse.ArgumentParser, *, tpu_vm: bool = True) -> None:
  if tpu_vm:
    p.add_argument("--name", required=True, help="TPU VM name.")
    p.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p).")
  p.add_argument("--project", default=None, help="GCP project (default: gcloud's).")
  p.add_argument("--dry_run", action="store_true", help="Print the commands, one per line; run nothing.")


def _add_training(p: argparse.ArgumentParser) -> None:
  common.add_training_args(p, model_dir_help="Run directory every host sees, e.g. gs://BUCKET/run.")
  p.add_argument("--workdir", default=None, help="Directory to cd into on the workers first.")
  p.add_argument("--python", default=None, help="Python on the workers (default: the venv `setup` made).")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="verb", required=True)

  p = sub.add_parser("create", help="Create the TPU VM slice (or reuse it if it exists).")
  _add_common(p)
  p.add_argument("--accelerator_type", default="v4-32")
  p.add_argument("--version", default=None, help="TPU runtime (default: the family's, e.g. tpu-ubuntu2204-base).")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--spot", action="store_true", help="Spot capacity (cheaper, can be reclaimed).")
  g.add_argument("--preemptible", action="store_true", help="Preemptible capacity (older form of --spot).")

  p = sub.add_parser("setup", help="Install this checkout and jax[tpu] on every worker.")
  _add_common(p)
  p.add_argument("--python", default="python3.11", help="Python to make the venv with on the workers.")

  p = sub.add_parser("run", help="Start training on every worker.")
  _add_common(p)
  p.add_argument("--accelerator_type", default="v4-32", help="The slice's type, to check the mesh.")
  _add_training(p)

  p = sub.add_parser("delete", help="Delete the TPU VM.")
  _add_common(p)

  p = sub.add_parser("xpk", help="Create an xpk workload (GKE) that trains on one or more slices.")
  _add_common(p, tpu_vm=False)
  p.add_argument("--cluster", required=True)
  p.add_argument("--workload", required=True)
  p.add_argument("--tpu_type", default="v4-32")
  p.add_argument("--num_slices", type=int, default=1)
  p.add_argument("--docker_image", required=True, help="Image with t5lite and jax[tpu] installed.")
  p.add_argument("--zone", default=None)
  _add_training(p)
  return parser


def run(args) -> int:
  """Runs (or with --dry_run prints) the commands of the subcommand `args.verb`."""
  if args.verb == "create":
    return _create(args)
  if args.verb == "setup":
    return _execute(setup_commands(args), args.dry_run)
  if args.verb == "delete":
    return _execute([delete_command(args)], args.dry_run)
  if args.verb == "run":
    tpu = slice_info(args.accelerator_type)
    sizes = check_mesh(tpu, args.data, args.fsdp, args.model, expert=args.expert)
    _warn_model_dir(args.model_dir, tpu.hosts > 1)
    return _execute([run_command(args, sizes)], args.dry_run)
  if args.verb == "xpk":
    if args.num_slices < 1:
      raise ValueError(f"--num_slices={args.num_slices} must be >= 1.")
    tpu = slice_info(args.tpu_type)
    sizes = check_mesh(tpu, args.data, args.fsdp, args.model, args.num_slices, args.expert)
    _warn_model_dir(args.model_dir, tpu.hosts * args.num_slices > 1)
    return _execute([xpk_command(args, sizes)], args.dry_run)
  return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
  return common.main(build_parser(), argv, run)


if __name__ == "__main__":
  sys.exit(main())

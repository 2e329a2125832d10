"""The command line that the cluster launchers (slurm.py, tpu.py) share.

Their training flags, the `t5lite.train` arguments built from them, the split
at '--' (what follows goes to t5lite.train unchanged), and one way to report a
bad value: `launch/<name>.py: error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Mapping, Optional, Sequence


def add_training_args(parser: argparse.ArgumentParser, *, model_dir_help: str) -> None:
  """--gin_file, --model_dir, --data/--fsdp/--model/--expert (the mesh) and --gin NAME=VALUE."""
  parser.add_argument("--gin_file", action="append", required=True, help="Gin file (repeatable).")
  parser.add_argument("--model_dir", required=True, help=model_dir_help)
  parser.add_argument("--data", type=int, default=-1, help="DATA_PARALLELISM (-1: the devices left).")
  parser.add_argument("--fsdp", type=int, default=1, help="FSDP_PARALLELISM.")
  parser.add_argument("--model", type=int, default=1, help="MODEL_PARALLELISM (tensor parallelism).")
  parser.add_argument(
    "--expert",
    type=int,
    default=1,
    help="EXPERT_PARALLELISM (mixture-of-experts models; the batch splits over it too).",
  )
  parser.add_argument(
    "--gin",
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="More gin bindings, passed as --gin.NAME=VALUE (repeatable).",
  )


def train_args(args: argparse.Namespace, sizes: Mapping[str, int]) -> list[str]:
  """`-m t5lite.train` and its flags (what follows the python): gin files, MODEL_DIR, the mesh sizes,
  the --gin bindings, then the words after '--' as given."""
  argv = ["-m", "t5lite.train"]
  argv += [f"--gin_file={g}" for g in args.gin_file]
  argv.append(f'--gin.MODEL_DIR="{args.model_dir}"')
  argv += [
    f"--gin.DATA_PARALLELISM={sizes['data']}",
    f"--gin.FSDP_PARALLELISM={sizes['fsdp']}",
    f"--gin.MODEL_PARALLELISM={sizes['model']}",
  ]
  if sizes.get("expert", 1) != 1:
    argv.append(f"--gin.EXPERT_PARALLELISM={sizes['expert']}")
  argv += [f"--gin.{b}" for b in args.gin]
  return argv + list(args.extra)


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Parses the words before '--' (sys.argv[1:] when `argv` is None); those after it become `args.extra`.

  Exits through `parser.error` (status 2) on bad flags, and when '--dry_run' comes after '--',
  so that what was meant as a dry run never runs for real.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: list[str] = []
  if "--" in argv:
    split = argv.index("--")
    argv, extra = argv[:split], argv[split + 1 :]
  if "--dry_run" in extra:
    parser.error("--dry_run comes before '--' (what follows '--' goes to t5lite.train)")
  args = parser.parse_args(argv)
  args.extra = extra
  return args


def main(
  parser: argparse.ArgumentParser,
  argv: Optional[Sequence[str]],
  run: Callable[[argparse.Namespace], int],
) -> int:
  """Parses `argv` (see `parse`) and returns `run(args)`, or 2 after printing a ValueError it raised."""
  args = parse(parser, argv)
  try:
    return run(args)
  except ValueError as e:
    print(f"{parser.prog}: error: {e}", file=sys.stderr)
    return 2

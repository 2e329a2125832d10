"""Does a fused attention kernel give the same loss and gradients as the plain one?

    python -m t5lite.bench.attention_check                                   # on a GPU: cuDNN vs dot_product
    python -m t5lite.bench.attention_check --candidate cpu_dot_product --dtype float32 --layers 1   # on the CPU

A correctness probe for `attention='auto'`, which on a GPU with bfloat16
activations runs cuDNN fused attention (`cudnn_flash_jax`,
t5lite.kernels.cudnn) with T5's trained relative-position bias and boolean
masks. For a tiny T5 and a tiny decoder-only model (the same parameters for
both implementations: `model.init_params(jax.random.key(0), shapes)`), and
for a packed batch (two segments per row and padding, segment ids and
positions as seqio packs them) and an unpacked padded batch (no segment ids),
it computes `jax.value_and_grad(model.loss_fn)` (the loss normalised as the
trainer does, plus the logits) once with `--reference` (default
`dot_product`) and once with `--candidate` (default: what `auto` runs here),
each jitted and compiled ahead of time, and compares:

* `loss` (both), `loss_rel_diff` = |a - b| / |a|;
* `logits_max_abs_diff`, `logits_rel_diff` = max |a - b| / max |a|;
* gradients of all parameters: `grad_max_abs_diff`, `grad_rel_diff` =
  ||a - b|| / ||a|| over all parameters together, `worst_leaf` (the parameter
  with the largest ||a - b|| / ||a||, reported, not judged), and for the
  relative-position bias tables (`rel_embedding`, whose gradient reaches them
  only through the attention kernel's bias gradient, which a kernel can drop
  silently) `rel_embedding_rel_diff` (the worst table) and each table's norms.

Verdict per case and overall: `ok` when every number is finite and within the
tolerances (TOLERANCES, by activation dtype, printed in the line), `mismatch`
otherwise; for `cudnn_flash_jax` also `fallback` when the numbers agree but
cuDNN did not run: no `__cudnn$fmha` custom call in the lowered program, or
t5lite.kernels.cudnn logged its "using XLA's implementation" warning
(`cudnn_calls` lists the `__cudnn$...` custom calls of the lowered and of the
compiled program: forward `...Softmax`, backward `...Backward`). A case that
raises (a cuDNN rejection while tracing, compiling or running, forward or
backward) is `error` with the message; the line's `verdict` is the worst case's
(error > mismatch > fallback > ok) and the exit status is 1 on error.

Prints a JSON line after each case (`complete: false`, so that a run cut off
by a timeout still shows the cases it finished) and the full line last. The
persistent compilation cache is off (the compiled programs are inspected).
Imports only jax/flax/numpy and t5lite.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

from t5lite import features

# |a - b| relative to |a| (norms; see the module docstring), by activation
# dtype. bfloat16 keeps 8 significant bits (a relative rounding of 2^-9 =
# 2e-3 per operation) and two implementations round at different places
# (cuDNN also casts the relative-position bias to bfloat16 and sums the bias
# gradient in its own order). Measured on the CPU, 2-layer tiny models in
# bfloat16, dot_product against cpu_dot_product: gradients 0.6-0.7% apart,
# the relative-position tables 0.5-0.8%, no parameter over 1%, the loss within
# 2e-6. 2e-2 on the norms leaves room for cuDNN's own rounding and still
# catches a wrong mask or bias (differences of order 1) and a missing bias
# gradient (the table's relative difference is then 1); the tables' gradients
# are sums of many terms of both signs, whose cancellation magnifies rounding:
# 5e-2. In float32 the two CPU implementations agree to under 1e-6.
TOLERANCES = {
  "bfloat16": {"loss": 1e-2, "logits": 5e-2, "grad": 2e-2, "rel_embedding": 5e-2},
  "float16": {"loss": 5e-3, "logits": 2e-2, "grad": 1e-2, "rel_embedding": 3e-2},
  "float32": {"loss": 1e-5, "logits": 1e-5, "grad": 1e-5, "rel_embedding": 1e-5},
}
_ORDER = ("ok", "fallback", "mismatch", "error")  # worst last
_CUDNN_CALL = re.compile(r"__cudnn\$\w+")


def stage(message: str) -> None:
  print(f"[attention_check] {message}", file=sys.stderr, flush=True)


def _g(x: float) -> Optional[float]:
  """A float for JSON with 4 significant digits; None for NaN or infinity."""
  x = float(x)
  return float(f"{x:.4g}") if math.isfinite(x) else None


# ----------------------------------------------------------------------------
# Batches, laid out as seqio's feature converters lay them out
# ----------------------------------------------------------------------------


def _pack(rng: np.random.Generator, vocab: int, length: int, num_segments: int, min_len: int = 2):
  """One row of `num_segments` random examples packed from the left and padded
  (at least one padding position): (tokens, segment ids, positions); padding
  has token 0, segment 0, position 0."""
  room = length - 1
  cuts = (
    np.sort(rng.choice(np.arange(min_len, room - min_len + 1), num_segments - 1, replace=False))
    if num_segments > 1
    else np.array([], int)
  )
  end = int(rng.integers(max(cuts[-1] + min_len if len(cuts) else min_len, room - 4), room + 1))
  bounds = [0, *cuts.tolist(), end]
  tokens = np.zeros(length, np.int32)
  seg = np.zeros(length, np.int32)
  pos = np.zeros(length, np.int32)
  for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
    tokens[a:b] = rng.integers(2, vocab, b - a)
    seg[a:b] = i + 1
    pos[a:b] = np.arange(b - a)
  return tokens, seg, pos


def make_batch(kind: str, packed: bool, batch: int, lengths: dict, vocab: int, seed: int) -> dict:
  """A numpy batch for `kind` ('t5' or 'decoder_only'): packed (two segments
  per row, segment ids and positions) or unpacked (one example per row, right
  padding, no segment ids; the first row full length)."""
  rng = np.random.default_rng(seed)
  task_features = {"t5": ("inputs", "targets"), "decoder_only": ("targets",)}[kind]
  out = {}
  for feature in task_features:
    length = lengths[feature]
    if packed:
      rows = [_pack(rng, vocab, length, 2) for _ in range(batch)]
      tokens, seg, pos = (np.stack(x) for x in zip(*rows))
    else:
      tokens = np.zeros((batch, length), np.int32)
      for r in range(batch):
        n = length if r == 0 else int(rng.integers(length // 2, length))
        tokens[r, :n] = rng.integers(2, vocab, n)
      seg = pos = None
    if feature == "inputs":
      out["encoder_input_tokens"] = tokens
      if packed:
        out["encoder_segment_ids"], out["encoder_positions"] = seg, pos
    else:
      out["decoder_target_tokens"] = tokens
      out["decoder_input_tokens"] = features.shift_right(tokens, seg)
      out["decoder_loss_weights"] = (tokens > 0).astype(np.float32)
      if packed:
        out["decoder_segment_ids"], out["decoder_positions"] = seg, pos
  return out


# ----------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------


def build_model(kind: str, attention: str, args):
  from t5lite.models import decoder_only, model as model_lib, t5  # pylint: disable=g-import-not-at-top

  overrides: dict[str, Any] = dict(dtype=args.dtype, vocab_size=args.vocab_size, attention=attention)
  if kind == "t5":
    if args.layers:
      overrides.update(num_encoder_layers=args.layers, num_decoder_layers=args.layers)
    return model_lib.EncoderDecoderModel(config=t5.t5_config(args.preset, **overrides))
  if args.layers:
    overrides.update(num_layers=args.layers)
  return model_lib.DecoderOnlyModel(config=decoder_only.decoder_only_config(args.preset, **overrides))


class _Warnings(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages: list[str] = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def _grad_fn(model):
  """jit of value_and_grad of model.loss_fn (normalised as the trainer does), with the logits the loss saw."""
  import jax  # pylint: disable=g-import-not-at-top

  forward = type(model).logits_and_moe_stats

  def f(params, batch):
    seen = []

    def caught(*a, **k):
      out = forward(model, *a, **k)
      seen.append(out[0])
      return out

    # The logits that loss_fn computes, caught on their way (no second forward pass to compile).
    model.logits_and_moe_stats = caught
    try:
      scale, denom = model.loss_scale(batch)
      loss, _ = model.loss_fn(params, batch, None, scale / denom)
    finally:
      del model.logits_and_moe_stats
    return loss, seen[0]

  return jax.jit(jax.value_and_grad(f, has_aux=True))


def lower(model, params, batch) -> dict:
  """Traces and lowers the loss and gradients; notes the lowered program's
  cuDNN calls and whether t5lite.kernels.cudnn logged its fallback."""
  from t5lite.kernels import cudnn  # pylint: disable=g-import-not-at-top

  cudnn.reset_fallback_warning()
  handler = _Warnings()
  log = logging.getLogger(cudnn.__name__)
  log.addHandler(handler)
  try:
    t0 = time.perf_counter()
    lowered = _grad_fn(model).lower(params, batch)
    lower_s = time.perf_counter() - t0
  finally:
    log.removeHandler(handler)
  return {
    "lowered": lowered,
    "lower_s": lower_s,
    "lowered_calls": _CUDNN_CALL.findall(lowered.as_text()),
    "fallback_warning": handler.messages[0] if handler.messages else None,
  }


def compile_lowered(lowered) -> tuple[Any, float, Optional[list[str]]]:
  """(the executable, its compile seconds, its cuDNN calls; None where the backend gives no text)."""
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  try:
    calls = _CUDNN_CALL.findall(compiled.as_text() or "")
  except Exception:  # pylint: disable=broad-except  # a backend without the text
    calls = None
  return compiled, compile_s, calls


def execute(prepared: dict, compiled, compile_s: float, compiled_calls, params, batch) -> dict:
  """Runs one compiled program; its loss, logits and gradients (float64 numpy) with what `lower` noted."""
  import jax  # pylint: disable=g-import-not-at-top

  (loss, logits), grads = compiled(params, batch)
  jax.block_until_ready(grads)
  return {
    "loss": float(loss),
    "logits": np.asarray(logits, np.float64),
    "grads": jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda g: np.asarray(g, np.float64), grads))[0],
    "compile_s": prepared["lower_s"] + compile_s,
    "fallback_warning": prepared["fallback_warning"],
    "lowered_calls": prepared["lowered_calls"],
    "compiled_calls": compiled_calls,
  }


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _rel(diff: float, ref: float) -> float:
  if diff == 0.0:
    return 0.0
  return diff / ref if ref > 0 else math.inf


def compare(ref: dict, cand: dict, tolerance: dict, candidate: str) -> dict:
  """The numbers of one case (see the module docstring) and its verdict."""
  out: dict[str, Any] = {"loss": [_g(ref["loss"]), _g(cand["loss"])]}
  loss_rel = _rel(abs(cand["loss"] - ref["loss"]), abs(ref["loss"]))
  d_logits = np.abs(cand["logits"] - ref["logits"])
  logits_max = float(d_logits.max()) if d_logits.size else 0.0
  logits_rel = _rel(logits_max, float(np.abs(ref["logits"]).max()))
  sq_diff = sq_ref = 0.0
  grad_max = 0.0
  worst = ("", 0.0)
  tables = {}
  finite = math.isfinite(cand["loss"]) and bool(np.isfinite(cand["logits"]).all())
  for (path, a), (path_b, b) in zip(ref["grads"], cand["grads"]):
    assert path == path_b, (path, path_b)
    name = _path(path)
    d = b - a
    finite = finite and bool(np.isfinite(b).all())
    leaf_diff, leaf_ref = float(np.sqrt(np.sum(d * d))), float(np.sqrt(np.sum(a * a)))
    sq_diff, sq_ref = sq_diff + leaf_diff**2, sq_ref + leaf_ref**2
    grad_max = max(grad_max, float(np.abs(d).max()) if d.size else 0.0)
    leaf_rel = _rel(leaf_diff, leaf_ref)
    if not leaf_rel <= worst[1]:
      worst = (name, leaf_rel)
    if "rel_embedding" in name:
      tables[name] = {
        "norm": [_g(leaf_ref), _g(float(np.sqrt(np.sum(b * b))))],
        "rel_diff": _g(leaf_rel),
        "max_abs_diff": _g(float(np.abs(d).max())),
      }
  grad_rel = _rel(math.sqrt(sq_diff), math.sqrt(sq_ref))
  rel_emb = max((_rel_value(t["rel_diff"]) for t in tables.values()), default=0.0)
  out.update(
    loss_rel_diff=_g(loss_rel),
    logits_max_abs_diff=_g(logits_max),
    logits_rel_diff=_g(logits_rel),
    grad_max_abs_diff=_g(grad_max),
    grad_rel_diff=_g(grad_rel),
    worst_leaf=[worst[0], _g(worst[1])],
    rel_embedding_rel_diff=_g(rel_emb),
    rel_embedding=tables,
    finite=finite,
    compile_s=[round(ref["compile_s"], 2), round(cand["compile_s"], 2)],
  )
  within = (
    finite
    and loss_rel <= tolerance["loss"]
    and logits_rel <= tolerance["logits"]
    and grad_rel <= tolerance["grad"]
    and rel_emb <= tolerance["rel_embedding"]
    and bool(tables)
  )
  verdict = "ok" if within else "mismatch"
  if candidate == "cudnn_flash_jax":
    calls = {
      "lowered": sorted(set(cand["lowered_calls"])),
      "compiled": None if cand["compiled_calls"] is None else sorted(set(cand["compiled_calls"])),
    }
    out["cudnn_calls"] = calls
    out["cudnn_forward"] = any("fmha" in c and "Backward" not in c for c in calls["lowered"])
    out["cudnn_backward"] = any("fmha" in c and "Backward" in c for c in calls["lowered"])
    out["fallback_warning"] = cand["fallback_warning"]
    if within and (not out["cudnn_forward"] or not out["cudnn_backward"] or cand["fallback_warning"]):
      verdict = "fallback"
  out["verdict"] = verdict
  return out


def _rel_value(x: Optional[float]) -> float:
  return math.inf if x is None else x


def prepare_case(kind: str, packed: bool, args, candidate: str) -> dict:
  """The batch, the parameters and both lowered programs of one case."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  lengths = (
    {"inputs": args.inputs, "targets": args.targets} if kind == "t5" else {"targets": args.inputs + args.targets}
  )
  batch = {
    k: jnp.asarray(v)
    for k, v in make_batch(kind, packed, args.batch, lengths, args.vocab_size, seed=args.seed + 2 * packed).items()
  }
  models = {name: build_model(kind, name, args) for name in (args.reference, candidate)}  # checks both names
  model = models[args.reference]
  # The same parameters for both implementations.
  params = model.init_params(jax.random.key(args.seed), model.input_shapes(args.batch, lengths))
  case = {"batch": batch, "params": params, "impls": {}}
  for name, model in models.items():
    stage(f"{kind} {'packed' if packed else 'padded'}: lowering {name} ...")
    case["impls"][name] = lower(model, case["params"], batch)
  return case


def run(args, emit) -> dict:
  """All cases: traced and lowered one by one, each program compiled in a
  thread pool as soon as it is lowered (XLA compiles outside the GIL), then
  run and compared in order, a line emitted after each."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  from t5lite.kernels import backend  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_enable_compilation_cache", False)  # the compiled programs are inspected
  candidate = args.candidate or backend.resolve_attention("auto", args.dtype)
  device = jax.devices()[0]
  tolerance = TOLERANCES[args.dtype]
  line: dict[str, Any] = {
    "impl": "attention_check",
    "reference": args.reference,
    "candidate": candidate,
    "compared": f"{args.reference} vs {candidate}",
    "dtype": args.dtype,
    "tolerances": tolerance,
    "preset": args.preset,
    "layers": args.layers,
    "batch": args.batch,
    "inputs": args.inputs,
    "targets": args.targets,
    "vocab_size": args.vocab_size,
    "platform": device.platform,
    "device": device.device_kind,
    "jax": jax.__version__,
    "cases": {},
    "complete": False,
  }
  if candidate == args.reference:
    line["note"] = f"'auto' runs {candidate!r} here, the reference itself"
  names = [f"{kind}_{'packed' if packed else 'padded'}" for kind in args.models for packed in (True, False)]
  errors: dict[str, str] = {}

  def failed(case: str, e: BaseException) -> None:
    message = f"{type(e).__name__}: {e}"[:2000]
    stage(f"{case}: {message}")
    errors.setdefault(case, message)

  prepared, futures = {}, {}
  workers = max(1, min(8, os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for case in names:  # each case's programs compile while the next one is traced
      kind, packed = case.rsplit("_", 1)[0], case.endswith("_packed")
      try:
        prepared[case] = prepare_case(kind, packed, args, candidate)
      except Exception as e:  # pylint: disable=broad-except  # reported, the next case runs
        failed(case, e)
        continue
      for name, impl in prepared[case]["impls"].items():
        futures[(case, name)] = pool.submit(compile_lowered, impl["lowered"])
    stage(f"compiling {len(futures)} programs ({workers} threads) ...")
    for case in names:
      if case in prepared:
        p = prepared[case]
        try:
          results = {
            name: execute(impl, *futures[(case, name)].result(), p["params"], p["batch"])
            for name, impl in p["impls"].items()
          }
          line["cases"][case] = compare(results[args.reference], results[candidate], tolerance, candidate)
          stage(f"{case}: {line['cases'][case]['verdict']}")
        except Exception as e:  # pylint: disable=broad-except  # a compile or run failure: the next case runs
          failed(case, e)
      if case in errors:
        line["cases"][case] = {"verdict": "error", "error": errors[case]}
      line["verdict"] = max((c["verdict"] for c in line["cases"].values()), key=_ORDER.index)
      emit(line)
  line["complete"] = True
  if candidate == "cudnn_flash_jax":
    used = [c.get("cudnn_forward") and c.get("cudnn_backward") for c in line["cases"].values() if "error" not in c]
    line["cudnn_used"] = bool(used) and all(used)
    line["fallback_warning"] = next(
      (c["fallback_warning"] for c in line["cases"].values() if c.get("fallback_warning")), None
    )
  if errors:
    line["error"] = next(f"{case}: {message}" for case, message in errors.items())
  return line


def parse_args(argv: Optional[Sequence[str]] = None):
  from t5lite.kernels import backend  # pylint: disable=g-import-not-at-top

  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--reference", default="dot_product", choices=backend.ATTENTION_IMPLEMENTATIONS)
  p.add_argument("--candidate", default="", help="default: the implementation 'auto' runs here for --dtype")
  p.add_argument("--dtype", default="bfloat16", choices=tuple(TOLERANCES))
  p.add_argument("--models", default="t5,decoder_only", help="comma-separated: t5, decoder_only")
  p.add_argument("--preset", default="tiny", help="the models' preset (both have 'tiny')")
  p.add_argument("--layers", type=int, default=0, help="layers per stack (0: the preset's)")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--inputs", type=int, default=40, help="T5 inputs length; decoder-only: inputs + targets")
  p.add_argument("--targets", type=int, default=18)
  p.add_argument("--vocab_size", type=int, default=512)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  args.models = [m.strip() for m in args.models.split(",") if m.strip()]
  if not args.models or set(args.models) - {"t5", "decoder_only"}:
    p.error(f"--models: t5 and/or decoder_only, not {args.models}")
  if args.candidate and args.candidate not in backend.ATTENTION_IMPLEMENTATIONS:
    p.error(f"--candidate: one of {backend.ATTENTION_IMPLEMENTATIONS}")
  if min(args.inputs, args.targets) < 8 or args.batch < 2:
    p.error("--inputs and --targets must be >= 8 (two packed segments and padding), --batch >= 2")
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)

  def emit(line):
    print(json.dumps(line), flush=True)

  line = run(args, emit)
  emit(line)
  return 1 if line["verdict"] == "error" else 0


if __name__ == "__main__":
  sys.exit(main())

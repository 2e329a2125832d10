"""t5lite/bench/gpu.py: the prepared GPU benchmark, its plan run tiny on the CPU (--smoke)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from t5lite.bench import attention_check, gpu

T5LITE_RUNS = (
  "base_cold",
  "base_warm",
  "base_attn_dot_product",
  "switch_base_8",
  "large",
  "1b",
  "large_remat_minimal",
  "1b_remat_minimal",
  "large_scan",
  "1b_scan",
)
SMOKE_PLAN = [
  "reference",
  "attention_check",
  "base_cold",
  "base_warm",
  "base_attn_dot_product",
  "hf_base",
  "switch_base_8",
  "large",
  "1b",
  "large_remat_minimal",
  "1b_remat_minimal",
  "large_scan",
  "1b_scan",
]
FORBIDDEN = ("tensorflow", "tensorflow_datasets", "seqio", "gin")


def _env(tmp_path, **extra):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # conftest's 8 simulated devices are for the mesh tests
  env.update(JAX_PLATFORMS="cpu", HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"), **extra)
  return env


def _bench(args, env, timeout):
  proc = subprocess.run(
    [sys.executable, "-m", "t5lite.bench.gpu", *args],
    cwd=gpu.REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    timeout=timeout,
  )
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
  return proc, lines


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("smoke")
  out = tmp / "bench.jsonl"
  # PYTHONPROFILEIMPORTTIME: every process (this script and its children)
  # lists what it imports on stderr, checked below.
  proc, lines = _bench(
    ["--smoke", "--budget_s", "400", "--output", str(out)], _env(tmp, PYTHONPROFILEIMPORTTIME="1"), timeout=480
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc, lines, out


def test_smoke_has_a_line_per_planned_run(smoke):
  proc, lines, out = smoke
  env, runs, summary = lines[0], lines[1:-1], lines[-1]
  assert env["run"] == "env" and env["mode"] == "smoke"
  assert env["plan"] == SMOKE_PLAN
  assert [l["run"] for l in runs] == env["plan"]
  for l in runs:
    assert l["status"] in ("ok", "timeout", "error", "skipped") and l["wall_s"] >= 0
  assert summary["run"] == "summary" and summary["statuses"] == {l["run"]: l["status"] for l in runs}
  assert [json.loads(l) for l in out.read_text().splitlines()] == lines  # --output: the same lines


def test_smoke_reference_and_t5lite_runs(smoke):
  _, lines, _ = smoke
  by = {l["run"]: l for l in lines}
  ref = by["reference"]
  assert ref["status"] == "ok", ref
  assert ref["trivial_compile_s"] > 0 and ref["dense_compile_s"] > ref["dense_lower_s"] > 0
  assert ref["dense_compile_s_per_layer"] == pytest.approx(ref["dense_compile_s"] / 2, abs=1e-3)
  assert ref["dense_flops_per_step"] == 12 * 2 * (2 * 16) * 64 * 128
  assert ref["dense_tflops_per_s"] == pytest.approx(
    ref["dense_flops_per_step"] / ref["dense_step_s"] / 1e12, rel=0.02, abs=1e-4
  )
  assert math.isfinite(ref["dense_first_loss"]) and math.isfinite(ref["dense_last_loss"])
  for name in T5LITE_RUNS:
    r = by[name]
    assert r["status"] == "ok", r
    assert r["init_s"] > 0 and r["compile_s"] > 0 and r["first_step_s"] > 0 and r["tokens_per_s"] > 0
    assert r["time_to_first_step_s"] >= r["init_s"] + r["compile_s"] + r["first_step_s"] - 0.01
    tokens = r["batch"] * (r["inputs"] + r["targets"])
    assert r["tokens_per_s"] == pytest.approx(tokens / r["median_step_s"], rel=0.01)
    assert math.isfinite(r["first_loss"]) and math.isfinite(r["last_loss"])
    assert r["peak_device_bytes"] is None and r["platform"] == "cpu"  # no memory statistics on CPU
  assert by["1b"]["model"] == "decoder_only" and by["1b"]["inputs"] + by["1b"]["targets"] == 32
  assert by["base_attn_dot_product"]["attention"] == "dot_product"
  assert by["large_remat_minimal"]["remat_policy"] == "minimal" and by["1b_scan"]["scan_layers"] is True
  # Issue 15: the Switch Transformer with base's shapes; its FLOPs count the active parameters
  # (top-1 of 8 experts with the dense d_ff): base's plus the two routers' [d_model, E] matmuls.
  switch, base = by["switch_base_8"], by["base_cold"]
  assert switch["preset"] == "switch_tiny" and [switch[k] for k in ("batch", "inputs", "targets")] == [2, 32, 8]
  assert switch["params"] > base["params"] and switch["mfu"] is None  # no peak FLOPs for a CPU
  router_flops = 3 * 2 * 2 * (128 * 8) * (32 + 8)  # 3 x forward, 2 per MAC, batch 2, [128, 8] per stack
  assert switch["flops_per_step"] == pytest.approx(base["flops_per_step"] + router_flops, rel=1e-9)
  assert lines[-1]["switch_base_8_vs_base_tokens_per_s"] == pytest.approx(
    switch["tokens_per_s"] / base["tokens_per_s"], abs=1e-3
  )


def test_smoke_attention_check(smoke):
  # On the CPU the probe compares the XLA:CPU kernel ('auto' there) with the plain
  # attention in float32: loss, logits and every gradient agree to rounding.
  _, lines, _ = smoke
  check = next(l for l in lines if l["run"] == "attention_check")
  assert check["status"] == "ok", check
  assert check["compared"] == "dot_product vs cpu_dot_product" and check["dtype"] == "float32"
  assert check["complete"] is True and check["verdict"] == "ok" and check["platform"] == "cpu"
  assert check["tolerances"] == attention_check.TOLERANCES["float32"]
  assert set(check["cases"]) == {"t5_packed", "t5_padded", "decoder_only_packed", "decoder_only_padded"}
  for name, case in check["cases"].items():
    assert case["verdict"] == "ok" and case["finite"] is True, (name, case)
    assert case["loss"][0] > 0 and case["loss_rel_diff"] <= 1e-5, (name, case)
    assert case["logits_rel_diff"] <= 1e-5 and case["grad_rel_diff"] <= 1e-5, (name, case)
    assert case["rel_embedding_rel_diff"] <= 1e-5, (name, case)
    tables = case["rel_embedding"]
    assert len(tables) == (2 if name.startswith("t5") else 1), (name, tables)  # encoder and decoder tables
    for table in tables.values():
      assert table["norm"][0] > 0 and table["norm"][1] == pytest.approx(table["norm"][0], rel=1e-4)
    assert "cudnn_calls" not in case  # only for cudnn_flash_jax
  summary = lines[-1]
  assert summary["attention_check"] == "ok" and summary["attention_check_compared"] == check["compared"]
  assert summary["auto_failed_dot_product_ok"] is False and summary["base_run"] == "base_cold"


def test_smoke_warm_cache_compiles_faster(smoke):
  _, lines, _ = smoke
  by = {l["run"]: l for l in lines}
  cold, warm = by["base_cold"], by["base_warm"]
  assert cold["compilation_cache_dir"] and cold["compilation_cache_dir"] == warm["compilation_cache_dir"]
  # A warm compile only traces and loads; the cold one also runs XLA. (No ratio:
  # the test machine's load varies.)
  assert warm["compile_s"] < cold["compile_s"], (cold["compile_s"], warm["compile_s"])
  assert lines[-1]["base_compile_s_cold_warm"] == [cold["compile_s"], warm["compile_s"]]


def test_smoke_hf_skipped_without_torch(smoke):
  _, lines, _ = smoke
  hf = next(l for l in lines if l["run"] == "hf_base")
  if not os.path.isfile(os.path.join(gpu.REPO, gpu.DEFAULT_HF_SCRIPT)):
    assert hf["status"] == "skipped" and "does not exist" in hf["reason"]
  assert lines[-1]["base_vs_hf_tokens_per_s"] is None or hf["status"] == "ok"


def test_smoke_imports_no_tensorflow_seqio_gin(smoke):
  proc, _, _ = smoke
  imported = {
    l.rsplit("|", 1)[1].strip().split(".")[0]
    for l in proc.stderr.splitlines()
    if l.startswith("import time:") and "|" in l
  }
  assert "jax" in imported and "t5lite" in imported  # the children's imports are listed
  assert not imported & set(FORBIDDEN), imported & set(FORBIDDEN)


def test_timeout_and_budget_lines(tmp_path):
  # Timeouts scaled to milliseconds: both runs are cut off, the script goes on and exits 0.
  proc, lines = _bench(["--smoke", "--only", "reference,1b", "--timeout_scale", "0.0001"], _env(tmp_path), 120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [l["run"] for l in lines] == ["env", "reference", "1b", "summary"]
  for l in lines[1:3]:
    assert l["status"] == "timeout" and 0 < l["timeout_s"] < 0.1 and "cmd" in l
  assert lines[-1]["statuses"] == {"reference": "timeout", "1b": "timeout"}
  # Less budget than --min_run_s: skipped without starting.
  proc, lines = _bench(["--smoke", "--only", "reference", "--budget_s", "5"], _env(tmp_path), 60)
  assert proc.returncode == 0 and lines[1]["status"] == "skipped" and "budget" in lines[1]["reason"]


def test_only_refuses_unknown_names(tmp_path):
  proc, _ = _bench(["--smoke", "--only", "reference,nope"], _env(tmp_path), 60)
  assert proc.returncode == 2 and "nope" in proc.stderr and "base_cold" in proc.stderr


def test_gpu_plan():
  plan = gpu.build_plan(
    gpu.GPU,
    steps=8,
    cache_dir="/c",
    attention_variants=gpu.GPU_ATTENTION,
    attention_names=("auto", "dot_product", "cpu_dot_product"),
    hf_script="/h.py",
    hf_skip=None,
    timeout_scale=2.0,
  )
  by = {r.name: r for r in plan}
  # A base number survives a cuDNN failure: the check, then base ('auto'), then base
  # with the plain attention, before HF and the larger models.
  assert [r.name for r in plan] == SMOKE_PLAN[:9] + ["base_attn_cudnn_flash_jax"] + SMOKE_PLAN[9:]
  assert SMOKE_PLAN[7:9] == ["large", "1b"]  # the other attention implementations come after these
  assert SMOKE_PLAN[5:7] == ["hf_base", "switch_base_8"]  # the Switch Transformer right after the base runs
  assert by["attention_check"].argv == [
    "-m",
    "t5lite.bench.attention_check",
    "--candidate",
    "cudnn_flash_jax",
    "--dtype",
    "bfloat16",
  ]
  assert by["attention_check"].timeout_s == 90 and by["attention_check"].skip is None
  assert by["base_cold"].argv == by["base_warm"].argv
  assert by["base_cold"].argv == [
    "-m",
    "t5lite.bench.train_step",
    "--preset",
    "base",
    "--batch",
    "128",
    "--inputs",
    "512",
    "--targets",
    "114",
    "--dtype",
    "bfloat16",
    "--steps",
    "8",
    "--compilation_cache_dir",
    "/c",
  ]
  assert "--compilation_cache_dir" not in by["large"].argv  # the other runs compile cold
  # Base's command with the Switch preset, compiled cold.
  base_cold = [a for a in by["base_cold"].argv if a not in ("--compilation_cache_dir", "/c")]
  assert by["switch_base_8"].argv == ["switch_base_8" if a == "base" else a for a in base_cold]
  assert by["switch_base_8"].argv[3] == "switch_base_8"
  assert by["switch_base_8"].timeout_s == by["large"].timeout_s == 300 and by["switch_base_8"].skip is None
  assert by["1b"].argv[2:12] == [
    "--model",
    "decoder_only",
    "--preset",
    "1b",
    "--batch",
    "16",
    "--inputs",
    "1024",
    "--targets",
    "1024",
  ]
  assert by["hf_base"].argv == ["/h.py", "--preset", "base", "--batch", "128", "--dtype", "bfloat16", "--steps", "8"]
  assert by["base_cold"].timeout_s == 300 and by["base_warm"].timeout_s == 120
  assert by["base_attn_dot_product"].skip is None
  assert "cudnn_flash_jax" in by["base_attn_cudnn_flash_jax"].skip  # not a valid name here: skipped
  assert by["1b_scan"].argv[-1] == "--scan_layers" and by["large_remat_minimal"].argv[-2:] == [
    "--remat_policy",
    "minimal",
  ]
  unknown = gpu.build_plan(
    gpu.GPU,
    steps=8,
    cache_dir="/c",
    attention_variants=gpu.GPU_ATTENTION,
    attention_names=None,
    hf_script="/h.py",
    hf_skip="no torch",
  )
  assert all(r.skip for r in unknown if r.name.startswith("base_attn_") or r.name == "hf_base")


def test_summary_ratio_and_mfu():
  lines = [
    {"run": "env", "status": "ok"},
    {
      "run": "reference",
      "status": "ok",
      "impl": "jax_reference",
      "dense_tflops_per_s": 494.5,
      "device": "NVIDIA H200",
      "platform": "gpu",
    },
    {
      "run": "base_cold",
      "status": "ok",
      "impl": "t5lite",
      "tokens_per_s": 200000.0,
      "mfu": 0.41,
      "flops_per_step": 4.0e14,
    },
    {"run": "hf_base", "status": "ok", "tokens_per_s": 100000.0, "median_step_s": 2.0, "device": "NVIDIA H200"},
    {"run": "large", "status": "timeout"},
  ]
  s = gpu.summarize(lines, 12.0)
  assert s["base_vs_hf_tokens_per_s"] == 2.0 and s["base_run"] == "base_cold"
  assert s["mfu"] == {"reference": 0.5, "base_cold": 0.41, "hf_base": round(4.0e14 / 2.0 / 989e12, 4)}
  assert s["statuses"] == {"reference": "ok", "base_cold": "ok", "hf_base": "ok", "large": "timeout"}
  assert s["attention_check"] is None and s["auto_failed_dot_product_ok"] is False


def test_summary_switch_over_base():
  lines = [
    {"run": "env", "status": "ok"},
    {"run": "base_cold", "status": "ok", "impl": "t5lite", "tokens_per_s": 200000.0, "mfu": 0.41},
    {"run": "switch_base_8", "status": "ok", "impl": "t5lite", "tokens_per_s": 150000.0, "mfu": 0.3},
  ]
  s = gpu.summarize(lines, 12.0)
  assert s["switch_base_8_vs_base_tokens_per_s"] == 0.75 and s["mfu"]["switch_base_8"] == 0.3
  lines[2]["status"] = "timeout"
  assert gpu.summarize(lines, 12.0)["switch_base_8_vs_base_tokens_per_s"] is None


def test_summary_when_auto_fails():
  # cuDNN attention ('auto') fails, the plain attention runs: the summary says so and
  # takes base_attn_dot_product as the base of the HF ratio.
  lines = [
    {"run": "env", "status": "ok"},
    {
      "run": "attention_check",
      "status": "error",
      "verdict": "error",
      "compared": "dot_product vs cudnn_flash_jax",
      "cudnn_used": False,
      "error": "t5_packed: XlaRuntimeError: ...",
    },
    {"run": "base_cold", "status": "error", "returncode": 1},
    {"run": "base_warm", "status": "error", "returncode": 1},
    {
      "run": "base_attn_dot_product",
      "status": "ok",
      "impl": "t5lite",
      "tokens_per_s": 150000.0,
      "mfu": 0.3,
      "flops_per_step": 4.0e14,
    },
    {"run": "hf_base", "status": "ok", "tokens_per_s": 100000.0, "median_step_s": 2.0, "device": "NVIDIA H200"},
  ]
  s = gpu.summarize(lines, 12.0)
  assert s["auto_failed_dot_product_ok"] is True and s["base_run"] == "base_attn_dot_product"
  assert s["base_vs_hf_tokens_per_s"] == 1.5
  assert s["attention_check"] == "error" and s["attention_check_cudnn_used"] is False
  assert s["attention_check_compared"] == "dot_product vs cudnn_flash_jax"
  lines[1] = {"run": "attention_check", "status": "timeout", "verdict": "ok"}  # partial: the status tells
  lines[2]["status"] = "timeout"
  s = gpu.summarize(lines, 12.0)
  assert s["attention_check"] == "timeout" and s["auto_failed_dot_product_ok"] is True
  lines[4]["status"] = "error"
  assert gpu.summarize(lines, 12.0)["auto_failed_dot_product_ok"] is False


def test_timeout_keeps_the_last_line_printed():
  code = "import json, time; print(json.dumps({'cases': 1, 'verdict': 'ok'}), flush=True); time.sleep(60)"
  line = gpu.execute(gpu.Run("partial", ["-c", code], 5.0), 2.0, dict(os.environ))
  assert line["status"] == "timeout" and line["cases"] == 1 and line["verdict"] == "ok"


def _fake_result(grads, loss=2.0):
  return {
    "loss": loss,
    "logits": np.ones((2, 3)),
    "grads": grads,
    "compile_s": 1.0,
    "fallback_warning": None,
    "lowered_calls": [],
    "compiled_calls": [],
  }


def test_attention_check_catches_a_missing_bias_gradient():
  import jax  # pylint: disable=g-import-not-at-top

  key = jax.tree_util.DictKey
  rng = np.random.default_rng(0)
  grads = [
    ((key("encoder"), key("relpos"), key("rel_embedding")), rng.normal(size=(4, 32))),
    ((key("encoder"), key("layers_0"), key("kernel")), rng.normal(size=(64, 64))),
  ]
  tol = attention_check.TOLERANCES["bfloat16"]
  same = attention_check.compare(_fake_result(grads), _fake_result(grads), tol, "cpu_dot_product")
  assert same["verdict"] == "ok" and same["grad_rel_diff"] == 0.0
  assert list(same["rel_embedding"]) == ["encoder/relpos/rel_embedding"]
  # The bias gradient lost: the overall gradient barely changes, the table's does.
  dropped = [(grads[0][0], np.zeros_like(grads[0][1])), grads[1]]
  bad = attention_check.compare(_fake_result(grads), _fake_result(dropped), tol, "cpu_dot_product")
  assert bad["verdict"] == "mismatch" and bad["rel_embedding_rel_diff"] == 1.0
  assert bad["worst_leaf"] == ["encoder/relpos/rel_embedding", 1.0]
  nan = attention_check.compare(_fake_result(grads), _fake_result(grads, loss=float("nan")), tol, "cpu_dot_product")
  assert nan["verdict"] == "mismatch" and nan["finite"] is False and nan["loss"][1] is None
  # cuDNN: numbers that agree without a cuDNN call in the program are a fallback.
  fell_back = attention_check.compare(_fake_result(grads), _fake_result(grads), tol, "cudnn_flash_jax")
  assert fell_back["verdict"] == "fallback" and fell_back["cudnn_forward"] is False
  used = _fake_result(grads)
  used["lowered_calls"] = ["__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward"]
  ok = attention_check.compare(_fake_result(grads), used, tol, "cudnn_flash_jax")
  assert ok["verdict"] == "ok" and ok["cudnn_forward"] and ok["cudnn_backward"]


def test_attention_check_batches_as_seqio_packs_them():
  b = attention_check.make_batch("t5", True, 3, {"inputs": 12, "targets": 10}, 64, seed=0)
  for prefix, length in (("encoder", 12), ("decoder", 10)):
    seg, pos = b[f"{prefix}_segment_ids"], b[f"{prefix}_positions"]
    assert seg.shape == (3, length) and (seg[:, -1] == 0).all()  # padding at the end of every row
    assert (seg.max(axis=1) == 2).all() and (pos[seg == 0] == 0).all()
    for row_seg, row_pos in zip(seg, pos):
      for s_id in (1, 2):
        assert (row_pos[row_seg == s_id] == np.arange((row_seg == s_id).sum())).all()
  tgt, inp = b["decoder_target_tokens"], b["decoder_input_tokens"]
  starts = np.concatenate(
    [np.ones((3, 1), bool), b["decoder_segment_ids"][:, 1:] != b["decoder_segment_ids"][:, :-1]], axis=1
  )
  assert (inp[starts] == 0).all() and (inp[:, 1:][~starts[:, 1:]] == tgt[:, :-1][~starts[:, 1:]]).all()
  assert (b["decoder_loss_weights"] == (tgt > 0)).all() and (
    (b["encoder_input_tokens"] > 0) == (b["encoder_segment_ids"] > 0)
  ).all()
  u = attention_check.make_batch("decoder_only", False, 3, {"targets": 16}, 64, seed=0)
  assert set(u) == {"decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights"}
  assert (u["decoder_target_tokens"][0] > 0).all() and (u["decoder_target_tokens"][1:, -1] == 0).all()


def test_modules_import_no_tensorflow_seqio_gin():
  code = (
    "import sys, t5lite.bench.gpu, t5lite.bench.train_step, t5lite.bench.reference, "
    "t5lite.bench.attention_check; "
    f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    cwd=gpu.REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    stdout=subprocess.PIPE,
    text=True,
    check=True,
    timeout=120,
  ).stdout
  assert out.strip() == "[]"

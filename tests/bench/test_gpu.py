"""t5lite/bench/gpu.py: the prepared GPU benchmark, its plan run tiny on the CPU (--smoke)."""

import json
import math
import os
import subprocess
import sys

import pytest

from t5lite.bench import gpu

T5LITE_RUNS = ("base_cold", "base_warm", "large", "1b", "base_attn_dot_product", "large_remat_minimal",
               "1b_remat_minimal", "large_scan", "1b_scan")
FORBIDDEN = ("tensorflow", "tensorflow_datasets", "seqio", "gin")


def _env(tmp_path, **extra):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # conftest's 8 simulated devices are for the mesh tests
  env.update(JAX_PLATFORMS="cpu", HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"), **extra)
  return env


def _bench(args, env, timeout):
  proc = subprocess.run([sys.executable, "-m", "t5lite.bench.gpu", *args], cwd=gpu.REPO, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
  return proc, lines


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("smoke")
  out = tmp / "bench.jsonl"
  # PYTHONPROFILEIMPORTTIME: every process (this script and its children)
  # lists what it imports on stderr, checked below.
  proc, lines = _bench(["--smoke", "--budget_s", "400", "--output", str(out)],
                       _env(tmp, PYTHONPROFILEIMPORTTIME="1"), timeout=480)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc, lines, out


def test_smoke_has_a_line_per_planned_run(smoke):
  proc, lines, out = smoke
  env, runs, summary = lines[0], lines[1:-1], lines[-1]
  assert env["run"] == "env" and env["mode"] == "smoke"
  assert env["plan"] == ["reference", "base_cold", "base_warm", "hf_base", *T5LITE_RUNS[2:]]
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
      ref["dense_flops_per_step"] / ref["dense_step_s"] / 1e12, rel=0.02, abs=1e-4)
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


def test_smoke_warm_cache_compiles_faster(smoke):
  _, lines, _ = smoke
  by = {l["run"]: l for l in lines}
  cold, warm = by["base_cold"], by["base_warm"]
  assert cold["compilation_cache_dir"] and cold["compilation_cache_dir"] == warm["compilation_cache_dir"]
  # A warm compile only traces and loads; the cold one also runs XLA.
  assert warm["compile_s"] < 0.6 * cold["compile_s"], (cold["compile_s"], warm["compile_s"])
  assert warm["init_s"] < cold["init_s"]
  assert lines[-1]["base_compile_s_cold_warm"] == [cold["compile_s"], warm["compile_s"]]


def test_smoke_hf_skipped_without_torch(smoke):
  _, lines, _ = smoke
  hf = next(l for l in lines if l["run"] == "hf_base")
  if not os.path.isfile(os.path.join(gpu.REPO, gpu.DEFAULT_HF_SCRIPT)):
    assert hf["status"] == "skipped" and "does not exist" in hf["reason"]
  assert lines[-1]["base_vs_hf_tokens_per_s"] is None or hf["status"] == "ok"


def test_smoke_imports_no_tensorflow_seqio_gin(smoke):
  proc, _, _ = smoke
  imported = {l.rsplit("|", 1)[1].strip().split(".")[0]
              for l in proc.stderr.splitlines() if l.startswith("import time:") and "|" in l}
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
  plan = gpu.build_plan(gpu.GPU, steps=8, cache_dir="/c", attention_variants=gpu.GPU_ATTENTION,
                        attention_names=("auto", "dot_product", "cpu_dot_product"), hf_script="/h.py",
                        hf_skip=None, timeout_scale=2.0)
  by = {r.name: r for r in plan}
  assert [r.name for r in plan] == [
      "reference", "base_cold", "base_warm", "hf_base", "large", "1b", "base_attn_dot_product",
      "base_attn_cudnn_flash_jax", "large_remat_minimal", "1b_remat_minimal", "large_scan", "1b_scan"]
  assert by["base_cold"].argv == by["base_warm"].argv
  assert by["base_cold"].argv == [
      "-m", "t5lite.bench.train_step", "--preset", "base", "--batch", "128", "--inputs", "512", "--targets",
      "114", "--dtype", "bfloat16", "--steps", "8", "--compilation_cache_dir", "/c"]
  assert "--compilation_cache_dir" not in by["large"].argv  # the other runs compile cold
  assert by["1b"].argv[2:12] == ["--model", "decoder_only", "--preset", "1b", "--batch", "16", "--inputs",
                                 "1024", "--targets", "1024"]
  assert by["hf_base"].argv == ["/h.py", "--preset", "base", "--batch", "128", "--dtype", "bfloat16",
                                "--steps", "8"]
  assert by["base_cold"].timeout_s == 300 and by["base_warm"].timeout_s == 120
  assert by["base_attn_dot_product"].skip is None
  assert "cudnn_flash_jax" in by["base_attn_cudnn_flash_jax"].skip  # not a valid name here: skipped
  assert by["1b_scan"].argv[-1] == "--scan_layers" and by["large_remat_minimal"].argv[-2:] == [
      "--remat_policy", "minimal"]
  unknown = gpu.build_plan(gpu.GPU, steps=8, cache_dir="/c", attention_variants=gpu.GPU_ATTENTION,
                           attention_names=None, hf_script="/h.py", hf_skip="no torch")
  assert all(r.skip for r in unknown if r.name.startswith("base_attn_") or r.name == "hf_base")


def test_summary_ratio_and_mfu():
  lines = [
      {"run": "env", "status": "ok"},
      {"run": "reference", "status": "ok", "impl": "jax_reference", "dense_tflops_per_s": 494.5,
       "device": "NVIDIA H200", "platform": "gpu"},
      {"run": "base_cold", "status": "ok", "impl": "t5lite", "tokens_per_s": 200000.0, "mfu": 0.41,
       "flops_per_step": 4.0e14},
      {"run": "hf_base", "status": "ok", "tokens_per_s": 100000.0, "median_step_s": 2.0,
       "device": "NVIDIA H200"},
      {"run": "large", "status": "timeout"},
  ]
  s = gpu.summarize(lines, 12.0)
  assert s["base_vs_hf_tokens_per_s"] == 2.0
  assert s["mfu"] == {"reference": 0.5, "base_cold": 0.41, "hf_base": round(4.0e14 / 2.0 / 989e12, 4)}
  assert s["statuses"] == {"reference": "ok", "base_cold": "ok", "hf_base": "ok", "large": "timeout"}


def test_modules_import_no_tensorflow_seqio_gin():
  code = ("import sys, t5lite.bench.gpu, t5lite.bench.train_step, t5lite.bench.reference; "
          f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
  out = subprocess.run([sys.executable, "-c", code], cwd=gpu.REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                       stdout=subprocess.PIPE, text=True, check=True, timeout=120).stdout
  assert out.strip() == "[]"

"""t5lite/bench/moe.py: Switch against dense T5 and expert-parallel bytes, run tiny (--smoke).

The smoke trains both quickstarts (3 steps, batch 4, lengths 64 / 16) side by side in
subprocesses and counts the bytes of switch_tiny's abstract train state on this process's 8
simulated devices (tests/conftest.py). Checked: the structure, and relations that hold
exactly (FLOPs, parameters, bytes); no times.
"""

import json
import math

import pytest

from t5lite.bench import moe as bench
from t5lite.models import t5

E = 8  # switch_tiny's experts
D, FF = 128, 512  # T5 'tiny' d_model and d_ff
MOE_LAYERS = 2  # one in each 2-layer stack (every other layer)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("moe_bench")
  out = tmp / "moe.jsonl"
  assert bench.main(["--smoke", "--output", str(out), "--workdir", str(tmp / "work")]) == 0
  return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_smoke_lines(smoke):
  assert [l["part"] for l in smoke] == ["env", "train", "train", "paired", *["bytes"] * len(bench.MESHES), "summary"]
  assert smoke[0]["mode"] == "smoke" and smoke[0]["steps"] == 3
  assert [l["run"] for l in smoke[1:3]] == ["dense", "switch"]
  assert [l["mesh_label"] for l in smoke[4:-1]] == [m[0] for m in bench.MESHES]


@pytest.mark.slow
def test_smoke_training_runs(smoke):
  dense, switch = smoke[1], smoke[2]
  for run in (dense, switch):
    assert run["status"] == "ok", run.get("stderr_tail")
    assert run["steps"] == 3 and [s for s, _ in run["losses"]] == [1, 2, 3]
    assert all(math.isfinite(loss) for _, loss in run["losses"])
    assert run["losses"][-1][1] < run["losses"][0][1]  # the same 3 batches: the loss falls in both
    assert run["loss_last"] == run["losses"][-1][1] and run["loss_window_steps"] == [1, 3]
    assert run["tokens_per_s"] > 0 and run["summary_windows"] == 2  # the first step is compile, not a window
    for key in ("state_init_s", "first_batch_s", "compile_s", "first_step_s"):
      assert run[key] > 0, key
    # The gin experiment files build the presets counted here: the run's FLOPs per token
    # (flops_per_s / tokens_per_s) and float32 parameter bytes (model-info.txt) agree.
    assert run["flops_per_token_run"] == pytest.approx(run["flops_per_token"], rel=1e-6)
    assert run["param_bytes_run"] == 4 * run["params"]
    assert run["vocab_size"] == bench.QUICKSTART_VOCAB and run["batch"] == 4
    assert run["lengths"] == {"inputs": 64, "targets": 16}
    assert "--gin.COMPILATION_CACHE_DIR=" in run["cmd"] and run["gin_file"] in run["cmd"]
  assert "moe_last" not in dense and dense["num_experts"] == 0
  moe = switch["moe_last"]
  assert set(moe) == set(bench._MOE_KEYS)
  assert 0 <= moe["moe/dropped_fraction"] <= 1 and moe["moe/aux_loss"] > 0 and moe["moe/router_z_loss"] > 0
  assert moe["moe/expert_load_min"] <= 1 / E <= moe["moe/expert_load_max"] <= 1
  assert 0 < moe["moe/router_entropy"] <= math.log(E) + 1e-4


@pytest.mark.slow
def test_smoke_paired_steps(smoke):
  dense, switch, paired, summary = smoke[1], smoke[2], smoke[3], smoke[-1]
  assert paired["status"] == "ok" and paired["pairs"] == 2 and paired["tokens_per_step"] == 4 * (64 + 16)
  for name, run in (("dense", dense), ("switch", switch)):
    p = paired[name]
    assert p["preset"] == run["preset"] and p["params"] == run["params"]  # the same model as the training run
    assert p["compile_s"] > 0 and p["median_step_s"] > 0 and all(math.isfinite(x) for x in p["first_last_loss"])
    assert p["tokens_per_s"] == pytest.approx(paired["tokens_per_step"] / p["median_step_s"], rel=1e-2)
  low, high = paired["switch_over_dense_step_time_min_max"]
  assert 0 < low <= paired["switch_over_dense_step_time_median"] <= high
  assert 0 <= paired["pairs_switch_faster"] <= 2
  assert summary["paired_switch_over_dense_step_time"] == paired["switch_over_dense_step_time_median"]


@pytest.mark.slow
def test_smoke_same_flops_per_token_but_the_router(smoke):
  dense, switch, summary = smoke[1], smoke[2], smoke[-1]
  # Top-1 of 8 experts with the dense d_ff: the active parameters are the dense ones plus the
  # routers ([d_model, E] in each MoE layer), and so are the FLOPs per token.
  router = MOE_LAYERS * D * E
  assert switch["router_params"] == router and dense["router_params"] == 0
  assert switch["active_params"] - dense["active_params"] == router
  assert switch["expert_params"] == MOE_LAYERS * E * 3 * D * FF  # wi_0, wi_1, wo per expert
  assert switch["params"] - dense["params"] == switch["expert_params"] * (E - 1) // E + router
  assert dense["params"] == dense["active_params"]
  # 6 FLOPs per router parameter and token of its stack (forward and backward); one router per stack.
  assert switch["router_flops_per_token"] == pytest.approx(6 * D * E)
  assert switch["flops_per_token"] - dense["flops_per_token"] == pytest.approx(switch["router_flops_per_token"])
  assert summary["switch_minus_dense_flops_per_token"] == pytest.approx(summary["router_flops_per_token"])
  assert 1 < summary["switch_over_dense_flops_per_token"] < 1.01
  assert summary["statuses"] == {"dense": "ok", "switch": "ok"}
  assert summary["switch_over_dense_tokens_per_s"] > 0


@pytest.mark.slow
def test_smoke_expert_parallel_bytes(smoke):
  lines = {l["mesh_label"]: l for l in smoke if l["part"] == "bytes"}
  cfg = t5.t5_config("switch_tiny")  # the bytes part counts the published vocabulary, 32128
  expert_bytes = 4 * MOE_LAYERS * E * 3 * cfg.d_model * cfg.d_ff
  for label, l in lines.items():
    assert l["preset"] == "switch_tiny" and l["devices"] == 8 and l["num_experts"] == E
    assert l["params_expert_bytes"] == expert_bytes and l["notes"] == []
    assert l["params_bytes"] == lines["expert=1"]["params_bytes"]
    assert l["opt_state_bytes"] == lines["expert=1"]["opt_state_bytes"]
    # Each device holds its experts' share of the expert kernels, exactly (over fsdp too: 'embed').
    shards = l["mesh"]["expert"] * l["mesh"]["fsdp"]
    assert l["params_expert_bytes_per_device"] * shards == expert_bytes, label
    assert l["experts_per_device"] == E // l["mesh"]["expert"]
  assert lines["expert=1"]["params_bytes_per_device"] == lines["expert=1"]["params_bytes"]  # data parallel
  for label, axis in (("expert=8", 8), ("data=2 x expert=4", 4)):
    l = lines[label]
    assert l["params_expert_fraction_per_device"] == 1 / axis and l["opt_state_expert_fraction_per_device"] == 1 / axis
    assert l["opt_state_expert_bytes_per_device"] * axis == l["opt_state_expert_bytes"]
    # What is not an expert stays replicated over the expert axis (no fsdp here).
    assert l["params_other_bytes_per_device"] == lines["expert=1"]["params_other_bytes_per_device"]
  assert lines["expert=8"]["params_bytes_per_device"] < lines["data=2 x expert=4"]["params_bytes_per_device"]
  fsdp = lines["fsdp=2 x expert=4"]
  assert fsdp["params_expert_fraction_per_device"] == 1 / 8
  assert fsdp["params_other_bytes_per_device"] < lines["expert=8"]["params_other_bytes_per_device"]
  summary = smoke[-1]
  assert all(summary["expert_params_split_exactly"].values()) and len(summary["expert_params_split_exactly"]) == 4
  assert summary["expert_opt_state_split_exactly"] == {
    "switch_tiny expert=1": True,
    "switch_tiny expert=8": True,
    "switch_tiny data=2 x expert=4": True,
  }


def test_bad_flags_are_refused(capsys):
  for argv, word in (
    (["--parts", "train,nope"], "nope"),
    (["--models", "moe"], "moe"),
    (["--inputs", "64"], "--inputs"),
    (["--pairs", "0"], "--pairs"),
  ):
    with pytest.raises(SystemExit) as e:
      bench.parse_args(argv)
    assert e.value.code == 2 and word in capsys.readouterr().err


def test_train_env_drops_the_simulated_devices(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1")
  assert bench.train_env()["XLA_FLAGS"] == "--xla_cpu_foo=1"
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert "XLA_FLAGS" not in bench.train_env()

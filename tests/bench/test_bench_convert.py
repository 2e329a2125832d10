"""t5lite/bench/convert.py: the conversion benchmark's code path on the 'tiny' size (vocab 320, 2+2 layers)."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from t5lite.bench import convert as bench

# T5 'tiny' preset with the benchmark's vocabulary: d_model 128, 4 heads of 32, d_ff 512, 2+2 layers, 32 buckets.
V, D, H, KV, FF, L, BUCKETS = 320, 128, 4, 32, 512, 2, 32


def _tiny_params():
  """T5 v1.1 parameter count by hand: embedding + untied lm_head, gated MLP (wi_0, wi_1, wo), RMSNorm scales,
  one relative-position table per stack."""
  attention = 4 * D * H * KV
  mlp = 3 * D * FF
  encoder = L * (attention + mlp + 2 * D) + BUCKETS * H + D
  decoder = L * (2 * attention + mlp + 3 * D) + BUCKETS * H + D
  return 2 * V * D + encoder + decoder


def _env(tmp_path):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # conftest's 8 simulated devices are for the mesh tests, not a user's command
  env.update(JAX_PLATFORMS="cpu", HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
  return env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("convert_bench")
  emitted = []
  records = bench.run(["tiny"], str(tmp / "work"), keep=True, env=_env(tmp), emit=emitted.append)
  return tmp / "work", records, emitted


def test_tiny_records_are_sane(tiny):
  workdir, records, emitted = tiny
  assert emitted == records
  assert [(r["size"], r["direction"]) for r in records] == [("tiny", "import"), ("tiny", "export")]
  weights = workdir / "hf" / "tiny" / "model.safetensors"
  file_bytes = os.path.getsize(weights)
  params = _tiny_params()
  assert params == 1_263_360
  # float32 tensors plus the safetensors header (a few kB of JSON).
  assert 4 * params < file_bytes < 4 * params + 16_384
  for r in records:
    assert r["params"] == params and r["tensors"] == 52  # 2 + (2*9 + 2) + (2*14 + 2): lm_head is its own
    assert r["file_mb"] == round(file_bytes / 2**20, 1)
    assert r["platform"] == "cpu"
    assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["startup_s"] > 0
    # The wall time covers the child's start-up and the command it ran; the phases lie inside the command.
    assert r["wall_s"] >= r["python_start_s"] + r["startup_s"]
    assert all(s > 0 for s in r["phase_s"].values())
    # A started JAX process alone is far larger than this 5 MB file; the peak is at least every snapshot.
    assert r["peak_rss_mb"] * 2**20 > file_bytes
    memory = r["phase_memory_mb"]
    assert r["peak_rss_mb"] >= max(r["startup_rss_mb"], *(m["peak"] for m in memory.values()))
    for m in memory.values():
      assert m["peak"] >= m["rss"] > 0 and m["rss"] == pytest.approx(m["anon"] + m["file"] + m["shmem"], abs=0.2)
    assert r["peak_rss_over_file"] == pytest.approx(r["peak_rss_mb"] * 2**20 / file_bytes, abs=0.01)
    assert r["peak_above_startup_over_file"] == pytest.approx(
      (r["peak_rss_mb"] - r["startup_rss_mb"]) * 2**20 / file_bytes, abs=0.01
    )
    # The child's own peak (tens of MB above a started JAX for this file), not its parent's (this test process,
    # holding torch, transformers and a JAX backend, which a child's ru_maxrss would start from).
    assert r["peak_rss_mb"] - r["startup_rss_mb"] < 200
  imp, exp = records
  assert set(imp["phase_s"]) == {"read", "write"} and set(exp["phase_s"]) == {"read", "map", "write"}
  assert exp["round_trip_equal"] is True and exp["round_trip_tensors"] == 52


def test_the_model_is_t5_v1_1_tiny_and_is_reused(tiny):
  workdir, _, _ = tiny
  hf_dir = workdir / "hf" / "tiny"
  config = json.loads((hf_dir / "config.json").read_text())
  assert config["feed_forward_proj"] == "gated-gelu" and config["model_type"] == "t5"
  assert (config["vocab_size"], config["d_model"], config["num_heads"], config["d_kv"], config["d_ff"]) == (
    V,
    D,
    H,
    KV,
    FF,
  )
  assert (config["num_layers"], config["num_decoder_layers"]) == (L, L)
  tensors = load_file(str(hf_dir / "model.safetensors"))
  assert all(t.dtype == np.float32 for t in tensors.values())
  assert not np.array_equal(tensors["lm_head.weight"], tensors["shared.weight"])  # untied
  mtime = os.path.getmtime(hf_dir / "model.safetensors")
  again = bench.build_hf_dir("tiny", str(hf_dir))
  assert again["built"] is False and again["params"] == _tiny_params()
  assert os.path.getmtime(hf_dir / "model.safetensors") == mtime


def test_the_converted_directories_are_kept_with_keep(tiny):
  workdir, _, _ = tiny
  out = workdir / "out" / "tiny"
  assert (out / "t5lite" / "model.gin").is_file()
  assert sorted(os.listdir(out / "hf")) == ["config.json", "model.safetensors"]


def test_compare_safetensors_finds_each_difference(tmp_path):
  a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.ones(4, np.float32)}
  save_file(a, str(tmp_path / "a.safetensors"))
  save_file(dict(a), str(tmp_path / "same.safetensors"))
  assert bench.compare_safetensors(str(tmp_path / "a.safetensors"), str(tmp_path / "same.safetensors"))["equal"]
  cases = {
    "one_ulp": ({"x": a["x"], "y": np.nextafter(a["y"], 2, dtype=np.float32)}, "different", ["y"]),
    "transposed": ({"x": np.ascontiguousarray(a["x"].T), "y": a["y"]}, "different", ["x"]),
    "float16": ({"x": a["x"].astype(np.float16), "y": a["y"]}, "different", ["x"]),
    "dropped": ({"x": a["x"]}, "missing", ["y"]),
    "renamed": ({"x": a["x"], "z": a["y"]}, "unexpected", ["z"]),
  }
  for name, (tensors, field, expected) in cases.items():
    path = str(tmp_path / f"{name}.safetensors")
    save_file(tensors, path)
    check = bench.compare_safetensors(str(tmp_path / "a.safetensors"), path)
    assert check["equal"] is False and check[field] == expected, name
  # -0.0 and 0.0 are equal numbers but not the same bits: a round trip must keep the bits.
  zeros = {"x": a["x"], "y": np.zeros(4, np.float32)}
  save_file(zeros, str(tmp_path / "pz.safetensors"))
  save_file({"x": a["x"], "y": -np.zeros(4, np.float32)}, str(tmp_path / "nz.safetensors"))
  assert bench.compare_safetensors(str(tmp_path / "pz.safetensors"), str(tmp_path / "nz.safetensors"))["different"] == [
    "y"
  ]


def test_bad_sizes_and_a_foreign_model_are_refused(tmp_path):
  with pytest.raises(ValueError, match=r"unknown size\(s\) \['huge'\]; valid: tiny, small, base"):
    bench.parse_sizes("small,huge")
  with pytest.raises(ValueError, match=r"\(none given\)"):
    bench.parse_sizes(" , ")
  assert bench.parse_sizes("tiny, base") == ["tiny", "base"]
  with pytest.raises(ValueError, match="size 'huge'; valid"):
    bench.run(["huge"], str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()  # refused before any work
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text(json.dumps(dict(bench.hf_config_fields("tiny"), d_model=64)))
  save_file({"w": np.zeros(2, np.float32)}, str(hf_dir / "model.safetensors"))
  with pytest.raises(ValueError, match=r"another model than T5 v1.1 tiny .*'d_model': \(64, 128\)"):
    bench.build_hf_dir("tiny", str(hf_dir))


def test_markdown_table():
  common = dict(size="small", params=76_961_152, file_mb=293.6)
  records = [
    dict(common, direction="import", wall_s=12.34, peak_rss_mb=1234.4),
    dict(common, direction="export", wall_s=5.0, peak_rss_mb=987.6),
  ]
  assert bench.markdown_table(records).splitlines()[2] == "| small | 77.0M | 294 | 12.3 | 1234 | 5.0 | 988 |"

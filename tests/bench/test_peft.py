"""t5lite/bench/peft.py: full fine-tuning, LoRA and prompt tuning on the 'tiny' preset.

The counts of every variant come from `--count_only` (abstract shapes, no compile) and are
checked against formulas written from the preset's sizes; one timed run of LoRA r=8 and a
20-token prompt (batch 2, lengths 16 / 8, one step after the warm-up) checks the structure
of the timed lines and that the memory terms add up. No times are asserted.
"""

import json

import pytest

from t5lite.bench import peft as bench

# T5 v1.1 'tiny' (t5.T5_PRESETS): d_model 128, 4 heads of d_kv 32, 2 layers in each stack.
D, HEADS, D_KV, LAYERS = 128, 4, 32, 2
VOCAB = 512  # small, to keep the test fast; no count below depends on it but the totals
# Attention blocks: the encoder's self-attention, the decoder's self- and cross-attention, per layer.
ATTENTIONS = 3 * LAYERS
ARGS = ["--preset", "tiny", "--batch_size", "2", "--inputs_length", "16", "--targets_length", "8"]


def lora_params(r: int) -> int:
  """LoRA on query, key, value (A [d_model, r], B [r, heads, d_kv]) and out (A [heads, d_kv, r], B [r, d_model])."""
  per_kernel = D * r + r * HEADS * D_KV
  return ATTENTIONS * 4 * per_kernel


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
  out = tmp_path_factory.mktemp("peft_bench") / "counts.jsonl"
  assert bench.main([*ARGS, "--vocab_size", str(VOCAB), "--count_only", "--output", str(out)]) == 0
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert lines[0]["part"] == "env" and lines[0]["count_only"] is True
  return {l["variant"]: l for l in lines[1:]}


def test_counts_every_variant(counts):
  assert list(counts) == [v.name for v in bench.VARIANTS]
  assert all(l["status"] == "ok" and l["timed"] is False and "median_step_s" not in l for l in counts.values())


def test_lora_trainable_parameters_are_the_adapters(counts):
  r8, r16 = counts["lora_r8"], counts["lora_r16"]
  assert r8["trainable_params"] == lora_params(8) == 49_152
  assert r16["trainable_params"] == 2 * r8["trainable_params"] == lora_params(16)
  assert r8["lora_alpha"] == 16.0 and r16["lora_alpha"] == 32.0 and r8["lora_targets"] == "attention"
  base = counts["full_adamw"]["total_params"]
  for l in (r8, r16):
    assert l["total_params"] == base + l["trainable_params"]  # the frozen base plus the adapters


def test_prompt_tuning_trains_n_vectors_of_d_model(counts):
  base = counts["full_adafactor"]["total_params"]
  for n in (20, 100):
    l = counts[f"prompt_{n}"]
    assert l["trainable_params"] == n * D and l["prompt_length"] == n
    assert l["total_params"] == base + n * D
    # Adafactor keeps a full second moment v of a [N, 128] prompt (N < 128: not factored), plus its
    # int32 count, the unused float32 scalars v_row and v_col, and the schedule's int32 count.
    assert l["opt_state_bytes"] == 4 * n * D + 16


def test_full_fine_tuning_trains_everything(counts):
  full_af, full_adam = counts["full_adafactor"], counts["full_adamw"]
  for l in (full_af, full_adam):
    assert l["trainable_params"] == l["total_params"] and l["trainable_fraction"] == 1.0
  assert full_af["total_params"] == full_adam["total_params"]
  # AdamW keeps mu and nu (float32) of every parameter, plus two int32 counters.
  assert full_adam["opt_state_bytes"] == 2 * 4 * full_adam["trainable_params"] + 8
  assert full_af["opt_state_bytes"] < full_adam["opt_state_bytes"] / 2  # Adafactor factors its statistics


def test_lora_optimizer_state_is_the_adapters_alone(counts):
  for name in ("lora_r8", "lora_r16"):
    l = counts[name]
    # optax.adamw: ScaleByAdamState(count int32, mu, nu) + ScaleByScheduleState(count int32).
    assert l["opt_state_bytes"] == 2 * 4 * l["trainable_params"] + 8
    # The same optimizer on the whole tiny model (1.3M parameters at this vocabulary) keeps 13x
    # (r=16) to 27x (r=8) more; on 'small' the factor is in the hundreds (docs/performance.md).
    assert l["opt_state_bytes"] * 10 < counts["full_adamw"]["opt_state_bytes"]
  assert counts["lora_r8"]["opt_state_bytes"] == 393_224


@pytest.mark.slow
def test_timed_run(tmp_path):
  out = tmp_path / "timed.jsonl"
  argv = [*ARGS, "--vocab_size", str(VOCAB), "--steps", "1", "--variants", "lora_r8,prompt_20", "--output", str(out)]
  assert bench.main(argv) == 0
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert [l["part"] for l in lines] == ["env", "variant", "variant"]
  assert lines[0]["steps"] == 1 and lines[0]["variants"] == ["lora_r8", "prompt_20"]
  for l in lines[1:]:
    assert l["status"] == "ok" and l["timed"] is True
    assert l["compile_s"] > 0 and l["warmup_step_s"] > 0 and len(l["step_s"]) == 1
    assert l["median_step_s"] == l["step_s"][0] > 0
    assert l["tokens_per_step"] == 2 * (16 + 8)
    assert l["tokens_per_s"] == pytest.approx(l["tokens_per_step"] / l["median_step_s"], rel=1e-2)
    m = l["memory"]  # the CPU backend gives the analysis
    assert l["peak_bytes"] == m["argument"] + m["output"] + m["temp"] - m.get("alias", 0) > 0
    # The donated state is aliased: what stays is at least the parameters once (float32).
    assert m.get("alias", 0) >= 4 * l["total_params"] and l["peak_bytes"] >= 4 * l["total_params"]
  by_name = {l["variant"]: l for l in lines[1:]}
  assert by_name["lora_r8"]["trainable_params"] == lora_params(8)
  assert by_name["prompt_20"]["trainable_params"] == 20 * D


def test_bad_flags_are_refused(capsys):
  for argv, word in (
    (["--variants", "lora_r8,nope"], "nope"),
    (["--steps", "0"], "--steps"),
    (["--batch_size", "0"], "--batch_size"),
  ):
    with pytest.raises(SystemExit) as e:
      bench.parse_args(argv)
    assert e.value.code == 2 and word in capsys.readouterr().err

"""`t5lite convert from-hf` / `to-hf` (t5lite.convert) against transformers' own models.

Each family is a random model built and saved locally (tests/hf/hf_models.py): imported, its logits must equal
transformers' within 1e-4 relative in float32 on a padded batch; exported, transformers must load it with no
missing or unexpected keys and give the same logits; HF -> t5lite -> HF must give every tensor back bit for bit.
"""

import json
import os

import jax
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

from t5lite import checkpointing, cli, convert, inference
from t5lite.hf import configs
from t5lite.models import model as model_lib
from tests.hf import hf_models


def _load(run_dir):
  """(model, params) of a converted directory, through its config.gin and its checkpoint, as a user gets them."""
  model = inference.read_run_config(run_dir)["model"]
  params = checkpointing.load_params(run_dir, convert.abstract_params(model))
  return model, params


def _t5lite_logits(model, params):
  if isinstance(model, model_lib.EncoderDecoderModel):
    return np.asarray(model.module.apply({"params": params}, hf_models.ENCODER_TOKENS, hf_models.DECODER_INPUTS))
  return np.asarray(model.module.apply({"params": params}, hf_models.LM_TOKENS))


FAMILIES = {
  "t5_v1_1": (lambda: hf_models.t5_model("v1_1"), hf_models.t5_logits, hf_models.DECODER_REAL),
  "mt5": (lambda: hf_models.t5_model("mt5", seed=1), hf_models.t5_logits, hf_models.DECODER_REAL),
  "t5_original": (lambda: hf_models.t5_model("original", seed=2), hf_models.t5_logits, hf_models.DECODER_REAL),
  "gpt2": (lambda: hf_models.gpt2_model(seed=3), hf_models.gpt2_logits, hf_models.LM_REAL),
  # Stored with scanned layer stacks (one array per parameter kind with a leading layer axis).
  "gpt2_scanned": (lambda: hf_models.gpt2_model(seed=10), hf_models.gpt2_logits, hf_models.LM_REAL),
  "t5_v1_1_scanned": (lambda: hf_models.t5_model("v1_1", seed=11), hf_models.t5_logits, hf_models.DECODER_REAL),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_export_round_trip(tmp_path, family):
  build, hf_logits, real = FAMILIES[family]
  hf_model = build()
  hf_dir = hf_models.save(hf_model, tmp_path / "hf")
  overrides = {"scan_layers": True} if family.endswith("_scanned") else None
  result = convert.from_hf(hf_dir, str(tmp_path / "t5lite"), overrides=overrides)
  model, params = _load(result["output"])
  assert model.config.scan_layers == bool(overrides)
  reference = hf_logits(hf_model)
  ours = _t5lite_logits(model, params)
  assert ours.shape == reference.shape
  assert hf_models.relative_error(ours, reference, real) < 1e-4

  # The family's distinctive options came through.
  cfg = model.config
  expected = {
    "t5_v1_1": dict(mlp_activations=("gelu", "linear"), logits_via_embedding=False),
    "mt5": dict(mlp_activations=("gelu", "linear"), logits_via_embedding=False),
    "t5_original": dict(mlp_activations=("relu",), logits_via_embedding=True, scale_tied_logits=True),
    "gpt2": dict(norm_type="layernorm", position_embedding="absolute", use_bias=True, max_position_embeddings=24),
  }[family.replace("_scanned", "")]
  assert {k: getattr(cfg, k) for k in expected} == expected

  out_dir = tmp_path / "back"
  convert.to_hf(result["output"], str(out_dir))  # mT5 stays mT5: the model_type comes from conversion.json
  original = load_file(os.path.join(hf_dir, "model.safetensors"))
  exported = load_file(os.path.join(out_dir, "model.safetensors"))
  assert sorted(exported) == sorted(original)
  for name, value in original.items():
    assert exported[name].dtype == value.dtype and np.array_equal(exported[name], value), name

  auto = transformers.AutoModelForCausalLM if family.startswith("gpt2") else transformers.AutoModelForSeq2SeqLM
  exported_config = json.load(open(os.path.join(out_dir, "config.json")))
  if family.startswith("gpt2"):  # GPT-2's default token id 50256 does not exist in a 96-id vocabulary
    assert exported_config["bos_token_id"] is None and exported_config["eos_token_id"] is None
  else:
    assert (exported_config["eos_token_id"], exported_config["decoder_start_token_id"]) == (1, 0)
  reloaded, info = auto.from_pretrained(str(out_dir), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  assert type(reloaded).__name__ == type(hf_model).__name__
  np.testing.assert_array_equal(hf_logits(reloaded.eval()), reference)


def test_sharded_checkpoint_and_bfloat16(tmp_path):
  """Shards named by model.safetensors.index.json are read; a bfloat16 file reads as its float32 values."""
  hf_model = hf_models.t5_model("v1_1", seed=4)
  hf_dir = hf_models.save(hf_model, tmp_path / "hf", max_shard_size="20KB")
  assert os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json"))
  assert (
    len({v for v in json.load(open(os.path.join(hf_dir, "model.safetensors.index.json")))["weight_map"].values()}) > 2
  )
  model, params = _load(convert.from_hf(hf_dir, str(tmp_path / "a"))["output"])
  assert (
    hf_models.relative_error(_t5lite_logits(model, params), hf_models.t5_logits(hf_model), hf_models.DECODER_REAL)
    < 1e-4
  )

  bf16_dir = hf_models.save(hf_model.to(dtype=__import__("torch").bfloat16), tmp_path / "bf16")
  _, bf16_params = _load(convert.from_hf(bf16_dir, str(tmp_path / "b"))["output"])
  embedding = np.asarray(bf16_params["token_embedder"]["embedding"])
  expected = hf_model.shared.weight.detach().float().numpy()
  np.testing.assert_array_equal(embedding, expected)
  assert not np.array_equal(embedding, np.asarray(params["token_embedder"]["embedding"]))  # bf16 rounding shows


def test_greedy_and_beam_decoding_match_transformers(tmp_path):
  """Greedy decoding and beam search (4 beams, no length normalisation on either side: alpha=0 here,
  length_penalty=0 there, so both rank finished hypotheses by their summed log-probability) give the tokens
  transformers' generate gives."""
  hf_model = hf_models.t5_model("v1_1", seed=5, decoder_layers=2)
  model, params = _load(convert.from_hf(hf_models.save(hf_model, tmp_path / "hf"), str(tmp_path / "t"))["output"])
  inputs = hf_models.ENCODER_TOKENS
  import torch

  for method, hf_kwargs in (("greedy", dict(num_beams=1)), ("beam", dict(num_beams=4, length_penalty=0.0))):
    options = model_lib.DecodeOptions(method=method, max_decode_len=7, beam_size=4, alpha=0.0, eos_id=1)
    tokens, _, _ = jax.jit(model.predict_batch, static_argnums=2)(params, inputs, options)
    with torch.no_grad():
      ref = hf_model.generate(
        input_ids=torch.tensor(inputs, dtype=torch.long),
        attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
        max_new_tokens=7,
        do_sample=False,
        early_stopping=True,
        **hf_kwargs,
      ).numpy()[:, 1:]  # HF starts with the decoder start token
    ours = np.asarray(tokens)
    for row in range(len(inputs)):
      theirs = list(ref[row])
      theirs = theirs[: theirs.index(1) + 1] if 1 in theirs else theirs
      mine = list(ours[row][: len(theirs)])
      assert mine == theirs, (method, row, mine, theirs)


def test_bad_input_is_refused_before_writing(tmp_path):
  hf_dir = hf_models.save(hf_models.t5_model("v1_1", seed=6), tmp_path / "hf")
  # No config.json.
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    convert.from_hf(str(empty), str(tmp_path / "o1"))
  # A pickle only.
  (empty / "config.json").write_text(open(os.path.join(hf_dir, "config.json")).read())
  (empty / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match=r"pytorch_model.bin.*save_pretrained\(DIR\)"):
    convert.from_hf(str(empty), str(tmp_path / "o2"))
  # Shapes that disagree with config.json: d_ff 48 -> 40 names a tensor and both shapes.
  cfg = json.load(open(os.path.join(hf_dir, "config.json")))
  json.dump(dict(cfg, d_ff=40), open(os.path.join(hf_dir, "config.json"), "w"))
  with pytest.raises(ValueError, match=r"DenseReluDense\.wi_0\.weight' has shape \[48, 32\].*implies \[40, 32\]"):
    convert.from_hf(hf_dir, str(tmp_path / "o3"))
  json.dump(cfg, open(os.path.join(hf_dir, "config.json"), "w"))
  # An unsupported architecture names what it found and what is supported.
  json.dump(dict(cfg, architectures=["RobertaForMaskedLM"], model_type="roberta"), open(empty / "config.json", "w"))
  with pytest.raises(configs.UnsupportedModelError, match=r"RobertaForMaskedLM.*'roberta'.*BertForMaskedLM"):
    convert.from_hf(str(empty), str(tmp_path / "o4"))
  # A missing shard.
  sharded = hf_models.save(hf_models.t5_model("v1_1", seed=6), tmp_path / "sharded", max_shard_size="20KB")
  shard = sorted(f for f in os.listdir(sharded) if f.endswith(".safetensors"))[1]
  os.remove(os.path.join(sharded, shard))
  with pytest.raises(FileNotFoundError, match=f"shard.*{shard}.*missing"):
    convert.from_hf(sharded, str(tmp_path / "o5"))
  # A truncated safetensors file.
  truncated = tmp_path / "truncated"
  truncated.mkdir()
  (truncated / "config.json").write_text(json.dumps(cfg))
  (truncated / "model.safetensors").write_bytes(open(os.path.join(hf_dir, "model.safetensors"), "rb").read()[:5])
  with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
    convert.from_hf(str(truncated), str(tmp_path / "o6"))
  # An existing non-empty output is never overwritten; nothing half-written is left anywhere.
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="exists and is not empty"):
    convert.from_hf(hf_dir, str(taken))
  assert os.listdir(taken) == ["keep.txt"]
  for n in range(1, 7):
    assert not os.path.exists(tmp_path / f"o{n}")
  assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]
  # The command line reports the error in one line with exit status 2.
  assert cli.main(["convert", "from-hf", "--hf_dir", hf_dir, "--output", str(taken)]) == 2


def test_export_refuses_a_model_without_a_hugging_face_family(tmp_path):
  """t5lite's own decoder-only model (relative position bias, RMSNorm) has no Hugging Face architecture."""
  from t5lite.models import decoder_only

  cfg = decoder_only.decoder_only_config("tiny", num_layers=1, vocab_size=64)
  with pytest.raises(configs.UnsupportedModelError, match="position_embedding='relative' \\(needs 'absolute'\\)"):
    configs.from_t5lite(cfg)


def _read_losses(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["loss"] for r in rows if r["split"] == "train"]


def test_fine_tune_from_an_imported_checkpoint_with_its_spiece_model(tmp_path):
  """The walkthrough of docs/huggingface.md on a small scale: a T5 directory with its own spiece.model is
  converted, fine-tuned on synthetic_reverse with VOCABULARY_MODEL set to that model (loss falls), and a
  vocabulary of another size is refused before the first step, naming both sizes. The raw Hugging Face
  directory works as INITIAL_CHECKPOINT_PATH too, with the same first-step loss."""
  import t5lite_tasks  # noqa: F401  (registers synthetic_reverse)
  from t5lite import train as train_lib
  from t5lite.data import vocab as vocab_lib
  from t5lite.optim import schedules
  from tests.data.conftest import TOPIC_TEXTS

  pieces = 300
  hf_model = hf_models.t5_model("v1_1", seed=8, vocab_size=pieces + 100 + 12)  # padded past the 400 ids
  hf_dir = hf_models.save(hf_model, tmp_path / "hf")
  vocab_lib.train_sentencepiece(
    TOPIC_TEXTS, os.path.join(hf_dir, "spiece.model"), vocab_size=pieces, byte_fallback=False
  )
  result = convert.from_hf(hf_dir, str(tmp_path / "converted"))
  assert result["vocabulary_size"] == pieces + 100
  converted = result["output"]
  assert os.path.isfile(os.path.join(converted, "spiece.model"))
  model = inference.read_run_config(converted)["model"]
  common = dict(
    model=model,
    mixture_or_task_name="synthetic_reverse",
    task_feature_lengths={"inputs": 32, "targets": 16},
    batch_size=8,
    summary_every=1,
    checkpoint_every=100,
    learning_rate=schedules.constant(0.003),
    progress=False,
  )
  try:
    other = vocab_lib.train_sentencepiece(
      TOPIC_TEXTS, str(tmp_path / "other.model"), vocab_size=280, byte_fallback=False
    )
    with pytest.raises(ValueError, match=r"(?s)(400.*380|380.*400)"):
      train_lib.train(
        model_dir=str(tmp_path / "refused"),
        train_steps=2,
        initial_checkpoint_path=converted,
        vocabulary_model=other,
        **common,
      )
    # The walkthrough's command line: the converted model.gin, runs/finetune.gin, its checkpoint and vocabulary.
    argv = [
      f"--gin_file={converted}/model.gin",
      "--gin_file=runs/finetune.gin",
      f"--gin.INITIAL_CHECKPOINT_PATH='{converted}'",
      f"--gin.VOCABULARY_MODEL='{converted}/spiece.model'",
      "--gin.MIXTURE_OR_TASK_NAME='synthetic_reverse'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}",
      "--gin.TRAIN_STEPS=12",
      "--gin.BATCH_SIZE=8",
      "--gin.LEARNING_RATE=0.003",
      "--gin.SUMMARY_EVERY=1",
      "--gin.COMPILATION_CACHE_DIR='none'",
      f"--gin.MODEL_DIR='{tmp_path / 'ft'}'",
    ]
    assert train_lib.main(argv) == 0
    losses = _read_losses(tmp_path / "ft")
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    train_lib.train(
      model_dir=str(tmp_path / "ft_raw"),
      train_steps=1,
      initial_checkpoint_path=hf_dir,
      vocabulary_model=os.path.join(converted, "spiece.model"),
      **common,
    )
    assert _read_losses(tmp_path / "ft_raw")[0] == pytest.approx(losses[0], rel=1e-6)

    # The converted directory decodes as it is: inference.load and `t5lite infer` on its config.gin, with no
    # task, use its spiece.model.
    predictor = inference.load(converted, batch_size=8)
    assert predictor.vocabulary.vocab_size == pieces + 100
    assert len(predictor.predict(["reverse: a b c"])) == 1
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"inputs": "reverse: x y"}) + "\n")
    from t5lite import infer as infer_lib

    argv = [
      f"--gin_file={converted}/config.gin",
      "--gin_file=runs/infer.gin",
      f"--gin.INFER_INPUT_FILE='{inputs}'",
      f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'infer'}'",
    ]
    assert infer_lib.main(argv) == 0
    rows = [json.loads(line) for f in sorted((tmp_path / "infer").glob("*.jsonl-*")) for line in open(f)]
    assert rows[0]["inputs"] == "reverse: x y" and rows[0]["prediction"] and rows[-1]["checkpoint_step"] == 0

    # The fine-tuned run exports with its vocabulary (its VOCABULARY_MODEL) next to the weights.
    exported = tmp_path / "ft_hf"
    convert.to_hf(str(tmp_path / "ft"), str(exported))
    assert open(exported / "spiece.model", "rb").read() == open(os.path.join(hf_dir, "spiece.model"), "rb").read()
  finally:
    vocab_lib.use_model_file(None)


def test_gpt2_kv_cache_greedy_decoding_matches_transformers(tmp_path):
  """An imported GPT-2 decodes from its KV cache (learned absolute positions) as transformers' generate does.
  t5lite's decoder-only models start every sequence with id 0 (seqio's LM feature converter shifts right), so
  transformers gets the prompt with a leading 0; a short prompt is padded on the right in t5lite's batch (the
  prefill right-aligns it and gives its real tokens positions 0, 1, ...), and unpadded in transformers'."""
  import torch

  hf_model = hf_models.gpt2_model(seed=9)
  model, params = _load(convert.from_hf(hf_models.save(hf_model, tmp_path / "hf"), str(tmp_path / "t"))["output"])
  prompts = np.array([[5, 6, 7, 8, 9], [11, 12, 13, 0, 0]], np.int32)
  options = model_lib.DecodeOptions(method="greedy", max_decode_len=8, eos_id=-1)
  tokens, _, _ = jax.jit(model.predict_batch, static_argnums=2)(params, prompts, options)
  for row, prompt in enumerate(prompts):
    prompt = [0] + [int(t) for t in prompt if t]
    with torch.no_grad():
      ref = hf_model.generate(
        input_ids=torch.tensor([prompt], dtype=torch.long),
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=hf_models.VOCAB - 1,
      ).numpy()[0, len(prompt) :]
    assert np.asarray(tokens)[row].tolist() == ref.tolist()

"""Hugging Face BERT import and export (t5lite.hf.bert, `t5lite convert from-hf` / `to-hf`) against transformers.

Random BERT models built locally (tests/hf/hf_models.py, every weight moved off its initial value) are imported:
logits (hidden states and pooled output for BertModel) equal transformers' within 1e-4 relative in float32 on a
padded batch of sentence pairs with token types. Exported back, every tensor is the original bit for bit and
transformers loads the directory with no missing or unexpected keys. A t5lite-initialised encoder-only model,
exported, gives transformers' logits. What BERT options t5lite cannot express are refused by name.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

from t5lite import checkpointing, cli, convert, inference
from t5lite.hf import configs, weights
from t5lite.models import encoder_model, encoder_only
from tests.hf import hf_models

TOKENS, TYPES, REAL = hf_models.BERT_TOKENS, hf_models.BERT_TYPES, hf_models.BERT_REAL


def _load(run_dir):
  model = inference.read_run_config(run_dir)["model"]
  return model, checkpointing.load_params(run_dir, convert.abstract_params(model))


def _encode_and_pool(module, tokens, types):
  x = module.encode(tokens, types)
  return x, jnp.tanh(module.pooler(x[:, 0]))


def _ours(model, params, kind, types=TYPES):
  """t5lite's outputs in the shape of hf_models.bert_outputs."""
  tokens = jnp.asarray(TOKENS)
  types = None if types is None else jnp.asarray(types)
  if kind == "base":
    return tuple(np.asarray(a) for a in model.module.apply({"params": params}, tokens, types, method=_encode_and_pool))
  logits = np.asarray(model.module.apply({"params": params}, tokens, types))
  return (logits[:, None] if kind == "regression" else logits,)


def _errors(ours, theirs, kind):
  """The relative error of each output over its real positions (every row for pooled / classifier outputs)."""
  out = []
  for a, b in zip(ours, theirs):
    real = REAL if a.ndim == 3 else np.ones(a.shape[:1], bool)
    out.append(hf_models.relative_error(a, b, real))
  return out


EXPECTED = {  # kind -> (t5lite head, num_classes, exported architecture)
  "mlm": ("mlm", 2, "BertForMaskedLM"),
  "classification": ("classification", 3, "BertForSequenceClassification"),
  "regression": ("regression", 2, "BertForSequenceClassification"),
  "base": ("classification", 2, "BertModel"),
}


@pytest.mark.parametrize("kind", ["mlm", "classification", "regression", "base", "mlm_scanned"])
def test_import_export_round_trip(tmp_path, kind):
  scanned = kind.endswith("_scanned")
  kind = kind.replace("_scanned", "")
  hf_model = hf_models.bert_model(kind, seed=len(kind))
  hf_dir = hf_models.save(hf_model, tmp_path / "hf")
  result = convert.from_hf(hf_dir, str(tmp_path / "t5lite"), overrides={"scan_layers": True} if scanned else None)
  model, params = _load(result["output"])
  head, classes, architecture = EXPECTED[kind]
  assert isinstance(model, encoder_model.EncoderOnlyModel) and (model.head, model.num_classes) == (head, classes)
  cfg = model.config
  assert (cfg.norm_placement, cfg.mlp_activations, cfg.type_vocab_size, cfg.max_position_embeddings) == (
    "post",
    ("gelu_exact",),
    2,
    16,
  )
  assert (cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.layer_norm_epsilon, cfg.scan_layers) == (8, 40, 2, 1e-12, scanned)
  reference = hf_models.bert_outputs(hf_model)
  errors = _errors(_ours(model, params, kind), reference, kind)
  assert max(errors) < 1e-4, errors
  # Token types derived from the first [SEP] (id 3, the default sep_id) give the same outputs on real tokens.
  assert max(_errors(_ours(model, params, kind, types=None), reference, kind)) < 1e-4
  if kind == "base":
    assert any("BertModel has no classifier" in w for w in result["warnings"])

  out_dir = tmp_path / "back"
  convert.to_hf(result["output"], str(out_dir))
  original = load_file(os.path.join(hf_dir, "model.safetensors"))
  exported = load_file(os.path.join(out_dir, "model.safetensors"))
  assert sorted(exported) == sorted(original)
  for name, value in original.items():
    assert np.array_equal(exported[name], value), name
  config = json.load(open(out_dir / "config.json"))
  assert config["architectures"] == [architecture]
  reloaded, info = getattr(transformers, architecture).from_pretrained(str(out_dir), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  assert reloaded.config.num_labels == hf_model.config.num_labels
  for a, b in zip(hf_models.bert_outputs(reloaded.eval()), reference):  # the same weights (torch may round
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # in another order in another process state)


def _run_dir(path, model, params):
  """A t5lite run directory (config.gin, checkpoints/0) of a model and its parameters, as training writes one."""
  os.makedirs(path)
  meta = {"step": 0, "param_shapes": checkpointing.param_shapes(params)}
  convert.save_checkpoint(str(path), params, meta)
  gin = convert.model_gin(model.config, "test", model.head, model.num_classes)
  lengths = {"inputs": 16, "targets": 16}
  text = f"{gin}\nMODEL_DIR = {str(path)!r}\nMIXTURE_OR_TASK_NAME = None\nTASK_FEATURE_LENGTHS = {lengths!r}\n"
  (path / "config.gin").write_text(text)
  return str(path)


@pytest.mark.parametrize("head", ["mlm", "classification"])
def test_a_t5lite_initialised_model_matches_transformers(tmp_path, head):
  """t5lite's own encoder-only model (post-LayerNorm, exact GELU, biases, token types, tied MLM output),
  initialised by t5lite ('mlm': exactly as initialised; 'classification': every weight then moved, biases
  and norm parameters included), exported with `t5lite convert to-hf`: transformers gives its logits."""
  cfg = encoder_only.encoder_only_config(
    "bert_tiny", vocab_size=96, d_model=32, num_heads=4, d_kv=8, d_ff=48, max_position_embeddings=16, dropout_rate=0.0
  )
  model = encoder_model.EncoderOnlyModel(config=cfg, head=head, num_classes=4)
  params = model.init_params(jax.random.key(3), model.input_shapes(1, {"inputs": 16, "targets": 16}))
  if head == "classification":
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda x: np.asarray(x) + rng.normal(0, 0.2, x.shape).astype(np.float32), params)
  run = _run_dir(tmp_path / "run", model, params)
  assert cli.main(["convert", "to-hf", "--checkpoint", run, "--output", str(tmp_path / "hf")]) == 0
  cls = transformers.BertForMaskedLM if head == "mlm" else transformers.BertForSequenceClassification
  reloaded, info = cls.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert reloaded.config.num_labels == (4 if head == "classification" else 2)
  (theirs,) = hf_models.bert_outputs(reloaded.eval())
  (ours,) = _ours(model, params, head)
  assert hf_models.relative_error(ours, theirs, REAL if head == "mlm" else np.ones(2, bool)) < 1e-4
  # And back with `t5lite convert from-hf`: the same model and every parameter bit for bit.
  assert cli.main(["convert", "from-hf", "--hf_dir", str(tmp_path / "hf"), "--output", str(tmp_path / "back")]) == 0
  back, back_params = _load(str(tmp_path / "back"))
  assert (back.config, back.head) == (model.config, model.head)
  assert head == "mlm" or back.num_classes == 4
  for a, b in zip(jax.tree.leaves(back_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_older_files_and_the_vocabulary(tmp_path):
  """A file as the published BERT checkpoints are (BertForPreTraining's tensors: LayerNorm gamma / beta, the
  decoder's tied copies, the pooler, the next-sentence head and the position_ids buffer) imports as the MLM
  model with the same logits, naming what it leaves out. Its vocab.txt gives sep_id, is copied into the run and
  back out by to-hf."""
  hf_model = hf_models.bert_model("mlm", seed=5)
  hf_dir = hf_models.save(hf_model, tmp_path / "hf")
  tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
  old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
         for k, v in tensors.items()}  # fmt: skip
  rng = np.random.default_rng(0)
  old["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
  old["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
  old["bert.pooler.dense.weight"] = rng.normal(size=(24, 24)).astype(np.float32)
  old["bert.pooler.dense.bias"] = np.zeros(24, np.float32)
  old["cls.seq_relationship.weight"] = rng.normal(size=(2, 24)).astype(np.float32)
  old["cls.seq_relationship.bias"] = np.zeros(2, np.float32)
  old["bert.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
  save_file(old, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
  config = json.load(open(os.path.join(hf_dir, "config.json")))
  json.dump(dict(config, architectures=["BertForPreTraining"]), open(os.path.join(hf_dir, "config.json"), "w"))
  words = ["[PAD]", "[UNK]", "[CLS]", "[MASK]", "a", "b", "c", "[SEP]"] + [f"w{i}" for i in range(60)]
  (tmp_path / "hf" / "vocab.txt").write_text("\n".join(words) + "\n")

  result = convert.from_hf(hf_dir, str(tmp_path / "t5lite"))
  assert any("bert.pooler.dense" in w and "cls.seq_relationship" in w for w in result["warnings"])
  assert result["vocabulary_files"] == ["vocab.txt"]
  model, params = _load(result["output"])
  assert model.head == "mlm" and model.config.sep_id == 7
  (ours,) = _ours(model, params, "mlm")
  assert hf_models.relative_error(ours, hf_models.bert_outputs(hf_model)[0], REAL) < 1e-4
  assert (tmp_path / "t5lite" / "vocab.txt").read_text() == (tmp_path / "hf" / "vocab.txt").read_text()
  convert.to_hf(result["output"], str(tmp_path / "back"))
  assert (tmp_path / "back" / "vocab.txt").read_text() == (tmp_path / "hf" / "vocab.txt").read_text()
  assert json.load(open(tmp_path / "back" / "config.json"))["sep_token_id"] == 7

  # A decoder that is not the word embedding is refused: t5lite ties the MLM output.
  untied = dict(old, **{"cls.predictions.decoder.weight": old["cls.predictions.decoder.weight"] + 1})
  save_file(untied, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(configs.UnsupportedModelError, match="cls.predictions.decoder.weight differs"):
    convert.from_hf(hf_dir, str(tmp_path / "untied"))
  assert not (tmp_path / "untied").exists()


BERT_JSON = dict(
  architectures=["BertForMaskedLM"],
  model_type="bert",
  vocab_size=64,
  hidden_size=16,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=32,
  max_position_embeddings=32,
  type_vocab_size=2,
  hidden_act="gelu",
  hidden_dropout_prob=0.1,
  attention_probs_dropout_prob=0.1,
  layer_norm_eps=1e-12,
  pad_token_id=0,
)


def test_config_mapping():
  cfg = configs.to_t5lite(dict(BERT_JSON, hidden_act="gelu_new", classifier_dropout=0.3), tied_output=True)
  assert isinstance(cfg, encoder_only.EncoderOnlyConfig)
  assert (cfg.mlp_activations, cfg.classifier_dropout_rate, cfg.dropout_rate, cfg.d_kv) == (("gelu",), 0.3, 0.1, 8)
  back = configs.from_t5lite(cfg, head="classification", num_classes=5)
  assert back["hidden_act"] == "gelu_new" and len(back["id2label"]) == 5
  assert back["problem_type"] == "single_label_classification"
  assert configs.to_t5lite(back, tied_output=True) == cfg
  assert configs.bert_head(back) == ("classification", 5)
  assert configs.bert_head(dict(back, id2label={"0": "score"}, problem_type="regression")) == ("regression", 2)
  assert configs.bert_head(dict(BERT_JSON, architectures=["BertModel"])) == ("pooler", 2)
  assert configs.bert_head(dict(BERT_JSON, architectures=None)) == ("mlm", 2)  # model_type 'bert' alone
  assert configs.bert_dropout_warning(BERT_JSON) is None
  warning = configs.bert_dropout_warning(dict(BERT_JSON, attention_probs_dropout_prob=0.2))
  assert "hidden_dropout_prob=0.1 and attention_probs_dropout_prob=0.2 differ" in warning


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(position_embedding_type="relative_key"), "position_embedding_type='relative_key' is not supported"),
    (dict(is_decoder=True), "is_decoder=True is not supported"),
    (dict(add_cross_attention=True), "add_cross_attention=True is not supported"),
    (dict(pad_token_id=1), "pad_token_id=1 is not supported: t5lite's padding id is 0"),
    (dict(hidden_act="tanh"), "activation 'tanh' is not supported"),
    (dict(hidden_size=17), "hidden_size=17 is not divisible by num_attention_heads=2"),
  ],
)
def test_options_t5lite_cannot_express_are_refused(change, message):
  with pytest.raises(configs.UnsupportedModelError, match=message):
    configs.to_t5lite(dict(BERT_JSON, **change), tied_output=True)


def test_multi_label_and_unexportable_models_are_refused(tmp_path):
  multi = dict(BERT_JSON, architectures=["BertForSequenceClassification"], problem_type="multi_label_classification")
  with pytest.raises(configs.UnsupportedModelError, match="problem_type='multi_label_classification'"):
    configs.bert_head(multi)
  hf_dir = hf_models.save(hf_models.bert_model("classification", problem_type="multi_label_classification"), tmp_path)
  with pytest.raises(configs.UnsupportedModelError, match="multi_label_classification"):
    convert.from_hf(hf_dir, str(tmp_path / "out"))
  pre = encoder_only.encoder_only_config("bert_tiny", vocab_size=64, norm_placement="pre", type_vocab_size=0)
  with pytest.raises(configs.UnsupportedModelError, match=r"norm_placement='pre' \(needs 'post'\).*type_vocab_size=0"):
    configs.from_t5lite(pre)
  # A run built for another head than the checkpoint's names the tensors it lacks.
  mlm_dir = hf_models.save(hf_models.bert_model("mlm"), tmp_path / "mlm")
  mlm_config = configs.to_t5lite(json.load(open(os.path.join(mlm_dir, "config.json"))), tied_output=True)
  classifier = encoder_model.EncoderOnlyModel(config=mlm_config, head="regression")
  with pytest.raises(ValueError, match="pooler"):
    weights.import_directory(mlm_dir, classifier.config, convert.abstract_params(classifier))

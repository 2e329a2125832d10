"""Parameter-efficient fine-tuning end to end: LoRA and prompt tuning runs on a frozen base
(t5lite/models/peft.py, trainer.py, train_state.py, checkpointing.py, merge.py).

Real parts: a seqio task, orbax checkpoints, gin-free train.train calls. The
base is a tiny model pretrained for a few steps once per module; each
adapter run starts from it.
"""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio

from t5lite import checkpointing, features, inference, partitioning, train as train_lib
from t5lite.data import registration
from t5lite.models import lora, model as model_lib, peft, prompt_tuning, t5
from t5lite.optim import schedules
from tests.data.conftest import TOPIC_TEXTS, make_source

LENGTHS = {"inputs": 32, "targets": 16}
TINY = dict(vocab_size=384, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=2, num_decoder_layers=1)


@pytest.fixture(scope="module", autouse=True)
def byte_task():
  registration.register_pretraining_tasks("tpeft", make_source(TOPIC_TEXTS), seqio.ByteVocabulary(extra_ids=100))


def tiny_model(**overrides):
  return model_lib.EncoderDecoderModel(config=t5.T5Config(**{**TINY, **overrides}))


def run(model_dir, steps, *, model=None, **kwargs):
  args = dict(
    model=model or tiny_model(),
    model_dir=str(model_dir),
    mixture_or_task_name="tpeft_prefix_lm",
    task_feature_lengths=LENGTHS,
    train_steps=steps,
    batch_size=8,
    summary_every=1,
    checkpoint_every=4,
    learning_rate=schedules.constant(0.01),
    progress=False,
  )
  args.update(kwargs)
  return train_lib.train(**args)


def read_losses(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  """A tiny model pretrained for 8 steps (span corruption): the base every adapter run starts from."""
  path = tmp_path_factory.mktemp("base")
  run(path, 8, mixture_or_task_name="tpeft_span_corruption", checkpoint_every=8)
  return str(path)


def base_params(base_dir, model=None):
  model = model or tiny_model()
  abstract = jax.eval_shape(lambda: model.init_params(jax.random.key(0), model.input_shapes(8, LENGTHS)))
  return checkpointing.load_params(base_dir, abstract)


def adapter_model(**lora_kwargs):
  return tiny_model(lora=lora.LoraConfig(**{"rank": 4, "alpha": 6.0, **lora_kwargs}))


def test_lora_run_trains_only_adapters_and_its_checkpoints_name_the_base(tmp_path, base_dir):
  """On a data x fsdp x model mesh: the adapters shard like their kernels and training equals one device."""
  model = adapter_model(targets="all", dropout_rate=0.1)
  mesh = partitioning.Partitioner(2, 2, 2, num_devices=8)
  run(tmp_path / "lora", 8, model=model, initial_checkpoint_path=base_dir, optimizer=optax.adam, partitioner=mesh)
  one = partitioning.Partitioner(1, 1, 1, num_devices=1)
  run(tmp_path / "one", 4, model=model, initial_checkpoint_path=base_dir, optimizer=optax.adam, partitioner=one)
  np.testing.assert_allclose(read_losses(tmp_path / "lora")[:4], read_losses(tmp_path / "one"), rtol=2e-5)
  with open(tmp_path / "lora" / "model-info.txt") as f:
    info = dict(line.split("  ", 1) for line in f.read().splitlines() if line.startswith(("encoder/", "decoder/")))
  spec = lambda name: info[name].rsplit("  ", 1)[1]  # noqa: E731
  assert spec("encoder/layers_0/self_attention/query") == "P('fsdp', 'model', None)"
  assert spec("encoder/layers_0/self_attention/query_lora_a") == "P('fsdp', None)"
  assert spec("encoder/layers_0/self_attention/query_lora_b") == "P(None, 'model', None)"
  assert spec("decoder/layers_0/mlp/wo_lora_a") == "P('model', None)"
  assert spec("decoder/layers_0/mlp/wo_lora_b") == "P(None, 'fsdp')"
  ckpt_dir = tmp_path / "lora" / "checkpoints"
  meta = checkpointing.read_checkpoint_meta(str(ckpt_dir))
  assert meta["base_checkpoint"] == {"path": os.path.join(base_dir, "checkpoints", "8"), "step": 8}
  # The checkpoint holds the adapters and nothing else.
  assert meta["param_shapes"] and all(lora.is_adapter(k.rsplit("/", 1)[1]) for k in meta["param_shapes"])
  # 2 stacks x (attention + MLP) kernels: encoder 2 layers x (4 + 3), decoder 1 layer x (8 + 3), two matrices each.
  assert len(meta["param_shapes"]) == 2 * (2 * 7 + 11)
  shapes = model.input_shapes(8, LENGTHS)
  abstract = jax.eval_shape(lambda: model.init_params(jax.random.key(0), shapes))
  params = checkpointing.load_params(str(tmp_path / "lora"), abstract)
  # The base is bit-identical to the checkpoint it came from; the adapters moved (B from zero).
  base = base_params(base_dir)
  for a, b in zip(jax.tree.leaves(peft.frozen(params)), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(peft.frozen(params)) == jax.tree.structure(base)
  b_norm = sum(
    float(jnp.sum(x**2))
    for p, x in jax.tree_util.tree_leaves_with_path(peft.trainable(params))
    if str(p[-1].key).endswith("_lora_b")
  )
  assert b_norm > 1e-6
  # The optimizer state: Adam's two moments of the adapters and two step counts (Adam's, the schedule's),
  # nothing for the base: the bytes of the same optimizer's state over the adapters alone.
  ckpt = checkpointing.Checkpointer(str(ckpt_dir))
  saved_opt = ckpt._manager.item_metadata(8)["opt_state"]
  saved_opt = getattr(saved_opt, "tree", saved_opt)
  opt_bytes = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(saved_opt))
  adapter_bytes = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(peft.trainable(params)))
  alone = jax.eval_shape(optax.adam(schedules.constant(0.01)).init, peft.trainable(params))
  assert opt_bytes == 2 * adapter_bytes + 8 == sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(alone))
  ckpt.close()
  # Restored for serving onto another mesh (fsdp 4 x model 2): base + adapters placed like their kernels, values kept.
  other = partitioning.Partitioner(1, 4, 2, num_devices=8)
  served = inference.Predictor.restore(model, str(tmp_path / "lora"), partitioner=other, batch_size=8).params
  attn = served["encoder"]["layers_0"]["self_attention"]
  assert attn["query"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "model", None)
  assert attn["query_lora_a"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  assert attn["query_lora_b"].sharding.spec == jax.sharding.PartitionSpec(None, "model", None)
  for a, b in zip(jax.tree.leaves(served), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_lora_resume_is_exact_and_prediction_loads_base_and_adapters(tmp_path, base_dir):
  model = adapter_model(dropout_rate=0.1)
  run(tmp_path / "full", 8, model=model, initial_checkpoint_path=base_dir)
  run(tmp_path / "split", 4, model=model, initial_checkpoint_path=base_dir)
  run(tmp_path / "split", 8, model=model, initial_checkpoint_path=base_dir)
  assert read_losses(tmp_path / "split") == read_losses(tmp_path / "full")
  # Inference reads base + adapters; the adapted model decodes like the base model on the merged kernels.
  shapes = model.input_shapes(2, LENGTHS)
  abstract = jax.eval_shape(lambda: model.init_params(jax.random.key(0), shapes))
  params = checkpointing.load_params(str(tmp_path / "full"), abstract)
  merged = lora.merge(params, model.config.lora)
  base_model = tiny_model()
  batch = {
    "encoder_input_tokens": jnp.asarray(np.random.default_rng(0).integers(3, 300, (2, 32)), jnp.int32),
    "decoder_input_tokens": jnp.asarray(np.random.default_rng(1).integers(3, 300, (2, 16)), jnp.int32),
  }
  adapted = model.logits(params, batch)
  np.testing.assert_allclose(base_model.logits(merged, batch), adapted, atol=1e-5, rtol=1e-5)
  assert float(jnp.max(jnp.abs(base_model.logits(peft.frozen(params), batch) - adapted))) > 1e-3
  predictor = inference.Predictor.restore(
    model, str(tmp_path / "full"), partitioner=partitioning.Partitioner(num_devices=1), batch_size=2
  )
  tokens, _ = predictor.predict_tokens(np.asarray(batch["encoder_input_tokens"]))
  want = base_model.predict_batch(merged, batch["encoder_input_tokens"], predictor.options)[0]
  np.testing.assert_array_equal(tokens, np.asarray(want))


def test_lora_run_refuses_bad_bases_before_any_step(tmp_path, base_dir):
  with pytest.raises(ValueError, match="INITIAL_CHECKPOINT_PATH is None"):
    run(tmp_path / "none", 2, model=adapter_model())
  assert not os.path.exists(tmp_path / "none")  # refused before the data or the run directory
  other = tiny_model(d_ff=96, lora=lora.LoraConfig(rank=4))  # adapters for a model with a wider MLP than the base
  with pytest.raises(
    ValueError, match=r"another model shape: .*mlp/wi_0: checkpoint \[32, 64\], this model \[32, 96\]"
  ):
    run(tmp_path / "other", 2, model=other, initial_checkpoint_path=base_dir)
  assert not os.path.exists(tmp_path / "other" / "checkpoints") or not os.listdir(tmp_path / "other" / "checkpoints")
  # An adapter checkpoint read by a model without adapters says what it is and what to do.
  run(tmp_path / "lora", 4, model=adapter_model(), initial_checkpoint_path=base_dir)
  plain = tiny_model()
  abstract = jax.eval_shape(lambda: plain.init_params(jax.random.key(0), plain.input_shapes(8, LENGTHS)))
  with pytest.raises(ValueError, match="holds LoRA / prompt-tuning adapters .*t5lite lora merge"):
    checkpointing.load_params(str(tmp_path / "lora"), abstract)


def test_several_adapters_of_one_base_are_served_in_turn(tmp_path, base_dir):
  """Predictor.use_adapters swaps one run's adapters for another's on the same base without compiling again."""
  import shutil

  model = adapter_model(targets="all")
  run(tmp_path / "lora", 8, model=model, initial_checkpoint_path=base_dir)  # adapters at steps 4 and 8
  one = partitioning.Partitioner(num_devices=1)
  rng = np.random.default_rng(3)
  feats = features.enc_dec_features(rng.integers(3, 300, (4, 32)), rng.integers(3, 300, (4, 16)))
  inputs = feats["encoder_input_tokens"]
  at = {
    s: inference.Predictor.restore(model, str(tmp_path / "lora"), step=s, partitioner=one, batch_size=4) for s in (4, 8)
  }
  want = {s: (p.score_examples(feats), p.predict_tokens(inputs)[0]) for s, p in at.items()}
  assert np.max(np.abs(want[4][0] - want[8][0])) > 1e-3  # the two checkpoints' adapters differ
  served = at[8]
  compiled = dict(served._compiled)
  for step in (4, 8, 4):
    assert served.use_adapters(str(tmp_path / "lora"), step=step) is served and served.step == step
    np.testing.assert_array_equal(served.score_examples(feats), want[step][0])
    np.testing.assert_array_equal(served.predict_tokens(inputs)[0], want[step][1])
  assert served._compiled.keys() == compiled.keys() and all(served._compiled[k] is v for k, v in compiled.items())
  # Refused: adapters trained on another base (a copy at another path), a whole model, other adapters.
  shutil.copytree(base_dir, tmp_path / "base_copy")
  run(tmp_path / "other_base", 2, model=model, initial_checkpoint_path=str(tmp_path / "base_copy"), checkpoint_every=2)
  with pytest.raises(
    ValueError,
    match=r"holds adapters of the base .*base_copy.* but this model serves the base .*base.*checkpoints/8 \(step 8\)",
  ):
    served.use_adapters(str(tmp_path / "other_base"))
  with pytest.raises(ValueError, match="holds a whole model, not LoRA / prompt-tuning adapters"):
    served.use_adapters(base_dir)
  # The same shapes under another alpha would scale the adapters wrongly: the meta records alpha.
  run(
    tmp_path / "alpha",
    2,
    model=adapter_model(targets="all", alpha=2.0),
    initial_checkpoint_path=base_dir,
    checkpoint_every=2,
  )
  assert checkpointing.read_checkpoint_meta(str(tmp_path / "alpha"))["adapters"] == {
    "lora": {"rank": 4, "alpha": 2.0},
    "prompt_tuning": None,
  }
  with pytest.raises(
    ValueError, match=r"holds LoRA adapters \(rank 4, alpha 2.0\), this model has LoRA adapters \(rank 4, alpha 6.0\)"
  ):
    served.use_adapters(str(tmp_path / "alpha"))
  assert served.step == 4  # nothing changed by a refused swap
  np.testing.assert_array_equal(served.score_examples(feats), want[4][0])
  rank2 = adapter_model(targets="all", rank=2)
  abstract = jax.eval_shape(
    lambda: peft.trainable(rank2.init_params(jax.random.key(0), rank2.input_shapes(4, LENGTHS)))
  )
  with pytest.raises(
    ValueError, match=r"other adapters than this model's: .*lora_a: checkpoint \[32, 4\], this model \[32, 2\]"
  ):
    checkpointing.load_adapters(str(tmp_path / "lora"), abstract)
  plain = inference.Predictor.restore(tiny_model(), base_dir, partitioner=one, batch_size=4)
  with pytest.raises(ValueError, match="serves a model without adapters; inference.load a LoRA or prompt-tuning run"):
    plain.use_adapters(str(tmp_path / "lora"))
  with pytest.raises(ValueError, match=r"step='4' must be None or an integer >= 0, not a string"):
    served.use_adapters(str(tmp_path / "lora"), step="4")
  assert served.adapters_path == str(tmp_path / "lora" / "checkpoints" / "4")


def _gin_flags(model_dir, base_dir, *extra):
  sizes = [f"--gin.t5.T5Config.{k}={v}" for k, v in TINY.items()]
  return [
    "--gin_file=models/t5_1_1/tiny.gin",
    "--gin_file=runs/finetune_lora.gin",
    *sizes,
    f"--gin.MODEL_DIR='{model_dir}'",
    f"--gin.INITIAL_CHECKPOINT_PATH='{base_dir}'",
    "--gin.MIXTURE_OR_TASK_NAME='tpeft_prefix_lm'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}",
    "--gin.TRAIN_STEPS=3",
    "--gin.BATCH_SIZE=8",
    "--gin.NUM_DEVICES=1",
    "--gin.LORA_RANK=2",
    "--gin.LORA_TARGETS='decoder/.*/(query|value)$'",
    "--gin.LEARNING_RATE=0.05",
    "--gin.train_lib.train.progress=False",
    *extra,
  ]


def test_gin_lora_run_merges_into_a_plain_run_and_exports_merged(tmp_path, base_dir, caplog):
  from safetensors.numpy import load_file

  from t5lite import cli, convert

  model_dir = tmp_path / "lora"
  assert train_lib.main(_gin_flags(model_dir, base_dir)) == 0
  meta = checkpointing.read_checkpoint_meta(str(model_dir))
  # The regular expression picked the decoder's query and value kernels (self- and cross-attention) only.
  assert sorted(meta["param_shapes"]) == [
    f"decoder/layers_0/{a}/{k}_lora_{m}"
    for a in ("encoder_decoder_attention", "self_attention")
    for k in ("query", "value")
    for m in ("a", "b")
  ]
  assert cli.main(["lora", "merge", "--checkpoint", str(model_dir), "--output", str(tmp_path / "merged")]) == 0
  run_cfg = inference.read_run_config(str(tmp_path / "merged"))
  import gin

  assert gin.query_parameter("%MODEL_DIR") == str(tmp_path / "merged")  # infer.gin's CHECKPOINT_PATH follows it
  assert run_cfg["model"].config.lora is None and run_cfg["model"].config == tiny_model().config
  with open(tmp_path / "merged" / "merge.json") as f:
    assert json.load(f)["base"]["path"] == os.path.join(base_dir, "checkpoints", "8")
  # The merged run (plain model) predicts like the LoRA run (base + adapters).
  one = partitioning.Partitioner(num_devices=1)
  lora_model = inference.read_run_config(str(model_dir))["model"]
  batch = {
    "encoder_input_tokens": jnp.asarray(np.random.default_rng(2).integers(3, 300, (2, 32)), jnp.int32),
    "decoder_input_tokens": jnp.asarray(np.random.default_rng(3).integers(3, 300, (2, 16)), jnp.int32),
  }
  logits = []
  for model, path in ((lora_model, model_dir), (run_cfg["model"], tmp_path / "merged")):
    predictor = inference.Predictor.restore(model, str(path), partitioner=one, batch_size=2)
    assert predictor.step == 3
    logits.append(model.logits(predictor.params, batch))
  np.testing.assert_allclose(logits[0], logits[1], atol=1e-5, rtol=1e-5)
  # to-hf folds the adapters the same way.
  convert.to_hf(str(model_dir), str(tmp_path / "hf_lora"))
  convert.to_hf(str(tmp_path / "merged"), str(tmp_path / "hf_merged"))
  a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("hf_lora", "hf_merged"))
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  with pytest.raises(ValueError, match="no LoRA adapters"):
    from t5lite import merge

    merge.merge_lora(str(tmp_path / "merged"), str(tmp_path / "again"))
  # Another run's adapters trained at other lengths: the predictor takes that run's lengths and decode length.
  short = tmp_path / "short"
  assert train_lib.main(_gin_flags(short, base_dir, "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 8}")) == 0
  served = inference.load(str(model_dir), batch_size=2, partitioner=one)
  assert served.task_feature_lengths == {"inputs": 32, "targets": 16} and served.options.max_decode_len == 16
  with caplog.at_level(logging.WARNING):
    served.use_adapters(str(short))
  assert served.task_feature_lengths == {"inputs": 24, "targets": 8} and served.options.max_decode_len == 8
  assert "prompts are now cut to those lengths" in caplog.text
  texts = ["the quick brown fox jumps over the lazy dog", "abc"]
  direct = inference.load(str(short), batch_size=2, partitioner=one)
  assert served.score(texts, texts) == direct.score(texts, texts)
  assert served.predict(texts) == direct.predict(texts)


def test_prompt_tuning_run_trains_only_the_prompt_from_the_words_it_was_given(tmp_path, base_dir):
  cfg = prompt_tuning.PromptTuningConfig(length=6, init="text", init_text="abc")
  model = tiny_model(prompt_tuning=cfg)
  run(tmp_path / "pt", 4, model=model, initial_checkpoint_path=base_dir, pack=False)
  meta = checkpointing.read_checkpoint_meta(str(tmp_path / "pt"))
  assert meta["param_shapes"] == {"encoder/soft_prompt": [6, 32]}
  assert meta["base_checkpoint"]["step"] == 8
  # Started from the embeddings of 'abc' (byte ids 97+3, 98+3, 99+3) cycled to 6 vectors; 4 steps moved it.
  base = base_params(base_dir)
  start = np.asarray(base["token_embedder"]["embedding"])[[100, 101, 102, 100, 101, 102]]
  one = partitioning.Partitioner(num_devices=1)
  predictor = inference.Predictor.restore(model, str(tmp_path / "pt"), partitioner=one, batch_size=2)
  prompt = np.asarray(predictor.params["encoder"]["soft_prompt"])
  assert 1e-4 < np.max(np.abs(prompt - start)) < 0.5 * np.max(np.abs(start))
  for a, b in zip(jax.tree.leaves(peft.frozen(predictor.params)), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b)
  # Resuming continues the prompt; the base it names is read again.
  run(tmp_path / "pt", 6, model=model, initial_checkpoint_path=base_dir, pack=False)
  assert len(read_losses(tmp_path / "pt")) == 6
  tokens, scores = predictor.predict_tokens(np.array([[5, 9, 11, 3, 7, 0], [4, 8, 2, 6, 13, 21]], np.int32))
  assert tokens.shape[0] == 2 and np.all(np.isfinite(scores))

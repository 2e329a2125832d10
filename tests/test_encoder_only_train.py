"""The encoder-only family end to end: MLM pretraining on pydocs_mlm, exact resume, a mesh equal to
one device, and classification fine-tuning from the MLM checkpoint on pydocs_kind with seqio metrics.

Real parts: the registered tasks (default WordPiece vocabulary, built locally), orbax checkpoints,
train.train; 8 simulated CPU devices for the mesh run.
"""

import json
import os

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

import t5lite_tasks  # noqa: F401  (registers pydocs_mlm, pydocs_kind)
from t5lite import checkpointing, inference, partitioning, train as train_lib
from t5lite.data import registration
from t5lite_tasks import bert as bert_tasks
from t5lite.models import encoder_model, encoder_only
from t5lite.optim import adamw, schedules

MLM_LENGTHS = {"inputs": 64, "targets": 64}
CLS_LENGTHS = {"inputs": 64, "targets": 1}
TINY = dict(vocab_size=8000, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_layers=2, dropout_rate=0.1, sep_id=3)


def model(head="mlm"):
  return encoder_model.EncoderOnlyModel(config=encoder_only.EncoderOnlyConfig(**TINY), head=head, num_classes=3)


def run(model_dir, steps, *, head="mlm", partitioner=None, **kwargs):
  args = dict(
    model=model(head),
    model_dir=str(model_dir),
    mixture_or_task_name="pydocs_mlm" if head == "mlm" else "pydocs_kind",
    task_feature_lengths=MLM_LENGTHS if head == "mlm" else CLS_LENGTHS,
    train_steps=steps,
    batch_size=8,
    summary_every=1,
    checkpoint_every=2,
    optimizer=adamw.adamw,
    learning_rate=schedules.constant(1e-3),
    partitioner=partitioner or partitioning.Partitioner(num_devices=1),
    pack=head == "mlm",
    progress=False,
  )
  args.update(kwargs)
  return train_lib.train(**args)


def train_rows(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "train"]


def params_of(path, head="mlm", step=None):
  m = model(head)
  abstract = jax.eval_shape(lambda: m.init_params(jax.random.key(0), m.input_shapes(1, {"inputs": 64})))
  if step is not None:
    path = os.path.join(path, "checkpoints", str(step))
  return checkpointing.load_params(str(path), abstract)


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
  """4 MLM steps on one device (checkpoints at 2 and 4)."""
  path = tmp_path_factory.mktemp("mlm")
  run(path, 4)
  return str(path)


def test_mlm_run_resumes_exactly(tmp_path, mlm_dir):
  rows = train_rows(mlm_dir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(0 < r["target_tokens"] < 8 * 64 * 0.2 for r in rows)  # ~15 % of the packed tokens are targets
  run(tmp_path, 2)
  run(tmp_path, 4)  # resumes from step 2: data position, dropout and optimizer state
  assert [r["loss"] for r in train_rows(tmp_path)] == [r["loss"] for r in rows]
  for a, b in zip(jax.tree.leaves(params_of(tmp_path)), jax.tree.leaves(params_of(mlm_dir))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mlm_on_a_mesh_equals_one_device(tmp_path, mlm_dir):
  run(tmp_path, 2, partitioner=partitioning.Partitioner(2, 2, 2, num_devices=8), checkpoint_every=2)
  np.testing.assert_allclose(
    [r["loss"] for r in train_rows(tmp_path)], [r["loss"] for r in train_rows(mlm_dir)[:2]], rtol=1e-5
  )
  mesh = jax.tree_util.tree_flatten_with_path(params_of(tmp_path))[0]
  one = jax.tree.leaves(params_of(mlm_dir, step=2))
  for (path, a), b in zip(mesh, one, strict=True):
    name = jax.tree_util.keystr(path)
    if name.endswith("['key_bias']"):
      # Softmax is invariant to a key bias (it adds the same logit to every key of a query): its
      # gradient is 0 up to rounding, which Adam scales up to ~learning rate. Nothing to compare.
      continue
    # Each Adam step moves a parameter by up to ~lr = 1e-3 whatever the gradient's size, so a
    # mis-sharded gradient shows as ~1e-3; rounding differences amplified by Adam stay far below 1e-5.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5, err_msg=name)


def test_classifier_fine_tunes_from_the_mlm_checkpoint(tmp_path, mlm_dir):
  metrics = run(
    tmp_path, 2, head="classification", initial_checkpoint_path=mlm_dir, infer_eval_every=2, infer_eval_examples=16
  )
  # seqio's Evaluator decoded the predicted class ids through the task's class names.
  acc, f1 = metrics["infer_eval/pydocs_kind/accuracy"], metrics["infer_eval/pydocs_kind/f1"]
  assert 0.0 <= acc <= 100.0 and 0.0 <= f1 <= 100.0
  params = params_of(tmp_path, "classification")
  assert sorted(params) == ["classifier", "encoder", "pooler", "token_embedder"]  # the MLM head was left behind
  rows = train_rows(tmp_path)
  assert [r["target_tokens"] for r in rows] == [8.0, 8.0]  # one label per row
  # Text in, class name out: [CLS] text [SEP] with the task's WordPiece vocabulary, cut at the length.
  predictor = inference.Predictor.restore(
    model("classification"),
    str(tmp_path),
    partitioner=partitioning.Partitioner(num_devices=1),
    vocabulary=inference.task_vocabulary("pydocs_kind"),
    labels=inference.task_vocabulary("pydocs_kind", labels=True),
    task_feature_lengths=CLS_LENGTHS,
    add_eos_to_inputs=inference.task_adds_eos_to_inputs("pydocs_kind", model("classification")),
  )
  texts = ["Return the number of items in the container.", "A queue of tasks. " * 40]
  assert all(p in ("class", "function", "method") for p in predictor.predict(texts))
  before = predictor.truncated
  ids = predictor.encode_inputs(texts)
  vocab = predictor.vocabulary
  assert ids[0][0] == vocab.cls_id and ids[0][-1] == vocab.sep_id and vocab.sep_id not in ids[0][1:-1]
  assert len(ids[1]) == 64 and ids[1][-1] == vocab.sep_id and predictor.truncated == before + 1
  logits = model("classification").logits(params, {"encoder_input_tokens": np.asarray(predictor.pad(ids[:1], 64))})
  with pytest.raises(ValueError, match="an encoder-only model predicts"):
    predictor.score(texts[:1], ["function"])
  assert predictor.predict(texts[:1]) == [("class", "function", "method")[int(np.argmax(logits[0]))]]
  # Step 1's loss is that of the MLM encoder with a fresh head: the same seed's fresh head over a
  # fresh encoder gives another loss.
  scratch = tmp_path / "scratch"
  run(scratch, 1, head="classification")
  assert abs(train_rows(scratch)[0]["loss"] - rows[0]["loss"]) > 1e-4


def test_bad_classification_setups_are_refused_before_any_step(tmp_path, mlm_dir):
  bad = encoder_model.EncoderOnlyModel(config=encoder_only.EncoderOnlyConfig(**TINY), head="classification")
  with pytest.raises(ValueError, match=r"num_classes=2 but task 'pydocs_kind' declares 3 classes"):
    run(tmp_path / "a", 2, head="classification", model=bad)
  with pytest.raises(ValueError, match="does not pack"):
    run(tmp_path / "b", 2, head="classification", pack=True)
  long = encoder_model.EncoderOnlyModel(
    config=encoder_only.EncoderOnlyConfig(**{**TINY, "max_position_embeddings": 32})
  )
  with pytest.raises(ValueError, match=r"longer than the learned position table \(max_position_embeddings=32\)"):
    run(tmp_path / "c", 2, model=long)
  assert not os.path.exists(tmp_path / "c" / "checkpoints")
  assert not os.path.exists(tmp_path / "b")  # the packing refusal comes before the run directory


def _bad_label_dataset(split, shuffle_files, seed=None):
  del shuffle_files, seed
  labels = ["pos", "neg"] * 8
  if split == "train":
    labels[11] = "maybe"
  return tf.data.Dataset.from_tensor_slices({"inputs": ["a short docstring"] * 16, "label": labels})


def test_a_label_outside_the_classes_stops_the_run_with_its_name(tmp_path):
  if "tbert_bad_label" not in seqio.TaskRegistry.names():
    source = seqio.FunctionDataSource(_bad_label_dataset, splits=["train", "validation"])
    registration.register_classification_task("tbert_bad_label", source, bert_tasks.VOCABULARY, ["neg", "pos"])
  m = encoder_model.EncoderOnlyModel(config=encoder_only.EncoderOnlyConfig(**TINY), head="classification")
  with pytest.raises(
    ValueError,
    match=r"the input pipeline of 'tbert_bad_label' failed: Unknown label maybe; the declared classes are: neg, pos",
  ):
    run(tmp_path, 2, head="classification", model=m, mixture_or_task_name="tbert_bad_label", shuffle=False)


def test_classifier_learns_pydocs_kind(tmp_path):
  """A small classifier trained from scratch for 300 steps beats the majority class of pydocs_kind's
  validation split (45.7 %; a bag-of-words naive Bayes gets 59.7 %). Measured: 60.0 % accuracy,
  macro F1 55.9 (docs/performance.md); the threshold leaves room for platform rounding."""
  small = dict(TINY, d_model=64, d_kv=32, d_ff=128, dropout_rate=0.0)
  m = encoder_model.EncoderOnlyModel(
    config=encoder_only.EncoderOnlyConfig(**small), head="classification", num_classes=3
  )
  metrics = run(
    tmp_path,
    300,
    head="classification",
    model=m,
    batch_size=32,
    checkpoint_every=300,
    summary_every=50,
    infer_eval_every=300,
  )
  assert metrics["infer_eval/pydocs_kind/accuracy"] >= 52.0
  assert metrics["infer_eval/pydocs_kind/f1"] >= 45.0


def _words_dataset(split, shuffle_files, seed=None):
  """pydocs_kind's docstrings labelled with a number: their length in characters / 1000."""
  del shuffle_files, seed
  examples = bert_tasks.kind_examples(split)[:64]
  texts = [e[1] for e in examples]
  return tf.data.Dataset.from_tensor_slices({"inputs": texts, "label": [len(t) / 1000.0 for t in texts]})


def test_regression_head_trains_and_is_scored_by_pearson(tmp_path):
  if "tbert_length" not in seqio.TaskRegistry.names():
    source = seqio.FunctionDataSource(_words_dataset, splits=["train", "validation"])
    registration.register_classification_task("tbert_length", source, bert_tasks.VOCABULARY, None)
  m = encoder_model.EncoderOnlyModel(config=encoder_only.EncoderOnlyConfig(**TINY), head="regression")
  metrics = run(
    tmp_path,
    2,
    head="regression",
    model=m,
    mixture_or_task_name="tbert_length",
    infer_eval_every=2,
    infer_eval_examples=16,
  )
  rows = train_rows(tmp_path)
  assert [r["target_tokens"] for r in rows] == [8.0, 8.0] and all(r["accuracy"] == 0.0 for r in rows)
  # seqio decoded the float predictions and labels; Pearson and Spearman are numbers in [-100, 100].
  for name in ("pearson", "spearman"):
    assert -100.0 <= metrics[f"infer_eval/tbert_length/{name}"] <= 100.0


def test_gin_classifier_exports_to_transformers_with_its_tokenizer_and_class_names(tmp_path):
  """experiments/quickstart_bert_classify.gin (small) -> `t5lite convert to-hf`: transformers'
  AutoTokenizer gives our ids (the task's cased WordPiece files and tokenizer_config.json are
  exported), and AutoModelForSequenceClassification our logits and the task's class names."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from t5lite import cli

  run_dir, hf_dir = tmp_path / "run", tmp_path / "hf"
  sizes = [f"--gin.encoder_only.EncoderOnlyConfig.{k}={v}" for k, v in TINY.items() if k != "vocab_size"]
  flags = [
    "--gin_file=experiments/quickstart_bert_classify.gin",
    *sizes,
    f"--gin.MODEL_DIR='{run_dir}'",
    "--gin.INITIAL_CHECKPOINT_PATH=None",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 1}",
    "--gin.TRAIN_STEPS=2",
    "--gin.WARMUP_STEPS=1",
    "--gin.BATCH_SIZE=8",
    "--gin.INFER_EVAL_EVERY=0",
    "--gin.EVAL_EVERY=0",
    "--gin.NUM_DEVICES=1",
    "--gin.train_lib.train.progress=False",
  ]
  assert train_lib.main(flags) == 0
  assert cli.main(["convert", "to-hf", "--checkpoint", str(run_dir), "--output", str(hf_dir)]) == 0
  tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
  assert hf.config.id2label == {0: "class", 1: "function", 2: "method"}
  predictor = inference.load(str(run_dir), partitioner=partitioning.Partitioner(num_devices=1))
  texts = ["Return the Number of items in the container.", "Create a new connection to HOST."]
  ids = predictor.encode_inputs(texts)
  enc = tok(texts, padding="max_length", max_length=64, return_tensors="pt")
  np.testing.assert_array_equal(enc["input_ids"].numpy(), predictor.pad(ids, 64))
  with torch.no_grad():
    theirs = hf(**enc).logits.numpy()
  ours = predictor.model.logits(predictor.params, {"encoder_input_tokens": np.asarray(predictor.pad(ids, 64))})
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-5)

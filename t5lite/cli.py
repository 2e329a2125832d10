"""The `t5lite` command.

    t5lite vocab train --files 'corpus/*.txt' --output my.model [--model_type bpe]
    t5lite vocab train --source pydocs --vocab_size 8000 --output my.model
    t5lite vocab train --source pydocs --model_type wordpiece --output my_wordpiece/ [--lowercase]
    t5lite data preview [--tasks pydocs_span_corruption ...] [--examples 2]
    t5lite data prepare [--data_dir DIR]
    t5lite train --gin_file=experiments/quickstart.gin --gin.MODEL_DIR=\"/tmp/run\"
    t5lite infer --gin_file=RUN/config.gin --gin_file=runs/infer.gin --gin.INFER_OUTPUT_DIR=\"/tmp/infer\"
    t5lite eval  --gin_file=RUN/config.gin --gin_file=runs/eval.gin --gin.EVAL_OUTPUT_DIR=\"/tmp/eval\"
    t5lite convert from-hf --hf_dir ~/models/flan-t5-small --output runs/flan_t5_small
    t5lite convert to-hf --checkpoint runs/finetuned --output ~/models/finetuned
    t5lite lora merge --checkpoint runs/quickstart_lora --output runs/quickstart_lora_merged

Heavy imports (TensorFlow, seqio) happen inside the subcommands that need them. The
subcommands that read registered tasks register the built-in ones first
(`gin_entry.import_task_modules`); train, infer and eval run through `gin_entry`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from t5lite import checks, gin_entry

PREVIEW_TASKS = (
  ("pydocs_span_corruption", {"inputs": 512, "targets": 114}),
  ("pydocs_prefix_lm", {"inputs": 256, "targets": 256}),
  ("pydocs_lm", {"targets": 256}),
  ("pydocs_ul2", {"inputs": 512, "targets": 512}),
  ("pydocs_doc_to_name", {"inputs": 256, "targets": 32}),
)


def _quiet_tf() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _vocab_train(args) -> int:
  from t5lite.data import vocab  # pylint: disable=g-import-not-at-top

  if bool(args.files) == bool(args.source):
    raise ValueError("give exactly one of --files GLOB or --source NAME")
  checks.check_int("--vocab_size", args.vocab_size, minimum=1)
  checks.check_float("--character_coverage", args.character_coverage, minimum=0.0, maximum=1.0, min_open=True)
  if args.files:
    texts = vocab.texts_from_files(args.files, text_key=args.text_key)
  else:
    from t5lite.data import registration  # pylint: disable=g-import-not-at-top

    gin_entry.import_task_modules()
    if args.source == "pydocs":
      from t5lite.data import sources  # pylint: disable=g-import-not-at-top

      source = sources.PydocsSource(args.data_dir)
    else:
      source = registration.get_task_or_mixture(args.source).source
    texts = vocab.texts_from_source(source, args.split, text_key=args.text_key)
  if args.model_type == "wordpiece":
    return _wordpiece_train(texts, args)
  if args.lowercase:
    raise ValueError("--lowercase applies to --model_type wordpiece only (SentencePiece keeps the text as it is)")
  path = vocab.train_sentencepiece(
    texts,
    args.output,
    vocab_size=args.vocab_size,
    model_type=args.model_type,
    character_coverage=args.character_coverage,
    byte_fallback=args.byte_fallback,
  )
  vocabulary = vocab.sentencepiece_vocabulary(path)
  print(
    f"wrote {path}: {args.vocab_size} pieces + {vocabulary.extra_ids} sentinels = vocab_size {vocabulary.vocab_size}"
  )
  return 0


def _wordpiece_train(texts, args) -> int:
  from t5lite.data import wordpiece  # pylint: disable=g-import-not-at-top

  path = wordpiece.train_wordpiece(texts, args.output, vocab_size=args.vocab_size, lowercase=args.lowercase)
  vocabulary = wordpiece.wordpiece_vocabulary(path)
  print(f"wrote {path} and {wordpiece.output_paths(args.output)[1]}")
  print(wordpiece.describe(vocabulary))
  return 0


def _data_prepare(args) -> int:
  from t5lite.data import pydocs, sources, vocab  # pylint: disable=g-import-not-at-top

  source = sources.PydocsSource(args.data_dir)
  data_dir = source.prepare()
  counts = {s: source.num_input_examples(s) for s in source.splits}
  print(f"pydocs ({pydocs.TFDS_NAME}) in {data_dir}: {counts}")
  path = vocab.ensure_default_vocab(args.data_dir)
  print(f"default vocabulary: {path}")
  return 0


def _data_preview(args) -> int:
  checks.check_int("--examples", args.examples, minimum=1)
  if args.data_dir:
    from t5lite.data import data_dirs  # pylint: disable=g-import-not-at-top

    data_dirs.set_data_dir(args.data_dir)
  from t5lite.data import labels, preview, registration, vocab  # pylint: disable=g-import-not-at-top

  vocab.use_model_file(args.vocabulary_model, what="--vocabulary_model")

  gin_entry.import_task_modules()
  wanted = dict(PREVIEW_TASKS)
  names = args.tasks or list(wanted)
  for name in names:
    task = registration.get_task_or_mixture(name)
    label_kinds = (labels.ClassLabelVocabulary, labels.ScalarVocabulary)  # one value: the label
    lengths = wanted.get(name) or {
      k: 1 if isinstance(f.vocabulary, label_kinds) else 256 for k, f in task.output_features.items()
    }
    ds = task.get_dataset(lengths, split=args.split, shuffle=False, seed=0)
    print(f"== {name}  lengths={lengths}")
    for i, ex in enumerate(ds.take(args.examples).as_numpy_iterator()):
      print(f"- example {i}")
      print(preview.format_example(ex, task.output_features))
  return 0


def _overrides(args) -> dict:
  out = {}
  for name in ("dtype", "remat_policy", "attention"):
    if getattr(args, name) is not None:
      out[name] = getattr(args, name)
  if args.scan_layers:
    out["scan_layers"] = True
  if args.dropout_rate is not None:
    out["dropout_rate"] = checks.check_float(
      "--dropout_rate", args.dropout_rate, minimum=0.0, maximum=1.0, max_open=True
    )
  return out


def _convert_from_hf(args) -> int:
  from t5lite import convert  # pylint: disable=g-import-not-at-top

  lengths = None
  if args.inputs_length or args.targets_length:
    lengths = {k: v for k, v in (("inputs", args.inputs_length), ("targets", args.targets_length)) if v}
    checks.check_lengths("--inputs_length/--targets_length", lengths)
  result = convert.from_hf(args.hf_dir, args.output, overrides=_overrides(args), task_feature_lengths=lengths)
  for warning in result["warnings"]:
    print(f"t5lite convert from-hf: warning: {warning}", file=sys.stderr)
  if result["family"] == "t5" and args.dtype == "float16":
    print(
      "t5lite convert from-hf: warning: T5 activations overflow float16 (flan-T5 especially); bfloat16 is safe",
      file=sys.stderr,
    )
  vocab = result["vocabulary_size"]
  print(f"wrote {result['output']} ({result['family']}, {result['seconds']:.1f} s)")
  print(f"  fine-tune: include {result['output']}/model.gin and set INITIAL_CHECKPOINT_PATH = '{result['output']}'")
  if vocab is not None:
    print(f"  vocabulary: VOCABULARY_MODEL = '{result['output']}/spiece.model' ({vocab} ids with the sentinels)")
  if result.get("vocabulary_files"):
    print(f"  WordPiece vocabulary: {result['output']}/{result['vocabulary_files'][0]}")
  if result.get("head"):
    head = "classification (BertModel's pooler, a new classifier)" if result["head"] == "pooler" else result["head"]
    print(f"  encoder-only head: {head}")
  return 0


def _convert_to_hf(args) -> int:
  from t5lite import convert  # pylint: disable=g-import-not-at-top

  step = checks.check_int("--step", args.step, minimum=0, allow_none=True, hint=" (omit for the latest)")
  result = convert.to_hf(
    args.checkpoint,
    args.output,
    step=step,
    model_type=args.model_type,
    dtype=args.dtype,
    register_tasks=gin_entry.import_task_modules,  # only for a run that names a task (its tokenizer, class names)
  )
  print(f"wrote {result['output']} ({result['family']}, step {result['step']}, {result['seconds']:.1f} s)")
  return 0


def _lora_merge(args) -> int:
  from t5lite import merge  # pylint: disable=g-import-not-at-top

  step = checks.check_int("--step", args.step, minimum=0, allow_none=True, hint=" (omit for the latest)")
  result = merge.merge_lora(args.checkpoint, args.output, step=step)
  base = (result["base"] or {}).get("path")
  print(f"wrote {result['output']} (step {result['step']}, adapters folded into {base}, {result['seconds']:.1f} s)")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="t5lite", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("train", help="train with gin flags (same as python -m t5lite.train)")
  sub.add_parser("infer", help="decode or score into JSONL with gin flags (same as python -m t5lite.infer)")
  sub.add_parser("eval", help="seqio evaluation of checkpoints with gin flags (same as python -m t5lite.eval)")

  vocab_p = sub.add_parser("vocab", help="vocabulary tools").add_subparsers(dest="sub", required=True)
  train = vocab_p.add_parser(
    "train",
    help="train a SentencePiece model (unigram, bpe: pad=0, eos=1, unk=2) or a BERT WordPiece vocabulary "
    "(wordpiece: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4)",
  )
  train.add_argument("--files", help="glob of .txt (one document each) or .jsonl files")
  train.add_argument("--source", help="'pydocs' or a registered task name whose source to read")
  train.add_argument("--split", default="train")
  train.add_argument("--text_key", default="text")
  train.add_argument(
    "--output",
    required=True,
    help="unigram/bpe: the .model file to write; wordpiece: a directory (gets tokenizer.json and vocab.txt) "
    "or a .json path",
  )
  train.add_argument("--vocab_size", type=int, default=8000)
  train.add_argument(
    "--model_type",
    default="unigram",
    choices=["unigram", "bpe", "wordpiece"],
    help="unigram or bpe (SentencePiece, for T5 and GPT-style models), or wordpiece (the tokenizers library's "
    "WordPiece trainer, for BERT-style models). Default: %(default)s",
  )
  train.add_argument(
    "--lowercase",
    action="store_true",
    help="wordpiece only: lowercase and strip accents first (as bert-base-uncased). Default: keep case",
  )
  train.add_argument(
    "--character_coverage",
    type=float,
    default=0.9995,
    help="unigram/bpe: fraction of the text's characters given a piece of their own (printable ASCII "
    "always is); 1.0 for a small alphabet. Default: %(default)s",
  )
  train.add_argument(
    "--byte_fallback",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="unigram/bpe: encode characters without a piece as UTF-8 byte pieces instead of <unk> "
    "(256 of the vocab_size pieces). Default: on",
  )
  train.add_argument("--data_dir", default=None)
  train.set_defaults(fn=_vocab_train)

  data_p = sub.add_parser("data", help="dataset tools").add_subparsers(dest="sub", required=True)
  prep = data_p.add_parser("prepare", help="build the pydocs corpus and the default vocabulary")
  prep.add_argument("--data_dir", default=None)
  prep.set_defaults(fn=_data_prepare)
  prev = data_p.add_parser("preview", help="print decoded examples of tasks")
  prev.add_argument("--tasks", nargs="*", default=None)
  prev.add_argument("--examples", type=int, default=2)
  prev.add_argument("--split", default="validation")
  prev.add_argument("--data_dir", default=None)
  prev.add_argument(
    "--vocabulary_model",
    default=None,
    help="a SentencePiece .model file (pad/eos/unk 0/1/2) used by the tasks built on the default "
    "vocabulary, e.g. a Hugging Face T5 directory's spiece.model (what VOCABULARY_MODEL does in training)",
  )
  prev.set_defaults(fn=_data_preview)

  conv_p = sub.add_parser("convert", help="Hugging Face checkpoints in and out").add_subparsers(
    dest="sub", required=True
  )
  from_hf = conv_p.add_parser("from-hf", help="a local Hugging Face directory (safetensors) -> a t5lite checkpoint")
  from_hf.add_argument("--hf_dir", required=True, help="directory with config.json and model.safetensors (or shards)")
  from_hf.add_argument("--output", required=True, help="new directory to write (refused if it exists and is not empty)")
  from_hf.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="activation dtype")
  from_hf.add_argument("--scan_layers", action="store_true", help="store the layer stacks scanned (nn.scan)")
  from_hf.add_argument("--remat_policy", default=None, help="none, full, dots_saveable or minimal (model.gin)")
  from_hf.add_argument("--attention", default=None, help="attention implementation for model.gin (default 'auto')")
  from_hf.add_argument("--dropout_rate", type=float, default=None, help="default: the checkpoint's config.json")
  from_hf.add_argument("--inputs_length", type=int, default=None, help="TASK_FEATURE_LENGTHS for config.gin")
  from_hf.add_argument("--targets_length", type=int, default=None)
  from_hf.set_defaults(fn=_convert_from_hf)
  to_hf = conv_p.add_parser("to-hf", help="a t5lite run's checkpoint -> a Hugging Face directory (safetensors)")
  to_hf.add_argument("--checkpoint", required=True, help="a run directory, its checkpoints/ or a step directory")
  to_hf.add_argument("--output", required=True, help="new directory to write (refused if it exists and is not empty)")
  to_hf.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
  to_hf.add_argument(
    "--model_type",
    default=None,
    choices=["t5", "mt5", "gpt2"],
    help="T5 models: t5 or mt5 (default: what a from-hf directory came from, else t5); decoder-only: gpt2",
  )
  to_hf.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="tensor dtype")
  to_hf.set_defaults(fn=_convert_to_hf)

  lora_p = sub.add_parser("lora", help="LoRA adapter tools").add_subparsers(dest="sub", required=True)
  merge_p = lora_p.add_parser(
    "merge", help="fold a LoRA run's adapters into its base kernels -> a run directory without adapters"
  )
  merge_p.add_argument("--checkpoint", required=True, help="the LoRA run directory, its checkpoints/ or a step dir")
  merge_p.add_argument("--output", required=True, help="new directory to write (refused if it exists and is not empty)")
  merge_p.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
  merge_p.set_defaults(fn=_lora_merge)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  _quiet_tf()
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] in gin_entry.COMMANDS:  # T5X-style gin flags: the entry module's main() runs them
    import importlib  # pylint: disable=g-import-not-at-top

    return importlib.import_module(gin_entry.COMMANDS[argv[0]].module).main(argv[1:])
  args = build_parser().parse_args(argv)
  try:
    return args.fn(args)
  except (ValueError, FileNotFoundError, FileExistsError) as e:  # checks.SettingError is a ValueError
    message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    print(f"t5lite {args.command} {args.sub}: error: {message}", file=sys.stderr)
    return 2


def console_main() -> int:
  """The installed `t5lite` command: process settings (t5lite.runtime), then main()."""
  from t5lite import runtime  # pylint: disable=g-import-not-at-top

  runtime.apply_process_settings()
  return main()


if __name__ == "__main__":
  sys.exit(console_main())

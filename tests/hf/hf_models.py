"""Random Hugging Face models saved to local directories, built with transformers on a CPU torch.

Tests cannot download weights, so each family is made here at a small size with its distinctive options set
(untied or tied output, gated or plain MLP, more decoder than encoder layers, few relative-position buckets)
and every weight moved off its initial value (norm scales and biases included), so that a mapping that swaps,
transposes or drops a tensor changes the logits.
"""

import numpy as np
import torch
import transformers

VOCAB = 96


def _perturb(model, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * 0.2)
  return model


def t5_model(kind: str = "v1_1", seed: int = 0, vocab_size: int = VOCAB, decoder_layers: int = 3, **overrides):
  """kind: 'v1_1' (gated-GELU, untied, as flan-T5), 'mt5' (the same, MT5ForConditionalGeneration) or
  'original' (ReLU, tied output scaled by d_model ** -0.5). (transformers' generate needs
  decoder_layers == 2, the encoder's depth: its cache is sized by num_layers.)"""
  common = dict(
    vocab_size=vocab_size,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=decoder_layers,
    num_heads=3,
    dropout_rate=0.0,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
  )
  common.update(overrides)
  if kind == "original":
    model = transformers.T5ForConditionalGeneration(
      transformers.T5Config(feed_forward_proj="relu", tie_word_embeddings=True, **common)
    )
  else:
    cls_cfg, cls = (
      (transformers.MT5Config, transformers.MT5ForConditionalGeneration)
      if kind == "mt5"
      else (transformers.T5Config, transformers.T5ForConditionalGeneration)
    )
    model = cls(cls_cfg(feed_forward_proj="gated-gelu", tie_word_embeddings=False, **common))
    gen = torch.Generator().manual_seed(seed + 100)
    model.lm_head.weight = torch.nn.Parameter(torch.randn((vocab_size, common["d_model"]), generator=gen))
  return _perturb(model, seed).eval()


def gpt2_model(seed: int = 0):
  config = transformers.GPT2Config(
    vocab_size=VOCAB, n_positions=24, n_embd=24, n_layer=2, n_head=3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
  )
  return _perturb(transformers.GPT2LMHeadModel(config), seed).eval()


BERT_CLASSES = {
  "mlm": "BertForMaskedLM",
  "classification": "BertForSequenceClassification",
  "regression": "BertForSequenceClassification",
  "base": "BertModel",
}


def bert_model(kind: str = "mlm", seed: int = 0, **overrides):
  """kind: 'mlm' (BertForMaskedLM, tied decoder), 'classification' (BertForSequenceClassification, 3 labels),
  'regression' (the same with num_labels 1) or 'base' (BertModel: encoder and pooler). Exact GELU, two token
  types, 16 positions, 2 layers of width 24 with 3 heads."""
  fields = dict(
    vocab_size=VOCAB,
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=40,
    max_position_embeddings=16,
    type_vocab_size=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    hidden_act="gelu",
  )
  if kind in ("classification", "regression"):
    fields["num_labels"] = 3 if kind == "classification" else 1
  fields.update(overrides)
  model = getattr(transformers, BERT_CLASSES[kind])(transformers.BertConfig(**fields))
  return _perturb(model, seed).eval()


def save(model, directory, **kwargs) -> str:
  model.save_pretrained(str(directory), **kwargs)
  return str(directory)


# A padded batch: the first row is shorter (padding id 0) in both the encoder and the decoder.
ENCODER_TOKENS = np.array([[5, 6, 7, 8, 9, 1, 0, 0], [10, 11, 12, 13, 14, 15, 16, 1]], np.int32)
DECODER_INPUTS = np.array([[0, 3, 4, 5, 0, 0], [0, 7, 8, 9, 10, 11]], np.int32)
DECODER_REAL = DECODER_INPUTS > 0
DECODER_REAL[:, 0] = True
LM_TOKENS = np.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 0, 0, 0, 0]], np.int32)
LM_REAL = np.array([[True] * 10, [True] * 6 + [False] * 4])


def t5_logits(model, encoder_tokens=ENCODER_TOKENS, decoder_inputs=DECODER_INPUTS) -> np.ndarray:
  with torch.no_grad():
    return (
      model(
        input_ids=torch.tensor(encoder_tokens, dtype=torch.long),
        attention_mask=torch.tensor(encoder_tokens > 0, dtype=torch.long),
        decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long),
      )
      .logits.float()
      .numpy()
    )


def gpt2_logits(model, tokens=LM_TOKENS) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def relative_error(ours: np.ndarray, theirs: np.ndarray, real: np.ndarray) -> float:
  """max |ours - theirs| over the real positions, relative to max |theirs| there."""
  return float(np.abs(ours - theirs)[real].max() / np.abs(theirs[real]).max())


# [CLS]=2 A [SEP]=3 B [SEP]=3, the first row padded; token types 0 for [CLS] A [SEP], 1 for B [SEP].
BERT_TOKENS = np.array([[2, 10, 11, 12, 3, 20, 21, 3, 0, 0], [2, 30, 31, 32, 33, 34, 3, 40, 41, 3]], np.int32)
BERT_TYPES = np.array([[0, 0, 0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]], np.int32)
BERT_REAL = BERT_TOKENS > 0


def bert_outputs(model, tokens=BERT_TOKENS, types=BERT_TYPES) -> tuple[np.ndarray, ...]:
  """(logits,) of a BERT head model, (last_hidden_state, pooler_output) of a BertModel; padded rows masked."""
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(tokens, dtype=torch.long),
      attention_mask=torch.tensor(tokens > 0, dtype=torch.long),
      token_type_ids=torch.tensor(types, dtype=torch.long),
    )
  if hasattr(out, "logits"):
    return (out.logits.float().numpy(),)
  return out.last_hidden_state.float().numpy(), out.pooler_output.float().numpy()

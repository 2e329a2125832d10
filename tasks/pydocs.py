"""Tasks over the embedded `pydocs` corpus (built locally on first use, no network).

Registered: pydocs_span_corruption, pydocs_prefix_lm, pydocs_lm, the UL2
denoiser tasks pydocs_ul2_<denoiser> with the mixture pydocs_ul2, and the
supervised pydocs_doc_to_name (name the module or topic a piece of
documentation comes from; exact match) and pydocs_summary (write a
document's summary line from the rest of it; ROUGE).
"""

import tensorflow as tf

from t5lite import metrics
from t5lite.data import registration, sources, vocab

SOURCE = sources.PydocsSource()
VOCABULARY = vocab.default_vocabulary()

registration.register_pretraining_tasks("pydocs", SOURCE, VOCABULARY)


def _doc_to_name(dataset, max_chars: int = 600):
  def fn(x):
    text = tf.strings.substr(x["text"], 0, max_chars, unit="UTF8_CHAR")
    return {"inputs": tf.strings.join(["which module or topic: ", text]), "targets": x["name"]}

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


registration.register_text_to_text_task(
  "pydocs_doc_to_name", SOURCE, VOCABULARY, preprocessors=[_doc_to_name], metric_fns=[metrics.exact_match]
)


def _summary(dataset, max_chars: int = 2000):
  """The first line of a document (its summary line) from the rest of it."""

  def fn(x):
    parts = tf.strings.split(tf.strings.strip(x["text"]), "\n", maxsplit=1)
    parts = tf.concat([parts, ["", ""]], 0)
    body = tf.strings.substr(tf.strings.strip(parts[1]), 0, max_chars, unit="UTF8_CHAR")
    return {"inputs": tf.strings.join(["summarize: ", body]), "targets": tf.strings.strip(parts[0])}

  ds = dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.filter(lambda x: tf.logical_and(tf.strings.length(x["targets"]) > 0, tf.strings.length(x["inputs"]) > 20))


registration.register_text_to_text_task(
  "pydocs_summary", SOURCE, VOCABULARY, preprocessors=[_summary], metric_fns=[metrics.rouge]
)

"""Tasks over the user's own text files: `register(...)` adds `<prefix>_span_corruption` etc.

Example (one gin line in an experiment, or plain Python):
    t5lite_tasks.text_files.register(train='corpus/*.txt', validation='heldout/*.jsonl')
then train on MIXTURE_OR_TASK_NAME = 'text_span_corruption'.
"""

from typing import Optional, Sequence, Union

from t5lite.data import registration, text_files, vocab

Patterns = Union[str, Sequence[str]]


def register(
  train: Patterns,
  validation: Optional[Patterns] = None,
  prefix: str = "text",
  text_key: str = "text",
  vocabulary=None,
) -> list:
  """Registers the pretraining tasks over text files; returns the task names."""
  splits = {"train": train}
  if validation is not None:
    splits["validation"] = validation
  source = text_files.TextFilesSource(splits, text_key=text_key)
  return registration.register_pretraining_tasks(prefix, source, vocabulary or vocab.default_vocabulary())

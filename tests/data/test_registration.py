"""Tests for t5lite/data/registration.py: looking tasks and mixtures up, and the error for an unknown name."""

import os
import subprocess
import sys

import pytest
import seqio

from t5lite.data import registration, vocab as vocab_lib
from tests.data.conftest import make_source

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def pairs_task():
  source = make_source(["a b c", "d e f"])
  name = "registration_test_pairs"
  registration.register_text_to_text_task(
    name, source, vocab_lib.byte_vocabulary(), inputs_key="text", targets_key="text"
  )
  yield name
  seqio.TaskRegistry.remove(name)


def test_a_registered_task_and_mixture_are_found(pairs_task):
  assert registration.get_task_or_mixture(pairs_task) is seqio.TaskRegistry.get(pairs_task)
  mixture = "registration_test_mixture"
  seqio.MixtureRegistry.add(mixture, [(pairs_task, 1.0)])
  try:
    assert registration.get_task_or_mixture(mixture) is seqio.MixtureRegistry.get(mixture)
  finally:
    seqio.MixtureRegistry.remove(mixture)


def test_an_unknown_name_lists_what_is_registered_and_what_to_import(pairs_task):
  with pytest.raises(ValueError) as e:
    registration.get_task_or_mixture("registration_test_pair")
  message = str(e.value)
  assert message.startswith("Unknown task or mixture 'registration_test_pair'. Did you mean: registration_test_pairs?")
  registered = message.split("Registered tasks and mixtures: ")[1].split(". ")[0].split(", ")
  assert pairs_task in registered
  assert registered == sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  assert "`import t5lite_tasks` registers t5lite's tasks" in message
  assert "import your own task module" in message


def test_with_nothing_registered_the_message_says_to_import_the_tasks():
  """A fresh interpreter that imported the library but no task module (as the entry points' library code does)."""
  script = (
    "from t5lite.data import registration\n"
    "try:\n"
    "  registration.get_task_or_mixture('pydocs_span_corruption')\n"
    "except ValueError as e:\n"
    "  print(e)\n"
  )
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  out = subprocess.run(
    [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True
  ).stdout
  assert "Unknown task or mixture 'pydocs_span_corruption'. Registered tasks and mixtures: none." in out
  assert "`import t5lite_tasks` registers t5lite's tasks (pydocs_*" in out

"""Training summaries: TensorBoard event files, a JSON-lines metrics log and the progress bar.

Events are written with the `tensorboard` package's own event writer and
protos, so summaries need no TensorFlow (the GPU machines have none). Each
split gets its own folder (`MODEL_DIR/train`, `MODEL_DIR/eval`), as T5X does;
`MODEL_DIR/metrics.jsonl` gets one object per line: step, split, metrics.
The progress bar is tqdm's, on stderr.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, Optional

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class SummaryWriter:
  """Scalars and text into a TensorBoard log directory."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self._writer = EventFileWriter(logdir)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    summary = summary_pb2.Summary(
      value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
    )
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def text(self, step: int, tag: str, text: str) -> None:
    from tensorboard.plugins.text import metadata as text_metadata  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2  # pylint: disable=g-import-not-at-top

    tensor = tensor_pb2.TensorProto(
      dtype=types_pb2.DT_STRING,
      string_val=[text.encode("utf-8")],
      tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[]),
    )
    value = summary_pb2.Summary.Value(
      tag=tag, metadata=text_metadata.create_summary_metadata(display_name=tag, description=""), tensor=tensor
    )
    self._writer.add_event(
      event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=[value]))
    )

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MetricsLog:
  """Appends {"step", "split", **metrics} JSON objects, one per line."""

  def __init__(self, path: str):
    self._path = path

  def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
    record = {"step": int(step), "split": split}
    for k, v in values.items():
      v = float(v)
      record[k] = v if math.isfinite(v) else str(v)
    with open(self._path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")


class Summaries:
  """The train/eval writers and the metrics log of one run (process 0 only writes)."""

  def __init__(self, model_dir: str, enabled: bool = True):
    self._enabled = enabled
    self._writers: dict[str, SummaryWriter] = {}
    self._model_dir = model_dir
    self._log = MetricsLog(os.path.join(model_dir, "metrics.jsonl")) if enabled else None

  def writer(self, split: str) -> Optional[SummaryWriter]:
    if not self._enabled:
      return None
    if split not in self._writers:
      self._writers[split] = SummaryWriter(os.path.join(self._model_dir, split))
    return self._writers[split]

  def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    self.writer(split).scalars(step, values)
    self._log.write(step, split, values)

  def text(self, step: int, split: str, tag: str, text: str) -> None:
    if self._enabled:
      self.writer(split).text(step, tag, text)

  def flush(self) -> None:
    for w in self._writers.values():
      w.flush()

  def close(self) -> None:
    for w in self._writers.values():
      w.close()
    self._writers.clear()


def progress_postfix(metrics: Mapping[str, float]) -> dict[str, str]:
  """The progress bar's postfix for train metrics: loss, tokens/s and MFU
  (or GFLOP/s where the device has no known peak)."""
  out = {"loss": f"{metrics['loss']:.3f}"}
  if "tokens_per_s" in metrics:
    out["tok/s"] = f"{metrics['tokens_per_s']:,.0f}"
  if "mfu" in metrics:
    out["mfu"] = f"{100 * metrics['mfu']:.1f}%"
  elif "flops_per_s" in metrics:
    out["GFLOP/s"] = f"{metrics['flops_per_s'] / 1e9:.1f}"
  return out


class _NoProgress:
  """A progress bar that shows nothing; `write` still prints."""

  def update(self, n):
    del n

  def set_postfix(self, d):
    del d

  def write(self, s):
    print(s)

  def close(self):
    return None


def progress_bar(initial: int, total: int, enabled: bool) -> Any:
  """A tqdm bar of training steps on stderr, from `initial` to `total`; when not
  `enabled` (progress off, or not process 0) an object with the same methods
  (update, set_postfix, write, close) that only prints what is written."""
  if not enabled:
    return _NoProgress()
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm(
    total=total, initial=initial, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True, mininterval=1.0
  )

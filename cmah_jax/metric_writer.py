"""Metrics to `workdir/metrics.jsonl` (one JSON object per line) from process 0 only.

A light replacement for CLU's writers, which import TensorFlow.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np


def _scalar(v):
  """A number or array -> a JSON value: a Python scalar or nested lists, with NaN / inf as
  None (JSON has no token for them)."""
  v = np.asarray(v)
  return _finite_or_none(v.item() if v.size == 1 else v.tolist())


def _finite_or_none(v):
  if isinstance(v, list):
    return [_finite_or_none(x) for x in v]
  return None if isinstance(v, float) and not math.isfinite(v) else v


class JsonlWriter:
  """Appends `{"step": s, **metrics}` lines; a no-op on processes other than 0."""

  def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
    self.path = os.path.join(workdir, filename)
    self.enabled = jax.process_index() == 0
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for k, v in metrics.items():
      row[k] = _scalar(v)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def truncate_after(self, step: int) -> list[dict]:
    """Drop rows with `step > step` (a resumed run logs those steps again); returns the rows
    kept ([] on processes other than 0, or without a file)."""
    if not self.enabled or not os.path.exists(self.path):
      return []
    rows = [r for r in read_jsonl(self.path) if r.get("step", step) <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:   # replaced whole, so a kill now loses no row
      f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, self.path)
    return rows


def training_seconds(rows: list[dict]) -> float:
  """Seconds of training the rows log: each row with `steps_per_second` closes a window of
  the steps since the previous such row (the first from step 0), so the window took
  (step - previous step) / steps_per_second. Summed over every invocation of a resumed
  run, since rows past its checkpoint are dropped (`truncate_after`) and logged again."""
  total, previous = 0.0, 0
  for row in sorted((r for r in rows if r.get("steps_per_second")), key=lambda r: r["step"]):
    total += (int(row["step"]) - previous) / float(row["steps_per_second"])
    previous = int(row["step"])
  return total


def read_jsonl(path: str) -> list[dict]:
  """The rows (JSON objects, one a line) of a metrics or changes file, for resuming, tests
  and plots, without a line that does not parse as one: the last line of a run killed while
  writing it."""
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict):
        rows.append(row)
  return rows

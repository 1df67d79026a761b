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
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


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
      v = _scalar(v)
      row[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


  def truncate_after(self, step: int) -> None:
    """Drop rows with `step > step` (a resumed run logs those steps again)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    rows = [r for r in read_jsonl(self.path) if r["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)


def read_jsonl(path: str) -> list[dict]:
  """All rows of a metrics file (for tests and plots)."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]

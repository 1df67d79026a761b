"""Timing helpers shared by the benchmark scripts: side-by-side timing and the CPU's name."""
from __future__ import annotations

import platform
import statistics
import subprocess
import time


def time_interleaved(fns: list, runs: int) -> list[tuple[float, float]]:
  """(median, min) seconds per call of each of `fns`, after one warm-up call each. The
  calls go round-robin (`fns[0], fns[1], ..., fns[0], ...`) so that a shared machine's
  changing load hits every method alike."""
  for fn in fns:
    fn()
  ts = [[] for _ in fns]
  for _ in range(runs):
    for fn, t in zip(fns, ts):
      t0 = time.perf_counter()
      fn()
      t.append(time.perf_counter() - t0)
  return [(statistics.median(t), min(t)) for t in ts]


def cpu_model() -> str:
  """The CPU's model name as `lscpu` gives it (else `platform.processor()`)."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return platform.processor() or "unknown CPU"

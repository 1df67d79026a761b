"""Pinning a suite's parallel runs to disjoint CPU sets (`--cpus_per_job`) [ours].

Every run is its own process, and XLA:CPU sizes its thread pools by the CPUs the process may
run on. Unpinned, `--jobs=J` processes each start a pool as large as the whole machine and
contend for every core; pinned, run i of the J running ones gets its own `cpus_per_job`
CPUs (Linux `sched_setaffinity`, set in the child before it starts Python) and a pool of
that size. BENCHMARKS.md ("Parallel runs") compares the two side by side.
"""
from __future__ import annotations

import os
import subprocess


def available_cpus() -> list[int]:
  """The CPUs this process may run on, sorted; raises RuntimeError where the platform cannot
  pin (no `os.sched_getaffinity`: macOS, Windows)."""
  if not hasattr(os, "sched_getaffinity"):
    raise RuntimeError("--cpus_per_job needs Linux CPU affinity (os.sched_setaffinity); "
                       "this platform has none: run without it")
  return sorted(os.sched_getaffinity(0))


def cpu_slots(cpus: list[int], jobs: int, per_job: int) -> list[tuple[int, ...]]:
  """`jobs` disjoint CPU sets of `per_job` CPUs each, in order: slot i is
  `cpus[i * per_job:(i + 1) * per_job]`.

  Raises:
    ValueError: `jobs` or `per_job` below 1, or more CPUs asked for than `cpus` holds
      (the message names both counts).
  """
  if jobs < 1 or per_job < 1:
    raise ValueError(f"cpu_slots: need jobs >= 1 and cpus_per_job >= 1, got {jobs} and "
                     f"{per_job}")
  if jobs * per_job > len(cpus):
    raise ValueError(f"--jobs={jobs} x --cpus_per_job={per_job} = {jobs * per_job} CPUs, "
                     f"but this process may run on {len(cpus)} ({cpus}): lower one of them")
  return [tuple(cpus[i * per_job:(i + 1) * per_job]) for i in range(jobs)]


def popen_pinned(args: list[str], cpus: tuple[int, ...] | None, **kwargs) -> subprocess.Popen:
  """`subprocess.Popen(args, **kwargs)`, the child restricted to `cpus` before it runs
  (None: unrestricted)."""
  if cpus is None:
    return subprocess.Popen(args, **kwargs)
  cpu_set = set(cpus)
  return subprocess.Popen(args, preexec_fn=lambda: os.sched_setaffinity(0, cpu_set), **kwargs)

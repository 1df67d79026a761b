"""Parallel runs of a suite, pinned to their own CPUs (`--cpus_per_job`) or not.

    python benchmarks/bench_jobs.py [--jobs=2] [--cpus_per_job=1] [--steps=150]
        [--repeats=2] [--config=configs/default.py] [--data_dir=work/data]

Starts `--jobs` main-job training runs at once (seeds 0..J-1, fresh workdirs, the launch
environment of `launch/allocator.sh`), the way `python -m cmah_jax.experiments --jobs=J`
runs a suite: once unpinned (every run may use every CPU) and once with run i pinned to CPUs
`cpu_slots(...)[i]` (`cmah_jax.experiments.cpus`, the code the suite uses). Variants
alternate within each repeat, in a rotated order, so drift of a shared machine hits both.

Per run, the train loop's steady state is timed from its first progress line (compilation
and warm-up excluded) to its last: steps/s. Reported per variant: each run's steps/s
(median over repeats), their sum (the machine's throughput in steps/s), and whether each
seed's logged losses and final metrics equal the unpinned run's bit for bit (XLA may
partition its work differently with fewer threads). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench_allocator import launch_env  # noqa: E402  (benchmarks/bench_allocator.py)
from timing import cpu_model  # noqa: E402  (benchmarks/timing.py)

from cmah_jax.experiments import cpus as cpus_lib  # noqa: E402

_STEP_LINE = re.compile(r"^step (\d+)/(\d+) ")
_TIMING_KEYS = ("steps_per_second", "examples_per_second")


def _watch(proc, log, marks):
  """Copy a run's output to its log; note (step, wall time) at each progress line."""
  for line in proc.stdout:
    log.write(line)
    m = _STEP_LINE.match(line)
    if m:
      marks.append((int(m.group(1)), time.perf_counter()))


def run_together(env, python, config, steps, jobs, cpu_sets, log_dir, tag) -> list[dict]:
  """`jobs` runs at once (seed i on `cpu_sets[i]`, None: unpinned); per run: steps/s of
  its steady state and its metrics less timing fields."""
  procs = []
  for seed in range(jobs):
    workdir = tempfile.mkdtemp(prefix="bench_jobs_")
    cmd = [python, "main.py", f"--config={config},steps={steps},seed={seed}",
           f"--workdir={workdir}"]
    log = open(os.path.join(log_dir, f"{tag}-seed{seed}.log"), "w")
    proc = cpus_lib.popen_pinned(cmd, cpu_sets[seed] if cpu_sets else None, cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1)
    marks: list = []
    thread = threading.Thread(target=_watch, args=(proc, log, marks), daemon=True)
    thread.start()
    procs.append((proc, thread, marks, workdir, log, cmd))
  out = []
  for proc, thread, marks, workdir, log, cmd in procs:
    proc.wait()
    thread.join()
    log.close()
    if proc.returncode != 0:
      sys.exit(f"run failed (exit {proc.returncode}): {' '.join(cmd)}; log: {log.name}")
    if len(marks) < 2:
      sys.exit(f"need at least two progress lines: raise --steps; log: {log.name}")
    (s0, w0), (s1, w1) = marks[0], marks[-1]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      metrics = [{k: v for k, v in json.loads(l).items() if k not in _TIMING_KEYS}
                 for l in f if l.strip()]
    shutil.rmtree(workdir, ignore_errors=True)
    out.append({"steps_per_s": (s1 - s0) / (w1 - w0), "metrics": metrics})
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--jobs", type=int, default=2)
  p.add_argument("--cpus_per_job", type=int, default=1)
  p.add_argument("--steps", type=int, default=150,
                 help="train steps per run (the default config logs every 25)")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--config", default="configs/default.py")
  p.add_argument("--data_dir", default="work/data")
  p.add_argument("--python", default=os.path.join(REPO, ".venv", "bin", "python"))
  args = p.parse_args(argv)
  try:
    slots = cpus_lib.cpu_slots(cpus_lib.available_cpus(), args.jobs, args.cpus_per_job)
  except (ValueError, RuntimeError) as e:
    sys.exit(str(e))
  config = f"{args.config}:data_dir={os.path.abspath(args.data_dir)}"
  env, notice = launch_env()
  env["JAX_PLATFORMS"] = "cpu"
  log_dir = tempfile.mkdtemp(prefix="bench_jobs_logs_")
  print(f"# bench_jobs: {datetime.date.today()}, {cpu_model()}, "
        f"{len(cpus_lib.available_cpus())} CPUs; {notice}; logs in {log_dir}", flush=True)
  variants = {"unpinned": None, f"pinned, {args.cpus_per_job} CPU(s) each": slots}
  results: dict = {name: [] for name in variants}
  names = list(variants)
  for rep in range(args.repeats):
    for name in names[rep % len(names):] + names[:rep % len(names)]:
      tag = f"r{rep}-{'pinned' if variants[name] else 'unpinned'}"
      runs = run_together(env, args.python, config, args.steps, args.jobs, variants[name],
                          log_dir, tag)
      results[name].append(runs)
      print(f"[bench_jobs] repeat {rep + 1}/{args.repeats} {name}: "
            + ", ".join(f"{r['steps_per_s']:.2f}" for r in runs) + " steps/s", flush=True)
  reference = results["unpinned"][0]
  print(f"\n`{' '.join(['python', *sys.argv])}`; {args.jobs} runs at once, {args.steps} steps "
        f"each, {args.repeats} repeats (median, min-max)\n")
  print("| variant | steps/s of each run | sum (steps/s) | metrics equal the unpinned run's |")
  print("|---|---|---|---|")
  for name, reps in results.items():
    per_run = []
    for seed in range(args.jobs):
      vals = [rep[seed]["steps_per_s"] for rep in reps]
      per_run.append(f"{statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})")
    sums = [sum(r["steps_per_s"] for r in rep) for rep in reps]
    equal = all(rep[s]["metrics"] == reference[s]["metrics"]
                for rep in reps for s in range(args.jobs))
    print(f"| {name} | {', '.join(per_run)} | {statistics.median(sums):.2f} "
          f"({min(sums):.2f}-{max(sums):.2f}) | {'yes' if equal else 'NO'} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())

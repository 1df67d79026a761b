"""Run a comparison suite: every (method, bits, seed) under one protocol, one table.

  python -m cmah_jax.experiments --suite=main --workdir=work/suite --seeds=3
  python -m cmah_jax.experiments --suite=smoke --config=configs/default.py:runlocal \
      --workdir=/tmp/smoke --seeds=1 --jobs=2
  python -m cmah_jax.experiments --suite=main --workdir=work/suite --dry_run   # the plan
  python -m cmah_jax.experiments --suite=main --workdir=work/suite --merge=F --tables_only

Each run is a separate process (`cmah_jax.experiments.worker`) in
`WORKDIR/runs/<method>/b<bits>-s<seed>-<fingerprint>`; the fingerprint covers the method and
the fully resolved config, so a changed config gets a new directory and never reuses an old
result. A finished run (its report carries the same fingerprint) is skipped; an interrupted
one resumes from its checkpoints. `--jobs` runs several at once. Results are rewritten after
every run: `results.json`, `results.md`, `map_vs_bits.png`.

`--merge=OTHER/results.json` adds the runs another machine (or a deleted suite directory)
finished: a planned run whose fingerprint is there counts as finished (`merged.py`).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from cmah_jax import workdir_lock
from cmah_jax.experiments import cpus as cpus_lib
from cmah_jax.experiments import merged as merged_lib
from cmah_jax.experiments import plan as plan_lib
from cmah_jax.experiments import results as results_lib
from cmah_jax.experiments import worker
from cmah_jax.experiments.suites import SUITES, get_suite

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Base config file (configs/*.py[:args]).",
    lock_config=False)
_SUITE = flags.DEFINE_enum("suite", None, sorted(SUITES), "Which suite.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root directory of the suite.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1 of every run.")
_BITS = flags.DEFINE_list("bits", None, "Only these code lengths, run in this order "
                          "(default: the suite's).")
_METHODS = flags.DEFINE_list("methods", None, "Only these methods, run in this order "
                             "(default: the suite's).")
_JOBS = flags.DEFINE_integer("jobs", 1, "Runs at once.")
_CPUS_PER_JOB = flags.DEFINE_integer(
    "cpus_per_job", 0, "Pin each of the --jobs running runs to its own N CPUs (Linux; "
    "XLA sizes its thread pools to them); 0: unpinned, every run may use every CPU.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan and exit.")
_TABLES_ONLY = flags.DEFINE_bool(
    "tables_only", False, "Train nothing: rewrite results.json/.md and the plot from the "
    "plan's finished and merged runs (at --seeds), e.g. after --merge, then exit.")
_MERGE = flags.DEFINE_list(
    "merge", None, "results.json files of runs finished elsewhere (another machine, a "
    "deleted suite directory): copied once into WORKDIR/merged_results.json; a planned run "
    "whose fingerprint is there counts as finished.")
flags.mark_flags_as_required(["suite", "workdir"])


_fmt = plan_lib.format_duration
INTERRUPTED_EXIT = 130  # the shell's code for a Ctrl-C'd command; also after `kill PID`


def _start(run, action: str | None = None, cpus: tuple[int, ...] | None = None
           ) -> subprocess.Popen:
  os.makedirs(run.workdir, exist_ok=True)
  spec = {"method": run.method.name, "kind": run.method.kind,
          "fingerprint": run.fingerprint, "workdir": run.workdir,
          "config": run.config.to_dict()}
  if action:
    spec["action"] = action
  spec_path = os.path.join(run.workdir, "run.json")
  with open(spec_path, "w") as f:
    json.dump(spec, f, indent=2)
  log = open(os.path.join(run.workdir, "log.txt"), "a")
  return cpus_lib.popen_pinned([sys.executable, "-m", "cmah_jax.experiments.worker", spec_path],
                               cpus, stdout=log, stderr=subprocess.STDOUT)


def collect(suite, runs, root) -> dict:
  """The tables of `runs`: each finished run's rows from its report, or, for a run finished
  elsewhere, its merged rows (`merged.py`)."""
  rows = []
  merged = merged_lib.load(root)
  for r in runs:
    report, merged_rows = plan_lib.finished_where(r, merged)
    rows.extend(results_lib.run_rows(r, report) if report is not None
                else results_lib.relabel(r, merged_rows))
  protocol = next((row["protocol"] for row in rows if row.get("protocol")), "")
  radius = runs[0].config.eval.hamming_radius if runs else 2
  return results_lib.write(root, suite, rows, protocol, radius)


def execute(suite, runs, root: str, jobs: int, collected=None, cpu_sets=None) -> dict:
  """Run every unfinished run (`jobs` at a time), rewriting the results after each.

  `collected`: the runs whose finished results the tables show (default `runs`); the
  whole suite's plan, so a run of a subset (`--methods`, `--bits`) never drops the rest.
  `cpu_sets`: `jobs` disjoint CPU sets (`cpus.cpu_slots`); each running run is pinned to
  a free one (None: unpinned)."""
  collected = runs if collected is None else collected
  if jobs < 1:
    raise ValueError(f"execute: jobs must be at least 1, got {jobs}")
  if cpu_sets is not None and len(cpu_sets) != jobs:
    raise ValueError(f"execute: {len(cpu_sets)} CPU sets for {jobs} jobs")
  free_cpus = list(cpu_sets) if cpu_sets is not None else [None] * jobs  # a run holds one
  merged = merged_lib.load(root)
  todo = []
  for r in runs:
    report, merged_rows = plan_lib.finished_where(r, merged)
    if report is None and not merged_rows:
      todo.append(r)
  # A run another process is working on (a second suite on this root, a main.py on its
  # directory) is left to it; its result joins the tables once it has finished.
  holders = {r.workdir: workdir_lock.holder(r.workdir) for r in todo}
  elsewhere = [r for r in todo if holders[r.workdir]]
  for r in elsewhere:
    print(f"[experiments] skipping {r.name}: in use by "
          f"{workdir_lock.describe_holder(holders[r.workdir])}", flush=True)
  todo = [r for r in todo if not holders[r.workdir]]
  print(f"[experiments] suite {suite.name}: {len(runs)} runs, "
        f"{len(runs) - len(todo) - len(elsewhere)} finished, {len(todo)} to run"
        f"{f', {len(elsewhere)} running elsewhere' if elsewhere else ''}, {jobs} at a time"
        f"{f' (pinned to CPUs {cpu_sets})' if cpu_sets else ''}; results in {root}",
        flush=True)
  # Every finished run the tables show, not only the selected ones: one table, one kind
  # of codes per method.
  add_quantizer = [r for r in collected
                   if r.needs_quantizer() and not workdir_lock.holder(r.workdir)]
  if add_quantizer:
    print(f"[experiments] {len(add_quantizer)} finished run(s) predate the learned quantiser: "
          "fitting it from their final checkpoints first (about a minute each)", flush=True)
  for i, run in enumerate(add_quantizer):
    proc = _start(run, "add_quantizer")
    _PROCS[proc.pid] = proc
    code = proc.wait()
    print(f"[experiments] ITQ {i + 1}/{len(add_quantizer)} {run.name}: "
          f"{'done' if code == 0 else f'FAILED (exit {code}), see log.txt'}", flush=True)
  running: dict = {}
  failed, durations = [], []
  t_start = time.time()
  try:
    while todo or running:
      while todo and len(running) < jobs:
        run, cpus = todo.pop(0), free_cpus.pop(0)
        proc = _start(run, cpus=cpus)
        _PROCS[proc.pid] = proc
        running[proc.pid] = (run, time.time(), cpus)
      for pid, (run, t0, cpus) in list(running.items()):
        proc_done = _poll(pid)
        if proc_done is None:
          continue
        del running[pid]
        free_cpus.append(cpus)
        durations.append(time.time() - t0)
        if proc_done == 0 and run.finished():
          print(f"[experiments] done {run.name} in {_fmt(durations[-1])}", flush=True)
          collect(suite, collected, root)
        elif proc_done == worker.BUSY_EXIT:
          elsewhere.append(run)
          print(f"[experiments] skipping {run.name}: another process took it first; see "
                f"{os.path.join(run.workdir, 'log.txt')}", flush=True)
        else:
          failed.append(run)
          print(f"[experiments] FAILED {run.name} (exit {proc_done}); see "
                f"{os.path.join(run.workdir, 'log.txt')}", flush=True)
        left = len(todo) + len(running)
        eta = sum(durations) / len(durations) * left / max(jobs, 1)
        print(f"[experiments] {len(runs) - left - len(failed) - len(elsewhere)} of "
              f"{len(runs)} finished, {len(failed)} failed, elapsed {_fmt(time.time() - t_start)}, "
              f"ETA {_fmt(eta)}", flush=True)
      time.sleep(1.0)
  except KeyboardInterrupt:
    print("[experiments] interrupted: asking running jobs to checkpoint and stop; run the "
          "same command again to resume", flush=True)
    for pid in running:
      os.kill(pid, signal.SIGTERM)
    for pid in running:
      _wait(pid)
    raise
  data = collect(suite, collected, root)
  if failed:
    raise SystemExit(f"{len(failed)} run(s) failed: " + ", ".join(r.name for r in failed))
  return data


_PROCS: dict = {}  # pid -> Popen of the runs started by this process


def _poll(pid):
  proc = _PROCS.get(pid)
  return None if proc is None else proc.poll()


def _wait(pid):
  proc = _PROCS.get(pid)
  if proc is not None:
    proc.wait()


def _interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def main(argv):
  del argv
  suite = get_suite(_SUITE.value)
  root = os.path.abspath(_WORKDIR.value)
  if _JOBS.value < 1 or _SEEDS.value < 1:
    raise SystemExit(f"[experiments] --jobs={_JOBS.value} --seeds={_SEEDS.value}: both "
                     "must be at least 1")
  try:
    bits = [int(b) for b in _BITS.value] if _BITS.value else None
  except ValueError:
    raise SystemExit(f"[experiments] --bits={','.join(_BITS.value)}: code lengths are "
                     "integers, e.g. --bits=16,64") from None
  try:
    runs = plan_lib.plan(suite, _CONFIG.value, root, seeds=range(_SEEDS.value), bits=bits,
                         methods=_METHODS.value)
    everything = plan_lib.plan(suite, _CONFIG.value, root, seeds=range(_SEEDS.value))
  except ValueError as e:
    raise SystemExit(f"[experiments] {e}") from None
  if not runs:
    raise SystemExit("the suite, --bits and --methods select no run")
  merged = None
  if _MERGE.value:  # a dry run shows the merge without writing it
    try:
      lines, merged = merged_lib.merge_files(root, _MERGE.value,
                                             {r.fingerprint for r in everything},
                                             write=not _DRY_RUN.value)
    except ValueError as e:
      raise SystemExit(str(e)) from None
    print("\n".join(lines), flush=True)
  cpu_sets = None
  if _CPUS_PER_JOB.value:
    try:
      cpu_sets = cpus_lib.cpu_slots(cpus_lib.available_cpus(), _JOBS.value,
                                    _CPUS_PER_JOB.value)
    except (ValueError, RuntimeError) as e:
      raise SystemExit(str(e)) from None
  if _DRY_RUN.value:
    print("\n".join(plan_lib.describe(runs, merged_lib.load(root) if merged is None
                                       else merged)))
    return
  os.makedirs(root, exist_ok=True)
  if _TABLES_ONLY.value:
    data = collect(suite, everything, root)
    print(f"[experiments] {len(data['runs'])} rows of the plan at --seeds={_SEEDS.value} "
          f"in {os.path.join(root, 'results.json')}")
    return
  from cmah_jax.datasets import prepare  # pylint: disable=import-outside-toplevel
  for d in {r.config.dataset for r in runs}:  # once, before parallel jobs could race on it
    prepare.prepare(d.name, d.data_dir, d.config, d.manual_dir)
  signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops it as Ctrl-C does
  try:
    data = execute(suite, runs, root, _JOBS.value, collected=everything, cpu_sets=cpu_sets)
  except KeyboardInterrupt:  # the running jobs have checkpointed and stopped (`execute`)
    raise SystemExit(INTERRUPTED_EXIT) from None
  print(open(os.path.join(root, "results.md")).read())
  print(f"[experiments] {len(data['runs'])} runs in {os.path.join(root, 'results.json')}")


if __name__ == "__main__":
  app.run(main)

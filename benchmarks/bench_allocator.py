"""The main job's train loop under the allocator the launch scripts pick vs glibc's default
(and under any other environment settings, e.g. XLA flags).

    python benchmarks/bench_allocator.py [--steps=50] [--repeats=3] [--data_dir=work/data]
        [--config=configs/default.py] [--variant NAME='VAR=VALUE ...' ...]
    python benchmarks/bench_allocator.py --variants=launch --reference=launch --base=launch \
        --variant nothunk='XLA_FLAGS=--xla_cpu_use_thunk_runtime=false'

Each run is a subprocess of the real main job (`main.py --config=CONFIG:steps=N` with a fresh
--workdir), so it times exactly what `bash launch/local.sh` runs. Variants:
  glibc   the old allocator: LD_PRELOAD, GLIBC_TUNABLES, MALLOC_* and MIMALLOC_* removed;
  launch  the environment `launch/allocator.sh` sets up (what local.sh / test.sh use);
  extra   `--variant NAME='VAR=VALUE ...'`, on top of the `--base` environment (glibc or
          launch; for comparing other allocators or settings, e.g. --variant
          tuned='MALLOC_ARENA_MAX=1', or XLA flags on top of launch).
Runs are interleaved (every repeat runs every variant, in a rotated order), so drift of a
shared machine hits all variants alike.

Per run, the train loop's steady state is measured inside the child, from its first progress
line (after `log_every_steps` steps, so compilation and warm-up are excluded) to its last:
steps/s, user and system CPU seconds per step and minor page faults per step (read from
/proc/PID/stat as the lines arrive). The whole process is also reported (wall time, system
time, minor faults, peak RSS, from wait4). Every run's metrics.jsonl (the loss terms of each
log window and the final retrieval metrics), less its timing fields, must equal the first
`--reference` run's (default glibc) bit for bit; the command exits 1 if not. Prints a
markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CLEARED = ("LD_PRELOAD", "GLIBC_TUNABLES")
_CLEARED_PREFIXES = ("MALLOC_", "MIMALLOC_", "TCMALLOC_", "JE_MALLOC_CONF", "MALLOC_CONF")
_TIMING_KEYS = ("steps_per_second", "examples_per_second")
_STEP_LINE = re.compile(r"^step (\d+)/(\d+) ")
_TICK = os.sysconf("SC_CLK_TCK")


def glibc_env() -> dict:
  """This environment without any allocator preload or tuning: glibc malloc as shipped."""
  return {k: v for k, v in os.environ.items()
          if k not in _CLEARED and not k.startswith(_CLEARED_PREFIXES)}


def launch_env() -> tuple[dict, str]:
  """The environment after `source launch/allocator.sh`, and the notice it printed."""
  script = os.path.join(REPO, "launch", "allocator.sh")
  out = subprocess.run(
      ["bash", "-c", f'source "{script}" >&2 && env -0'], env=glibc_env(), cwd=REPO,
      capture_output=True, check=True)
  env = dict(kv.split("=", 1) for kv in out.stdout.decode().split("\0") if "=" in kv)
  notice = out.stderr.decode().strip().splitlines()
  return env, (notice[-1] if notice else "")


def _proc_stat(pid: int) -> tuple[int, float, float]:
  """(minor faults, user s, system s) of a live process, all its threads included."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  # After the ")" closing comm: fields[0] is state (stat field 3); minflt is field 10,
  # utime 14, stime 15.
  return int(fields[7]), int(fields[11]) / _TICK, int(fields[12]) / _TICK


def run_once(env: dict, python: str, config: str, steps: int, log_path: str) -> dict:
  """One main-job run; returns steady-state loop figures, whole-run figures and metrics."""
  workdir = tempfile.mkdtemp(prefix="bench_allocator_")
  cmd = [python, "main.py", f"--config={config}:steps={steps}" if ":" not in config
         else f"--config={config},steps={steps}", f"--workdir={workdir}"]
  t0 = time.perf_counter()
  marks = []  # (step, wall, minflt, user, sys) at each progress line
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=log, text=True, bufsize=1)
    for line in proc.stdout:
      log.write(line)
      m = _STEP_LINE.match(line)
      if m:
        marks.append((int(m.group(1)), time.perf_counter(), *_proc_stat(proc.pid)))
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    sys.exit(f"run failed (exit {proc.returncode}): {' '.join(cmd)}; log: {log_path}")
  if len(marks) < 2:
    sys.exit(f"need at least two progress lines: raise --steps; log: {log_path}")
  (s0, w0, f0, u0, y0), (s1, w1, f1, u1, y1) = marks[0], marks[-1]
  n = s1 - s0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    metrics = [{k: v for k, v in json.loads(l).items() if k not in _TIMING_KEYS}
               for l in f if l.strip()]
  subprocess.run(["rm", "-rf", workdir], check=False)
  return dict(steps_per_s=n / (w1 - w0), user_per_step=(u1 - u0) / n,
              sys_per_step=(y1 - y0) / n, faults_per_step=(f1 - f0) / n, loop_steps=n,
              wall=wall, sys=ru.ru_stime, user=ru.ru_utime, faults=ru.ru_minflt,
              maxrss_mb=ru.ru_maxrss / 1024, metrics=metrics)


def _med(rows, key, fmt):
  vals = [r[key] for r in rows]
  med = statistics.median(vals)
  if len(vals) == 1:
    return fmt.format(med)
  return f"{fmt.format(med)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=50,
                 help="train steps per run (the default config logs every 25)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--config", default="configs/default.py")
  p.add_argument("--data_dir", default="work/data")
  p.add_argument("--python", default=os.path.join(REPO, ".venv", "bin", "python"))
  p.add_argument("--variants", default="glibc,launch",
                 help="comma-separated built-in variants to run (glibc, launch)")
  p.add_argument("--variant", action="append", default=[], metavar="NAME='VAR=VALUE ...'",
                 help="an extra variant: these variables on top of the --base environment")
  p.add_argument("--base", default="glibc", choices=("glibc", "launch"),
                 help="the environment extra variants start from")
  p.add_argument("--reference", default="glibc", choices=("glibc", "launch"),
                 help="the built-in variant the others are compared with (speed, metrics)")
  p.add_argument("--logs", default=None, help="keep each run's log here (default: a tmp dir)")
  args = p.parse_args(argv)

  config = f"{args.config}:data_dir={os.path.abspath(args.data_dir)}"
  builtins = {"glibc": lambda: (glibc_env(), "glibc malloc, no tuning"), "launch": launch_env}
  built: dict[str, tuple[dict, str]] = {}

  def builtin(name):
    if name not in built:
      built[name] = builtins[name]()
    return built[name]

  variants: dict[str, tuple[dict, str]] = {}
  for name in filter(None, args.variants.split(",")):
    if name not in builtins:
      sys.exit(f"unknown built-in variant {name!r} (glibc, launch; others via --variant)")
    variants[name] = builtin(name)
  base = builtin(args.base)[0]
  for spec in args.variant:
    name, _, assigns = spec.partition("=")
    extra = dict(a.split("=", 1) for a in shlex.split(assigns))
    variants[name] = (dict(base, **extra), f"{args.base} + " + " ".join(
        f"{k}={v}" for k, v in extra.items()))
  ref = args.reference
  if ref not in variants:
    variants = {ref: builtin(ref), **variants}

  logs = args.logs or tempfile.mkdtemp(prefix="bench_allocator_logs_")
  os.makedirs(logs, exist_ok=True)
  print(f"# {len(variants)} variants x {args.repeats} repeats, {args.steps} steps each; "
        f"logs in {logs}", flush=True)
  for name, (env, what) in variants.items():
    print(f"#   {name}: {what or '(environment as is)'}", flush=True)

  names = list(variants)
  results: dict[str, list] = {n: [] for n in names}
  for r in range(args.repeats):
    order = names[r % len(names):] + names[:r % len(names)]  # rotate the order per repeat
    for name in order:
      row = run_once(variants[name][0], args.python, config, args.steps,
                     os.path.join(logs, f"{name}_{r}.log"))
      results[name].append(row)
      print(f"# repeat {r} {name}: {row['steps_per_s']:.3f} steps/s, "
            f"{row['sys_per_step']:.3f} s sys/step, {row['faults_per_step']:,.0f} "
            f"faults/step; whole run {row['wall']:.1f} s, {row['sys']:.1f} s sys, "
            f"{row['faults']:,} faults", flush=True)

  reference = results[ref][0]["metrics"]
  base_sps = statistics.median(r["steps_per_s"] for r in results[ref])
  ok = True
  print()
  print(f"Train loop of `main.py --config={args.config}:steps={args.steps}` "
        f"(steady state: steps {results[ref][0]['loop_steps']} after the first progress "
        f"line); median (min–max) of {args.repeats} interleaved runs.")
  print()
  print(f"| variant | steps/s | x {ref} | user s/step | sys s/step | minor faults/step "
        f"| whole run: wall s | sys s | minor faults | peak RSS MB | metrics = {ref}'s |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
  for name in names:
    rows = results[name]
    same = all(r["metrics"] == reference for r in rows)
    ok &= same
    speed = statistics.median(r["steps_per_s"] for r in rows) / base_sps
    print(f"| {name} | {_med(rows, 'steps_per_s', '{:.2f}')} | {speed:.2f} "
          f"| {_med(rows, 'user_per_step', '{:.3f}')} | {_med(rows, 'sys_per_step', '{:.3f}')} "
          f"| {_med(rows, 'faults_per_step', '{:,.0f}')} | {_med(rows, 'wall', '{:.1f}')} "
          f"| {_med(rows, 'sys', '{:.1f}')} | {_med(rows, 'faults', '{:,.0f}')} "
          f"| {_med(rows, 'maxrss_mb', '{:,.0f}')} | {'yes' if same else 'NO'} |")
  print()
  for name in names:
    print(f"- {name}: {variants[name][1] or '(environment as is)'}")
  n_values = sum(len(m) for m in reference)
  print(f"- metrics compared: {len(reference)} metrics.jsonl records ({n_values} values: "
        "loss terms, grad norm, learning rate per log window; final retrieval metrics)"
        + ("" if ok else " -- MISMATCH"))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())

"""One run of a suite, in its own process: `python -m cmah_jax.experiments.worker RUN.json`.

Exit status: 0 done, `cmah_jax.run.STOPPED_EXIT` stopped by a signal (resumable),
`BUSY_EXIT` the run directory is in use by another process (`cmah_jax.workdir_lock`),
anything else a failure.

RUN.json (written by the suite): {"method", "kind", "fingerprint", "workdir", "config": the
resolved config}. A trained method goes through `cmah_jax.run.run_experiment` (resumable
from its checkpoints); a classic one through `cmah_jax.experiments.classic`. The report gets
`method` and `run_fingerprint`, which the suite reads to know the run is finished. With
`"action": "add_quantizer"` a finished trained run whose report predates the learned
quantiser gets it (`cmah_jax.run.add_quantizer`), without training again.
"""
from __future__ import annotations

import json
import os
import sys

BUSY_EXIT = 4     # another process holds the run's directory (`cmah_jax.workdir_lock`)


def main(argv) -> int:
  if len(argv) != 2:
    print("usage: python -m cmah_jax.experiments.worker RUN.json", file=sys.stderr)
    return 2
  with open(argv[1]) as f:
    spec = json.load(f)
  if hasattr(os, "sched_getaffinity"):  # which CPUs this run may use (`--cpus_per_job`)
    print(f"[worker] {spec['method']} pid {os.getpid()} on CPUs "
          f"{sorted(os.sched_getaffinity(0))}", flush=True)
  from cmah_jax import workdir_lock  # pylint: disable=import-outside-toplevel
  # Held from the first write to the last (the report's run fingerprint), so no other
  # process starts this run meanwhile; `run_experiment`'s own hold passes through.
  try:
    with workdir_lock.hold(spec["workdir"], f"suite run of {spec['method']}"):
      return _run(spec)
  except workdir_lock.WorkdirBusyError as e:
    print(f"[worker] {e}", file=sys.stderr, flush=True)
    return BUSY_EXIT


def _run(spec: dict) -> int:
  from cmah_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from cmah_jax.report import update_report_json  # pylint: disable=import-outside-toplevel
  cfg = config_lib.ExperimentConfig.from_dict(spec["config"])
  workdir = spec["workdir"]
  os.makedirs(workdir, exist_ok=True)
  extra = {"method": spec["method"], "run_fingerprint": spec["fingerprint"]}
  if spec["kind"] == "classic":
    from cmah_jax.experiments import classic  # pylint: disable=import-outside-toplevel
    from cmah_jax.datasets.prepare import prepare_on_every_process  # pylint: disable=import-outside-toplevel
    results = classic.run_classic(spec["method"], cfg, prepare_on_every_process(cfg.dataset))
    results["config"] = cfg.to_dict()
    results["config_fingerprint"] = cfg.fingerprint()
    update_report_json(workdir, extra, results)
    return 0
  from cmah_jax import run  # pylint: disable=import-outside-toplevel
  if spec.get("action") == "add_quantizer":  # a finished run that predates the quantiser
    run.add_quantizer(workdir)
    return 0
  result = run.run_experiment(cfg, workdir)
  if result.stopped:
    return run.STOPPED_EXIT
  update_report_json(workdir, extra)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))

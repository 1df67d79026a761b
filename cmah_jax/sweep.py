"""Train and evaluate one model per code length and write one table.

  python -m cmah_jax.sweep --config=configs/default.py --workdir=work/sweep \
      --bits=16,32,64,128

Each code length runs in `WORKDIR/bits_K` (resumable like any run); the table of mAP@all in
both directions goes to `WORKDIR/sweep.md` and `WORKDIR/sweep.json`. A finished run of the
same config is not run again (a config sized in epochs, the real datasets', has its step
counts filled in from the prepared training split first, as training does). Comparisons
with baselines and seeds:
`python -m cmah_jax.experiments`.
"""
import json
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs.")
_BITS = flags.DEFINE_list("bits", ["16", "32", "64", "128"], "Code lengths.")
flags.mark_flags_as_required(["config", "workdir"])


def sweep_table(rows: list[dict]) -> str:
  lines = ["| bits | mAP i2p | mAP p2i | chance | steps |", "|---|---|---|---|---|"]
  for r in rows:
    b = str(r["bits"])
    lines.append(f"| {b} | {r['map']['i2p'][b]:.4f} | {r['map']['p2i'][b]:.4f} | "
                 f"{r['chance_map']:.4f} | {r['steps']} |")
  return "\n".join(lines) + "\n"


def finished(report_path: str, config) -> bool:
  """Whether `report_path` is the report of a finished run of exactly `config` (its
  resolved config's fingerprint and step count match)."""
  if not os.path.exists(report_path):
    return False
  with open(report_path) as f:
    report = json.load(f)
  return (report.get("config_fingerprint") == config.fingerprint()
          and report.get("steps") == config.total_steps)


def with_schedule(config):
  """`config` (resolved) with every step count known: one sized in epochs (the real
  datasets') prepares its dataset and counts the training examples, as training does, so
  that its fingerprint is the one a finished run's report holds."""
  from cmah_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  if config_lib.schedule_resolved(config):
    return config
  from cmah_jax.datasets.prepare import prepare_on_every_process  # pylint: disable=import-outside-toplevel
  from cmah_jax.protocol import retrieval_sources  # pylint: disable=import-outside-toplevel
  sources = retrieval_sources(prepare_on_every_process(config.dataset), config.eval)
  return config_lib.resolve_schedule(config, len(sources.train))


def main(argv):
  del argv
  from cmah_jax import config as config_lib
  from cmah_jax import resume, run

  rows = []
  for bits in (int(b) for b in _BITS.value):
    config = _CONFIG.value.copy_and_resolve_references()
    config.model.bits = bits
    resolved = config_lib.resolve(config)
    workdir = os.path.join(_WORKDIR.value, f"bits_{bits}")
    report_path = os.path.join(workdir, "report.json")
    if not finished(report_path, with_schedule(resolved)):  # finished runs are not redone
      try:
        result = run.run_experiment(resolved, workdir)
      except resume.ConfigChangedError as e:
        raise SystemExit(f"[sweep] {workdir}: {e}\n(the sweep has no --allow_config_change: "
                         "give it another --workdir)") from None
      if result.stopped:  # by a signal: checkpointed, no report yet
        raise SystemExit(f"[sweep] stopped during {workdir}; the same command resumes it")
    with open(report_path) as f:
      rows.append(json.load(f))
    if rows[-1].get("config_changes"):
      print(f"[sweep] note: {workdir} was resumed with a changed config (report.json "
            "`config_changes`); its row mixes both", flush=True)
  table = sweep_table(rows)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "sweep.md"), "w") as f:
    f.write(table)
  with open(os.path.join(_WORKDIR.value, "sweep.json"), "w") as f:
    json.dump([{k: r[k] for k in ("bits", "map", "chance_map", "steps")}
               for r in rows], f, indent=2)
  print(table)


if __name__ == "__main__":
  app.run(main)

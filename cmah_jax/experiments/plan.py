"""A suite's runs: one (method, bits, seed) each, with its fully resolved config and the
fingerprint that names its directory and decides whether it is finished."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from cmah_jax import config as config_lib
from cmah_jax import workdir_lock
from cmah_jax.experiments.methods import Method, get_method
from cmah_jax.experiments.suites import SUITES, Suite


@dataclasses.dataclass(frozen=True)
class Run:
  method: Method
  bits: int
  seed: int
  config: config_lib.ExperimentConfig   # resolved; classic methods use its data/eval parts
  fingerprint: str                       # of everything that determines the result
  workdir: str

  @property
  def name(self) -> str:
    """`"cmah 16 bits seed 0"`, for logs and plans."""
    return f"{self.method.name} {self.bits} bits seed {self.seed}"

  @property
  def report_path(self) -> str:
    return os.path.join(self.workdir, "report.json")

  def finished_report(self) -> dict | None:
    """The run's report if it exists and was made by exactly this run's config, else None."""
    if not os.path.exists(self.report_path):
      return None
    try:
      with open(self.report_path) as f:
        report = json.load(f)
    except (OSError, ValueError):
      return None
    return report if report.get("run_fingerprint") == self.fingerprint else None

  def finished(self) -> bool:
    """Whether the run's report exists and was made by exactly this run's config."""
    return self.finished_report() is not None

  def needs_quantizer(self, report: dict | None = None) -> bool:
    """A finished trained run whose report predates the learned quantiser ("itq" codes,
    `cmah_jax.quantizer`): the suite adds it from the final checkpoint. `report`: the
    run's `finished_report()` when the caller has it (read here otherwise)."""
    report = self.finished_report() if report is None else report
    return self.method.kind == "train" and report is not None and "itq" not in report

  @property
  def total_steps(self) -> int:
    """Training steps of the run (0 for a classic method; an `epochs` config resolves its
    steps only at training time, counted as 0 here)."""
    return int(self.config.total_steps or 0) if self.method.kind == "train" else 0

  def steps_logged(self) -> int:
    """The last step in the run's `metrics.jsonl` (0 if none): how far an unfinished run
    got (it resumes from its last checkpoint, at most `checkpoint_every_steps` earlier)."""
    path = os.path.join(self.workdir, "metrics.jsonl")
    if not os.path.exists(path):
      return 0
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 4096))
      lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
      try:
        return int(json.loads(line)["step"])
      except (ValueError, KeyError, TypeError):
        continue  # a line cut by the tail window or by an interrupted write
    return 0


# Where a run's files are and how often it logs, checkpoints and batches its evaluation:
# neither its parameters nor its report depend on these (a resumed run may change them,
# `resume.FREE_FIELDS`), so its fingerprint reads them at the values configs/default.py
# gives, which every published run had. Pointing a suite at the same data by another path
# (another machine's, to `--merge` its runs), or checkpointing more often, plans no new run.
FINGERPRINT_AS = {
    "dataset.data_dir": "work/data",
    "dataset.manual_dir": None,
    "log_every_steps": 25,
    "checkpoint_every_steps": 400,
    "keep_checkpoints": 2,
    "eval_every_steps": 0,
    "input.prefetch": 2,
    "input.eval_batch_size": 128,
}


def run_fingerprint(method: Method, cfg: config_lib.ExperimentConfig) -> str:
  """sha256 (16 hex) of the method (name, kind, overrides) and the resolved config
  (`fingerprint_dict`: fields added since at their neutral value are left out). An override
  that pins such a field to that neutral value is left out too: it is the run its method
  was before the field existed (a tuning candidate that pins a weight whose default has
  since changed keeps its runs). A method that does not train reads no loss weight: none
  is fingerprinted (`fingerprint_dict(trains=False)`). A method's `pinned` settings (the
  defaults its runs were recorded under) are not listed: the resolved config holds them.
  A method's `recorded_overrides`, where set, are listed instead of its overrides. The
  fields of `FINGERPRINT_AS` are read at its values."""
  def pins_neutral(key, value):
    field = key.replace("model.overrides.", "model.")  # a model field's override slot
    # compared as the resolved config records it (JSON: a tuple of widths is a list)
    return (field in config_lib.ADDED_LATER
            and json.loads(json.dumps(value)) == config_lib.ADDED_LATER[field])

  listed = method.overrides if method.recorded_overrides is None else method.recorded_overrides
  config = cfg.fingerprint_dict(trains=method.kind == "train")
  for path, value in FINGERPRINT_AS.items():
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  payload = {"method": method.run_name, "kind": method.kind,
             "overrides": [[k, repr(v)] for k, v in listed if not pins_neutral(k, v)],
             "config": config}
  text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(suite: Suite, base_config, root: str, seeds, bits=None, methods=None) -> list[Run]:
  """Every run of `suite` (optionally restricted to `bits` / `methods`), in a fixed order:
  the suite's, or, where `methods` / `bits` are given, theirs (method first, then code
  length, then seed), so that a run of a subset trains what is listed first first.

  Args:
    base_config: the ConfigDict of a config file (e.g. configs/default.py), unchanged by
      this function.
    root: the suite's work directory; runs go to `root/runs/<method>/b<K>-s<seed>-<fp>`.
  Raises:
    ValueError: a method or code length of `methods` / `bits` that the suite does not
      have (named, with the suite's), or two methods that are one run.
  """
  unknown = [m for m in (methods or ()) if m not in suite.methods]
  if unknown:
    homes = {m: [repr(s.name) for s in SUITES.values() if m in s.methods] for m in unknown}
    elsewhere = [f"{m!r} is in suite {', '.join(h)}" for m, h in homes.items() if h]
    raise ValueError(f"suite {suite.name!r} has no method {', '.join(map(repr, unknown))}; "
                     f"its methods: {', '.join(suite.methods)}"
                     + "".join(f"; {e}" for e in elsewhere))
  missing = [b for b in (bits or ()) if b not in suite.code_lengths]
  if missing:
    raise ValueError(f"suite {suite.name!r} has no code length "
                     f"{', '.join(map(str, missing))}; its lengths: "
                     f"{', '.join(map(str, suite.code_lengths))}")
  runs = []
  for names, block_bits in suite.planned_blocks:
    for name in names:
      if methods and name not in methods:
        continue
      method = get_method(name)
      for b in block_bits:
        if bits and b not in bits:
          continue
        for seed in seeds:
          c = base_config.copy_and_resolve_references()
          config_lib.apply_overrides(c, method.pinned + method.overrides)
          c.model.bits, c.seed = int(b), int(seed)
          c.eval.protocol = suite.protocol
          cfg = config_lib.resolve(c)
          fp = run_fingerprint(method, cfg)
          workdir = os.path.join(root, "runs", method.run_name, f"b{b}-s{seed}-{fp[:8]}")
          runs.append(Run(method, int(b), int(seed), cfg, fp, workdir))
  same: dict = {}
  for r in runs:
    same.setdefault(r.workdir, []).append(r.method.name)
  clash = next((names for names in same.values() if len(names) > 1), None)
  if clash:
    raise ValueError(f"methods {' and '.join(clash)} are one run (the same recorded name "
                     "and resolved config); drop one from the suite or give it `recorded_as`"
                     " only once the configs differ")
  methods, bits = list(methods or ()), list(bits or ())
  runs.sort(key=lambda r: (methods.index(r.method.name) if methods else 0,
                           bits.index(r.bits) if bits else 0))  # stable: else the suite's
  return runs


def format_duration(seconds: float) -> str:
  """`75` -> `"1m15s"`, `3700` -> `"1h01m"`."""
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _state(r: Run, report: dict | None, step: int) -> str:
  """A run's state for `describe`: finished (with or without ITQ), running in another
  process (its pid), at its last logged step, or to run."""
  if report is not None:
    return "finished, no ITQ" if r.needs_quantizer(report) else "finished"
  progress = f"at {step}/{r.total_steps}" if step else ""
  owner = workdir_lock.holder(r.workdir)
  if owner:
    return f"running (pid {owner.get('pid')})" + (f" {progress}" if progress else "")
  return progress or "to run"


def finished_where(r: Run, merged: dict) -> tuple[dict | None, list[dict]]:
  """Where `r` finished: `(report, [])` here, `(None, rows)` elsewhere (its fingerprint's
  rows in `merged`, from `merged.load`), `(None, [])` not yet. A report here takes
  precedence over merged rows."""
  report = r.finished_report()
  return report, ([] if report is not None else merged.get(r.fingerprint, []))


def describe(runs: list[Run], merged: dict | None = None) -> list[str]:
  """The plan as text (`--dry_run`): one line per run (finished, finished elsewhere: its
  fingerprint among `merged`'s (`merged.load`), running in another process, at step s/T,
  or to run), then the training steps left and, at the median pace of the finished trained
  runs, the machine time they need."""
  lines, left, paces, todo, by_epochs = [], 0, [], 0, []
  merged = merged or {}
  for r in runs:
    report, merged_rows = finished_where(r, merged)
    if merged_rows:
      lines.append(f"{r.name:40s} {r.method.kind:8s} {'finished elsewhere (merged)':32s} "
                   f"{r.workdir}")
      # The row that carries the run's training time (a sign(h) row of it does not).
      row = next((x for x in merged_rows if x.get("train_seconds")), {})
      if r.total_steps and row.get("train_seconds") and row.get("steps"):
        paces.append(row["train_seconds"] / row["steps"])
      continue
    step = 0 if report else r.steps_logged()
    state = _state(r, report, step)
    lines.append(f"{r.name:40s} {r.method.kind:8s} {state:32s} {r.workdir}")
    if report is None:
      todo += 1
      left += max(r.total_steps - step, 0)
      if r.method.kind == "train" and r.config.total_steps is None:
        by_epochs.append(r)
    elif r.total_steps and report.get("train_seconds") and report.get("steps"):
      paces.append(report["train_seconds"] / report["steps"])
  line = f"{len(runs) - todo} finished, {todo} to run: {left} training steps left"
  if by_epochs:
    epochs = sorted({float(r.config.epochs) for r in by_epochs})
    line += (f" (not counting {len(by_epochs)} run(s) sized in epochs, "
             f"{'/'.join(f'{e:g}' for e in epochs)} each: their steps are fixed from the "
             "prepared train split when they start)")
  if paces and left:
    pace = sorted(paces)[len(paces) // 2]
    line += (f", about {format_duration(left * pace)} of training at the finished runs' "
             f"median {pace:.2f} s/step (their wall-clock pace, slower where jobs shared "
             "the machine; evaluation not counted)")
  return lines + [line]

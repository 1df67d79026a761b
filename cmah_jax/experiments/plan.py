"""A suite's runs: one (method, bits, seed) each, with its fully resolved config and the
fingerprint that names its directory and decides whether it is finished."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from cmah_jax import config as config_lib
from cmah_jax.experiments.methods import Method, apply_overrides, get_method
from cmah_jax.experiments.suites import Suite


@dataclasses.dataclass(frozen=True)
class Run:
  method: Method
  bits: int
  seed: int
  config: config_lib.ExperimentConfig   # resolved; classic methods use its data/eval parts
  fingerprint: str                       # of everything that determines the result
  workdir: str

  @property
  def report_path(self) -> str:
    return os.path.join(self.workdir, "report.json")

  def finished(self) -> bool:
    """Whether the run's report exists and was made by exactly this run's config."""
    if not os.path.exists(self.report_path):
      return False
    try:
      with open(self.report_path) as f:
        report = json.load(f)
    except (OSError, ValueError):
      return False
    return report.get("run_fingerprint") == self.fingerprint


def run_fingerprint(method: Method, cfg: config_lib.ExperimentConfig) -> str:
  """sha256 (16 hex) of the method (name, kind, overrides) and the resolved config
  (`fingerprint_dict`: fields added since at their neutral value are left out)."""
  payload = {"method": method.name, "kind": method.kind,
             "overrides": [[k, repr(v)] for k, v in method.overrides],
             "config": cfg.fingerprint_dict()}
  text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(suite: Suite, base_config, root: str, seeds, bits=None, methods=None) -> list[Run]:
  """Every run of `suite` (optionally restricted to `bits` / `methods`), in a fixed order.

  Args:
    base_config: the ConfigDict of a config file (e.g. configs/default.py), unchanged by
      this function.
    root: the suite's work directory; runs go to `root/runs/<method>/b<K>-s<seed>-<fp>`.
  """
  runs = []
  for names, block_bits in suite.blocks:
    for name in names:
      if methods and name not in methods:
        continue
      method = get_method(name)
      for b in block_bits:
        if bits and b not in bits:
          continue
        for seed in seeds:
          c = base_config.copy_and_resolve_references()
          apply_overrides(c, method.overrides)
          c.model.bits, c.seed = int(b), int(seed)
          c.eval.protocol = suite.protocol
          cfg = config_lib.resolve(c)
          fp = run_fingerprint(method, cfg)
          workdir = os.path.join(root, "runs", name, f"b{b}-s{seed}-{fp[:8]}")
          runs.append(Run(method, int(b), int(seed), cfg, fp, workdir))
  return runs

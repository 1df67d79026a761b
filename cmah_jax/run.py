"""A run: train and evaluate (`cmah_jax.train`), then write the retrieval report
(`cmah_jax.report`) on process 0. `main.py` and the sweep call `run_experiment`."""
from __future__ import annotations

import jax
from jax.experimental import multihost_utils

from cmah_jax import train


def run_experiment(config, workdir: str, devices=None, *,
                   allow_config_change: bool = False) -> train.TrainResult:
  """`train.train_and_evaluate` (`allow_config_change`: resume a checkpoint written with
  another config, see `cmah_jax.resume`), then `report.json`, `report.md` and figures in
  `workdir` (not when the run stopped early on a signal)."""
  result = train.train_and_evaluate(config, workdir, devices=devices,
                                    allow_config_change=allow_config_change)
  if result.results is not None:
    if jax.process_index() == 0:
      from cmah_jax import report  # pylint: disable=import-outside-toplevel (matplotlib)
      path = report.write_report(workdir, result.results, result.config, result.builder,
                                 result.sources)
      train.log("Report: %s", path)
  if jax.process_count() > 1:
    # No process may exit while another still talks to the coordination service (the
    # leader's exit would abort the others).
    multihost_utils.sync_global_devices("cmah_run_done")
  return result

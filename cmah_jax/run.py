"""A run: train and evaluate (`cmah_jax.train`), then write the retrieval report
(`cmah_jax.report`) on process 0. `main.py` and the sweep call `run_experiment`."""
from __future__ import annotations

import json
import os

import jax
from jax.experimental import multihost_utils

from cmah_jax import checkpointing, multihost, train, workdir_lock

# Exit status of a process whose run was stopped by a signal with a checkpoint saved
# (`TrainResult.stopped`): resumable, not finished. `main.py` and the suite's workers.
STOPPED_EXIT = 3


def run_experiment(config, workdir: str, devices=None, *,
                   allow_config_change: bool = False) -> train.TrainResult:
  """`train.train_and_evaluate` (`allow_config_change`: resume a checkpoint written with
  another config, see `cmah_jax.resume`), then `report.json`, `report.md` and figures in
  `workdir` (not when the run stopped early on a signal).

  Raises:
    workdir_lock.WorkdirBusyError: another live process uses `workdir` (it is named).
  """
  checkpointing.check_writable(checkpointing.local_directory(workdir, "workdir"), "workdir")
  with workdir_lock.hold(workdir, "training"):
    result, error = None, None
    try:
      result = _train_and_report(config, workdir, devices, allow_config_change)
    except Exception as e:  # pylint: disable=broad-except  (e.g. the report, process 0 only)
      error = e
    multihost.raise_if_any_failed(error, "training or writing the report")
  if jax.process_count() > 1:
    # No process may exit while another still talks to the coordination service (the
    # leader's exit would abort the others).
    multihost_utils.sync_global_devices("cmah_run_done")
  return result


def _train_and_report(config, workdir, devices, allow_config_change) -> train.TrainResult:
  result = train.train_and_evaluate(config, workdir, devices=devices,
                                    allow_config_change=allow_config_change)
  if result.results is not None:
    if jax.process_index() == 0:
      from cmah_jax import report  # pylint: disable=import-outside-toplevel (matplotlib)
      path = report.write_report(workdir, result.results, result.config, result.builder,
                                 result.sources)
      train.log("Report: %s", path)
  return result


def add_quantizer(workdir: str) -> dict:
  """For a finished run whose report predates the learned quantiser: fit it on the final
  checkpoint's training codes (`quantizer.npz`), score its codes, and add them to
  `report.json` (as "itq") and `report.md`. Training is not repeated.

  Returns:
    the updated report.
  Raises:
    FileNotFoundError: no report.json in `workdir`; ValueError: the latest checkpoint is
    not the step the report was written at; workdir_lock.WorkdirBusyError: another live
    process uses `workdir`.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  path = os.path.join(workdir, "report.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no report; train the run first")
  with open(path) as f:
    report = json.load(f)
  with workdir_lock.hold(workdir, "fitting the learned quantiser"):
    return _add_quantizer(workdir, report)


def _add_quantizer(workdir: str, report: dict) -> dict:
  from cmah_jax import quantizer as quantizer_lib  # pylint: disable=import-outside-toplevel
  from cmah_jax import report as report_lib  # pylint: disable=import-outside-toplevel
  from cmah_jax.evaluate import RetrievalEvaluator  # pylint: disable=import-outside-toplevel
  from cmah_jax.inference import load_trained  # pylint: disable=import-outside-toplevel

  trained = load_trained(workdir, codes="sign")
  if report.get("steps") is not None and trained.step != int(report["steps"]):
    raise ValueError(f"{workdir}: latest checkpoint is step {trained.step}, the report was "
                     f"written at step {report['steps']}")
  evaluator = RetrievalEvaluator.for_run(trained)
  quantizer = evaluator.fit_quantizer(trained.params)
  results = evaluator.evaluate(trained.params, quantizer)
  report = dict(report, itq=report_lib.json_ready(results["itq"]))
  if jax.process_index() == 0:
    quantizer_lib.save(workdir, quantizer, step=trained.step)
    report_lib.update_report_json(workdir, {}, report)
    report_lib.write_markdown(os.path.join(workdir, "report.md"), report, trained.config,
                              report.get("config_changes", []))
  return report

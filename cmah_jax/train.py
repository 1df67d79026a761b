"""Training of CMAH: `train_and_evaluate(config, workdir)`.

One code path from one CPU to a multi-host pod: a 1D mesh over every device of every
process, the global batch sharded on `"data"`, params and optimizer state replicated, a
train step compiled once ahead of time with the state donated. PRNG: `run_keys(config.seed)`
gives an init key and a train key; step `s` uses `step_keys(train_key, s)` (its `fold_in`,
split into mask and dropout keys) and the input pipeline derives its augmentation from `(config.seed, s)`, so no key lives in the loop
state and a resumed run continues exactly.

The story of a run, one function each: the dataset
(`datasets.prepare.prepare_on_every_process`; then the schedule is sized from its train
split: `config.resolve_schedule`), `init_or_restore_state` (the newest intact checkpoint,
written with the same config: `resume_check`), `compile_train_step`, the loop
(`MetricsWindow` logs, checkpoints, periodic evaluation, stop on signal), and the final
evaluation. Writing the report is the caller's (`cmah_jax.run`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from cmah_jax import checkpointing, collectives, resume
from cmah_jax import config as config_lib
from cmah_jax import sharding as shd
from cmah_jax import quantizer as quantizer_lib
from cmah_jax.datasets import prepare as prepare_lib
from cmah_jax.evaluate import RetrievalEvaluator, flat_metrics, summary
from cmah_jax.input import TrainPipeline
from cmah_jax.metric_writer import JsonlWriter, training_seconds
from cmah_jax.models import CMAH, init_variables
from cmah_jax.models.hash_head import hash_sharpness
from cmah_jax.objectives import get_objective
from cmah_jax.optim import describe_schedule, make_optimizer
from cmah_jax.protocol import retrieval_sources


# ----------------------------------------------------------------------------- train step
def train_outputs(model: CMAH, params, batch: dict, mask_key, dropout_key, **kwargs) -> dict:
  """`model`'s training-mode outputs on a train batch (`TrainPipeline`'s keys): both
  modalities, and the second image view when the batch has one ("images_second");
  `kwargs` go to `CMAH.__call__` (e.g. `hash_sharpness`)."""
  return model.apply({"params": params}, images=batch["images"], points=batch["points"],
                     train=True, mask_key=mask_key, rngs={"dropout": dropout_key},
                     second_images=batch.get("images_second"), **kwargs)


def run_keys(seed: int):
  """`(init_key, train_key)` of a run: the parameters' initialisation, and the key whose
  `step_keys` every training step uses."""
  init_key, train_key = jax.random.split(jax.random.key(seed))
  return init_key, train_key


def step_keys(train_key, step):
  """`(mask_key, dropout_key)` of training step `step` (int or int32 []): `fold_in` of the
  run's `train_key`, split in two."""
  mask_key, dropout_key = jax.random.split(jax.random.fold_in(train_key, step))
  return mask_key, dropout_key


def make_train_step(model: CMAH, tx, schedule, objective, root_key, total_steps=None):
  """`(state, batch) -> (state, metrics)`, a pure function to be jitted.

  With `model.config.hash_sharpness_end > 1` the hash heads' beta follows HashNet's
  continuation (`models.hash_head.hash_sharpness`) over `total_steps`, logged as
  "hash_sharpness".

  state: `{"step": int32 [], "params": ..., "opt_state": ...}` plus `"loss_state"` when
  the objective carries one (`cmah_jax.objectives`);
  batch: `{"points": [B, N, 3] f32, "images": [B, H, W, 3] f32, "label": [B] int32,
  "index": [B] int32}`, and "images_second" [B, H, W, 3] f32 with `input.second_view`.
  """

  sharpness_end = float(model.config.hash_sharpness_end)
  if sharpness_end != 1 and not total_steps:
    raise ValueError(f"make_train_step: hash_sharpness_end={sharpness_end} needs the run's "
                     f"total_steps (got {total_steps!r})")

  def train_step(state, batch):
    step = state["step"]
    mask_key, dropout_key = step_keys(root_key, step)
    sharp = {} if sharpness_end == 1 else {
        "hash_sharpness": hash_sharpness(step, total_steps, sharpness_end)}

    def loss_fn(params):
      out = train_outputs(model, params, batch, mask_key, dropout_key, **sharp)
      total, terms, loss_state = objective(out, batch, state.get("loss_state"), step)
      return total, (terms, loss_state)

    (_, (terms, loss_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(terms)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["learning_rate"] = schedule(step)
    if sharp:
      metrics["hash_sharpness"] = sharp["hash_sharpness"]
    new_state = {"step": step + 1, "params": params, "opt_state": opt_state}
    if "loss_state" in state:
      new_state["loss_state"] = loss_state
    return new_state, metrics

  return train_step


# ----------------------------------------------------------------------------- helpers
class _StopSignal:
  """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.flag = threading.Event()
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self.flag.set()

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self) -> bool:
    """Whether any process was asked to stop (agreed across processes)."""
    local = self.flag.is_set()
    if jax.process_count() == 1:
      return local
    return bool(np.any(multihost_utils.process_allgather(np.array([local]))))


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def log(msg: str, *args):
  """Progress for people: stdout of process 0 (absl's log gets it at DEBUG level)."""
  if jax.process_index() == 0:
    logging.debug(msg, *args)
    print(msg % args if args else msg, flush=True)


class MetricsWindow:
  """Device metrics of the steps since the last log, fetched (and checked) together."""

  def __init__(self, start_step: int, batch_size: int, seconds: float = 0.0):
    self.batch_size = batch_size
    self.seconds = seconds  # training time of closed windows (and of earlier invocations)
    self.restart(start_step)

  def restart(self, step: int):
    """Start a new, empty window at `step`."""
    self.rows, self.start, self.t0 = [], step, time.perf_counter()

  def add(self, metrics: dict):
    self.rows.append(metrics)

  def close(self, done: int, last_checkpoint) -> dict:
    """Fetch the window, raise on NaN/inf naming the step, return the means + throughput."""
    fetched = jax.device_get(self.rows)
    for i, m in enumerate(fetched):
      bad = [k for k, v in m.items() if not np.all(np.isfinite(v))]
      if bad:
        raise FloatingPointError(
            f"Non-finite {bad} at step {self.start + i + 1} (window of steps "
            f"{self.start + 1}-{done}); lower config.optim.base_learning_rate or check the "
            f"inputs. Last good checkpoint: {last_checkpoint}")
    elapsed = time.perf_counter() - self.t0
    self.seconds += elapsed
    steps_per_s = len(fetched) / elapsed
    out = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
    out["steps_per_second"] = steps_per_s
    out["examples_per_second"] = steps_per_s * self.batch_size
    self.restart(done)
    return out


_PROGRESS_TERMS = {"loss/contrastive": "c", "loss/point_recon": "3d",
                   "loss/image_recon": "2d"}


def loss_terms(metrics) -> list[str]:
  """The names of the loss terms among an objective's logged `metrics` ("loss/...", not
  the total), sorted."""
  return sorted(k for k in metrics if k.startswith("loss/") and k != "loss/total")


def progress_terms(m: dict) -> str:
  """`"c 1.2345, 3d 0.0123, 2d 0.3456"`, then every other logged term an objective adds
  (`"relation 0.5500"`, ...), sorted: the bracket of the progress line."""
  named = [f"{short} {m[k]:.4f}" for k, short in _PROGRESS_TERMS.items() if k in m]
  extra = [k for k in loss_terms(m) if k not in _PROGRESS_TERMS]
  return ", ".join(named + [f"{k.removeprefix('loss/')} {m[k]:.4f}" for k in extra])


def _log_progress(m: dict, done: int, total: int):
  log("step %d/%d (%.0f%%) loss %.4f [%s] lr %.2e %.2f steps/s %.0f ex/s ETA %s", done,
      total, 100 * done / total, m["loss/total"], progress_terms(m), m["learning_rate"],
      m["steps_per_second"], m["examples_per_second"],
      format_eta((total - done) / max(m["steps_per_second"], 1e-9)))


# ----------------------------------------------------------------------------- phases
CONFIG_FILE = "config.json"


def write_config(workdir: str, cfg: config_lib.ExperimentConfig) -> str:
  """Write the resolved config and its fingerprint to `workdir/config.json` (atomically)."""
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()}, f, indent=2)
  os.replace(tmp, path)
  return path


def read_config(workdir: str) -> config_lib.ExperimentConfig:
  """The resolved config a run in `workdir` was started with."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a training run's workdir?")
  with open(path) as f:
    return config_lib.ExperimentConfig.from_dict(json.load(f)["config"])


def _legacy_config(workdir: str) -> dict | None:
  """`workdir/config.json`'s config dict (for checkpoints written without one), or None."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      return json.load(f)["config"]
  except (OSError, ValueError, KeyError):
    return None


def resume_check(cfg: config_lib.ExperimentConfig, workdir: str, directory: str,
                 allow_config_change: bool):
  """`check(step, saved_config)` for `checkpointing.restore_latest`: compares the config
  stored with the checkpoint (or, for older checkpoints, `workdir/config.json`) with `cfg`
  (`cmah_jax.resume`); raises `ConfigChangedError` unless allowed; an allowed change is
  logged and recorded in `workdir/config_changes.jsonl`."""
  defaults = config_lib.resolve(config_lib.base_config()).to_dict()

  def check(step, saved):
    where = f"checkpoint step {step} in {directory}"
    if saved is None:
      saved = _legacy_config(workdir)
      where += f" (no config stored with it; compared with {CONFIG_FILE})"
      if saved is None:
        logging.warning("%s has no stored config to compare with", where)
    changes = resume.check_config(saved, cfg, where=where, defaults=defaults,
                                  allow_change=allow_config_change)
    if changes:
      log("Config changed since %s (allowed by --allow_config_change):\n%s", where,
          resume.format_diff(changes))
      if jax.process_index() == 0:
        resume.record_change(workdir, step, changes)

  return check


def init_or_restore_state(cfg: config_lib.ExperimentConfig, model: CMAH, tx, mesh, manager,
                          init_key, loss_state=None, check=None):
  """The train state: the newest intact checkpoint of `manager` (damaged newer ones are
  named and set aside; `check(step, saved_config)` vets each, see `resume_check`), else a
  warm start from `cfg.init_from`, else a fresh initialisation from `init_key`; replicated
  on `mesh`. `loss_state` (the objective's initial carried state, if any) joins the state.

  Returns:
    (state, restored_step or None).
  """
  replicated = shd.replicated(mesh)

  def init_state(key):
    params = init_variables(model, key)["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    if loss_state:
      state["loss_state"] = loss_state
    return state

  abstract_state = jax.eval_shape(init_state, init_key)
  shardings = jax.tree.map(lambda _: replicated, abstract_state)
  num_params = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))
  log("Model %s, %d bits: %.2fM parameters", cfg.variant, cfg.model.bits, num_params / 1e6)
  restored = checkpointing.restore_latest(
      manager, checkpointing.abstract_like(abstract_state, shardings), check=check)
  if restored is not None:
    for step, reason in restored.damaged:
      log("Checkpoint step %d in %s is damaged (%s); moved to %s", step, manager.directory,
          reason, restored.damaged_dir)
    log("Resumed from %s at step %d", manager.directory, restored.step)
    return restored.state, restored.step
  state = jax.jit(init_state, out_shardings=shardings)(init_key)
  if cfg.init_from:
    abs_params = checkpointing.abstract_like(abstract_state["params"], shardings["params"])
    params = checkpointing.restore_params(cfg.init_from, abs_params)
    opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
    state = dict(state, params=params, opt_state=opt_state)
  return state, None


def compile_train_step(train_step, state, batch, mesh):
  """`train_step` compiled ahead of time for these shapes, state donated (a retrace would
  be an error), with its memory use logged."""
  replicated = shd.replicated(mesh)
  state_shardings = jax.tree.map(lambda _: replicated, state)
  jitted = jax.jit(train_step, in_shardings=(state_shardings, shd.data_sharding(mesh)),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
  t0 = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  log("Compiled the train step in %.1fs", time.perf_counter() - t0)
  if jax.process_count() > 1 and jax.devices()[0].platform == "cpu":
    collectives.check_for_gloo(compiled.as_text())
  mem = compiled.memory_analysis()
  if mem is not None:
    log("Train step memory per device: args %.1f MB, temps %.1f MB, outputs %.1f MB",
        mem.argument_size_in_bytes / 2**20, mem.temp_size_in_bytes / 2**20,
        mem.output_size_in_bytes / 2**20)
  return compiled


@dataclasses.dataclass
class TrainResult:
  """The final replicated train state, the metrics (last logged train metrics and the
  retrieval results, or `stopped_at`), the module, the resolved config, and the full
  retrieval results (None when stopped early) and the protocol's sources, for the
  report."""
  state: Any
  metrics: dict
  model: CMAH
  config: config_lib.ExperimentConfig
  results: dict | None = None
  builder: Any = None
  sources: Any = None

  @property
  def stopped(self) -> bool:
    """Stopped by a signal with a checkpoint saved: resumable, not finished (no results)."""
    return "stopped_at" in self.metrics


# ----------------------------------------------------------------------------- main entry
def train_and_evaluate(config, workdir: str, devices=None, *,
                       allow_config_change: bool = False) -> TrainResult:
  """Train on the dataset's train split, then evaluate retrieval.

  Args:
    config: a config (`configs/*.py`, a ConfigDict) or a resolved `ExperimentConfig`.
    workdir: checkpoints and metrics.jsonl go here; a run resumes from its newest intact
      checkpoint, which must have been written with the same config (`cmah_jax.resume`).
    devices: the devices of the mesh (default: all devices of all processes).
    allow_config_change: resume even if the config differs from the checkpoint's in
      fields that change the training (e.g. more steps); the change is logged.
  Raises:
    resume.ConfigChangedError: the checkpoint was written with another config (the changed
      fields are listed).
    checkpointing.CheckpointWriteError: `workdir` is not writable, or a checkpoint could
      not be written (the previous one is left intact).
  """
  cfg = config_lib.resolve(config)
  workdir = checkpointing.local_directory(workdir, "workdir")
  checkpointing.check_writable(workdir, "workdir")
  writer = JsonlWriter(workdir)

  mesh = shd.make_mesh(devices)
  shd.check_batch_divisible(cfg.input.batch_size, mesh, "input.batch_size")
  shd.check_batch_divisible(cfg.input.eval_batch_size, mesh, "input.eval_batch_size")
  log("Mesh: %d devices (%s) over %d process(es); global batch %d", mesh.devices.size,
      jax.devices()[0].platform, jax.process_count(), cfg.input.batch_size)

  model = CMAH(cfg.model)
  init_key, train_key = run_keys(cfg.seed)
  builder = prepare_lib.prepare_on_every_process(cfg.dataset, log=log)
  objective = get_objective(cfg.loss, cfg.model.bits, cfg.seed)
  sources = retrieval_sources(builder, cfg.eval)
  log("Protocol: %s", sources.description)
  cfg = config_lib.resolve_schedule(cfg, len(sources.train))
  log("%s", describe_schedule(cfg, len(sources.train)))
  tx, schedule = make_optimizer(cfg.optim, cfg.input.batch_size, cfg.total_steps,
                                restart_step=cfg.loss.reconstruction_only_steps)
  evaluator = RetrievalEvaluator(model, sources, cfg.input, mesh, eval_spec=cfg.eval,
                                 seed=cfg.seed)

  ckpt_dir = os.path.join(workdir, "checkpoints")
  manager = checkpointing.make_manager(
      ckpt_dir, max_to_keep=cfg.keep_checkpoints,
      step_metadata={checkpointing.CONFIG_KEY: cfg.to_dict()})
  try:
    loss_state = objective.init_state(len(sources.train))
    state, restored = init_or_restore_state(
        cfg, model, tx, mesh, manager, init_key, loss_state,
        check=resume_check(cfg, workdir, ckpt_dir, allow_config_change))
    if jax.process_index() == 0:
      write_config(workdir, cfg)  # after the resume check: the config this run goes on with
    # Rows past the checkpoint (or all, when starting afresh after a run killed before its
    # first checkpoint) are logged again.
    logged = writer.truncate_after(restored or 0)
    start_step = int(jax.device_get(state["step"]))
    train_pipe = TrainPipeline(sources.train, "train", cfg.input, mesh, seed=cfg.seed,
                               start_step=start_step)
    it = iter(train_pipe)
    first_batch = next(it)  # shapes for compilation (and the first step's batch)
    step_fn = compile_train_step(make_train_step(model, tx, schedule, objective, train_key,
                                                 total_steps=cfg.total_steps),
                                 state, first_batch, mesh)

    total = cfg.total_steps
    # Training time of the whole run: earlier invocations' from their logged windows.
    window = MetricsWindow(start_step, cfg.input.batch_size, training_seconds(logged))
    last_metrics: dict = {}
    with _StopSignal() as stop, train_pipe:
      for step in range(start_step, total):
        batch = first_batch if step == start_step else next(it)
        state, metrics = step_fn(state, batch)
        window.add(metrics)
        done = step + 1
        is_last = done == total
        evaluate_now = bool(cfg.eval_every_steps) and done % cfg.eval_every_steps == 0 \
            and not is_last
        # A stop is asked before an evaluation (a grace period may be shorter than it).
        # Multi-process runs agree on it at log and evaluation steps (a collective); one
        # process checks every step.
        check = (jax.process_count() == 1 or done % cfg.log_every_steps == 0
                 or evaluate_now)
        stopping = check and stop.requested()
        save_now = done % cfg.checkpoint_every_steps == 0 or is_last or stopping
        # Metrics are fetched (and checked for NaN/inf) at log steps, before every
        # checkpoint (a non-finite state is never saved) and before an evaluation (whose
        # time is not training).
        if done % cfg.log_every_steps == 0 or save_now or evaluate_now:
          last_metrics = window.close(done, manager.latest_step())
          writer.write(done, last_metrics)
          _log_progress(last_metrics, done, total)
        if save_now:
          checkpointing.save(manager, done, state, force=True)
          # Asked while it saved (every process saves at this step: they agree here too).
          stopping = stopping or stop.requested()
        if stopping:
          checkpointing.wait(manager)
          log("Stopped by signal at step %d; checkpoint saved. Re-run to resume.", done)
          return TrainResult(state, dict(last_metrics, stopped_at=done), model, cfg,
                             builder=builder, sources=sources)
        if evaluate_now:
          results = evaluator.evaluate(state["params"])
          writer.write(done, flat_metrics(results))
          log("eval @%d: %s", done, summary(results))
          window.restart(done)
    checkpointing.wait(manager)
  finally:
    checkpointing.close(manager)

  t_eval = time.perf_counter()
  steps_done = int(jax.device_get(state["step"]))
  # The learned quantiser [ours, after ITQ]: fitted on the training objects' continuous
  # codes, saved beside the checkpoints, scored beside the network's own sign codes.
  log("Fitting the learned quantiser (ITQ) on the %d training objects' codes",
      len(sources.train))
  quantizer = evaluator.fit_quantizer(state["params"])
  if jax.process_index() == 0:
    quantizer_lib.save(workdir, quantizer, step=steps_done)
  results = evaluator.evaluate(state["params"], quantizer)
  results["eval_seconds"] = time.perf_counter() - t_eval
  results["steps"] = steps_done
  results["train_seconds"] = window.seconds  # of the whole run, over every invocation
  writer.write(results["steps"], flat_metrics(results))
  log("Retrieval: %s", summary(results))
  return TrainResult(state, dict(last_metrics, **flat_metrics(results)), model, cfg,
                     results=results, builder=builder, sources=sources)

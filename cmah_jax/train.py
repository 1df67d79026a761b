"""Training and evaluation of CMAH: `train_and_evaluate(config, workdir)`.

One code path from one CPU to a multi-host pod: a 1D mesh over every device of every
process, the global batch sharded on `"data"`, params and optimizer state replicated, a
train step compiled once ahead of time with the state donated. PRNG: one root key from
`config.seed`; step `s` uses `fold_in(root, s)` (split into mask and dropout keys) and the
input pipeline derives its augmentation from `(config.seed, s)`, so no key lives in the loop
state and a resumed run continues exactly.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from cmah_jax import checkpointing, evaluate, losses, report
from cmah_jax import sharding as shd
from cmah_jax.data import pipeline
from cmah_jax.data import prepare as prepare_lib
from cmah_jax.metric_writer import JsonlWriter
from cmah_jax.models import CMAH, init_variables, resolve_config


# ----------------------------------------------------------------------------- model
def build_model(config: ml_collections.ConfigDict) -> CMAH:
  """The CMAH module of `config.model`, sized for `config.input` where that is set."""
  overrides = dict(config.model.get("overrides", None) or {})
  for field in ("num_points", "image_size"):
    value = config.input.get(field, None)
    if value is None:
      continue
    if field in overrides and overrides[field] != value:
      raise ValueError(
          f"config.input.{field}={value} disagrees with config.model.overrides."
          f"{field}={overrides[field]}; set one of them")
    overrides[field] = value
  return CMAH(resolve_config(config.model.variant, config.model.bits, overrides))


def input_config_for(config: ml_collections.ConfigDict, model: CMAH):
  """`config.input` with `num_points`/`image_size` filled in from the model."""
  cfg = ml_collections.ConfigDict(config.input.to_dict())
  cfg.num_points = model.num_points
  cfg.image_size = model.image_size
  return cfg


# ----------------------------------------------------------------------------- optimizer
def learning_rate_schedule(config: ml_collections.ConfigDict):
  """Linear warm-up then cosine decay; peak = base lr * batch / base batch [Point-MAE]."""
  o = config.optim
  peak = o.base_learning_rate * config.input.batch_size / o.learning_rate_base_batch
  warmup = min(int(o.warmup_steps), max(int(config.total_steps) - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(int(config.total_steps), warmup + 1),
      end_value=peak * o.min_learning_rate_ratio)


def _decay_mask(params):
  """Weight decay on matrices only, not on biases, norms or embeddings' 1D vectors [MAE]."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: ml_collections.ConfigDict):
  o = config.optim
  schedule = learning_rate_schedule(config)
  tx = optax.chain(
      optax.clip_by_global_norm(o.grad_clip_norm),
      optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                  mask=_decay_mask))
  return tx, schedule


# ----------------------------------------------------------------------------- train step
def make_train_step(model: CMAH, tx, schedule, loss_config, root_key):
  """`(state, batch) -> (state, metrics)`, a pure function to be jitted.

  state: `{"step": int32 [], "params": ..., "opt_state": ...}`;
  batch: `{"points": [B, N, 3] f32, "images": [B, H, W, 3] f32, "label": [B] int32}`.
  """
  supervised = bool(loss_config.supervised)

  def train_step(state, batch):
    step = state["step"]
    mask_key, dropout_key = jax.random.split(jax.random.fold_in(root_key, step))

    def loss_fn(params):
      out = model.apply({"params": params}, images=batch["images"], points=batch["points"],
                        train=True, mask_key=mask_key, rngs={"dropout": dropout_key})
      labels = batch["label"] if supervised else None
      return losses.cmah_loss(out, loss_config, labels=labels)

    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(terms)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["learning_rate"] = schedule(step)
    return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics

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


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _log(msg: str, *args):
  """Progress for people: stdout of process 0 (absl's log gets it at DEBUG level)."""
  if jax.process_index() == 0:
    logging.debug(msg, *args)
    print(msg % args if args else msg, flush=True)


def prepare_dataset(config: ml_collections.ConfigDict):
  """The dataset's builder, prepared once (process 0 first, then every other process)."""
  d = config.dataset
  args = (d.name, d.data_dir, d.get("config", None), d.get("manual_dir", None))
  if jax.process_index() == 0:
    builder, summary = prepare_lib.prepare(*args)
    _log("Dataset:\n%s", summary)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("cmah_dataset_prepared")
    builder, _ = prepare_lib.prepare(*args)  # reused on a shared filesystem
  return builder


@dataclasses.dataclass
class TrainResult:
  state: Any
  metrics: dict
  model: CMAH


# ----------------------------------------------------------------------------- main entry
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> TrainResult:
  """Train on `config.dataset`'s train split, evaluate retrieval, write the report.

  Args:
    config: see configs/default.py.
    workdir: checkpoints, metrics.jsonl and the report go here; a run resumes from it.
    devices: the devices of the mesh (default: all devices of all processes).

  Returns:
    `TrainResult(state, metrics, model)`: the final replicated train state, the final
    metrics (last logged train metrics and the retrieval results), and the module.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  writer = JsonlWriter(workdir)

  # --- Mesh: one "data" axis over every device of every process.
  mesh = shd.make_mesh(devices)
  shd.check_batch_divisible(config.input.batch_size, mesh, "input.batch_size")
  shd.check_batch_divisible(config.input.eval_batch_size, mesh, "input.eval_batch_size")
  _log("Mesh: %d devices (%s) over %d process(es); global batch %d",
       mesh.devices.size, jax.devices()[0].platform, jax.process_count(),
       config.input.batch_size)
  replicated = shd.replicated(mesh)

  # --- Model, optimizer and abstract state (shapes only; nothing on device yet).
  model = build_model(config)
  input_config = input_config_for(config, model)
  tx, schedule = make_optimizer(config)
  root_key = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(root_key)

  def init_state(key):
    params = init_variables(model, key)["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  abstract_state = jax.eval_shape(init_state, init_key)
  state_shardings = jax.tree.map(lambda _: replicated, abstract_state)
  num_params = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))
  _log("Model %s, %d bits: %.2fM parameters", config.model.variant, config.model.bits,
       num_params / 1e6)

  # --- Input.
  builder = prepare_dataset(config)

  # --- Checkpoints: restore the latest, else warm-start or initialise.
  manager = checkpointing.make_manager(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=config.keep_checkpoints)
  try:
    latest = manager.latest_step()
    if latest is not None:
      state = checkpointing.restore(
          manager, latest, checkpointing.abstract_like(abstract_state, state_shardings))
      _log("Resumed from %s at step %d", manager.directory, latest)
      writer.truncate_after(latest)  # rows past the checkpoint are logged again
    else:
      state = jax.jit(init_state, out_shardings=state_shardings)(init_key)
      if config.get("init_from", None):
        abs_params = checkpointing.abstract_like(abstract_state["params"],
                                                 state_shardings["params"])
        params = checkpointing.restore_params(config.init_from, abs_params)
        state = dict(state, params=params,
                     opt_state=jax.jit(tx.init, out_shardings=state_shardings["opt_state"])(
                         params))
    start_step = int(jax.device_get(state["step"]))

    # --- Train step, compiled once ahead of time (a retrace would be an error).
    train_step = make_train_step(model, tx, schedule, config.loss, train_key)
    batch_sharding = shd.data_sharding(mesh)
    train_pipe = pipeline.TrainPipeline(builder, "train", input_config, mesh,
                                        seed=config.seed, start_step=start_step)
    it = iter(train_pipe)
    first_batch = next(it)  # shapes for compilation (and the first step's batch)
    jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)
    t_compile = time.perf_counter()
    compiled = jitted.lower(state, first_batch).compile()
    _log("Compiled the train step in %.1fs", time.perf_counter() - t_compile)
    mem = compiled.memory_analysis()
    if mem is not None:
      _log("Train step memory per device: args %.1f MB, temps %.1f MB, outputs %.1f MB",
           mem.argument_size_in_bytes / 2**20, mem.temp_size_in_bytes / 2**20,
           mem.output_size_in_bytes / 2**20)

    # --- Loop.
    total = int(config.total_steps)
    last_metrics: dict = {}
    last_saved = start_step
    train_seconds = 0.0
    window: list = []
    t_window, window_start = time.perf_counter(), start_step
    with _StopSignal() as stop, train_pipe:
      for step in range(start_step, total):
        batch = first_batch if step == start_step else next(it)
        state, metrics = compiled(state, batch)
        window.append(metrics)
        done = step + 1
        is_last = done == total
        save_now = done % config.checkpoint_every_steps == 0 or is_last
        # Metrics are fetched (and checked for NaN/inf) at log steps and before every
        # checkpoint, so a non-finite state is never saved.
        if done % config.log_every_steps == 0 or save_now:
          fetched = jax.device_get(window)
          for i, m in enumerate(fetched):
            bad = [k for k, v in m.items() if not np.all(np.isfinite(v))]
            if bad:
              raise FloatingPointError(
                  f"Non-finite {bad} at step {window_start + i + 1} (window of steps "
                  f"{window_start + 1}-{done}); lower config.optim.base_learning_rate or "
                  f"check the inputs. Last good checkpoint: {manager.latest_step()}")
          elapsed = time.perf_counter() - t_window
          train_seconds += elapsed
          steps_per_s = len(window) / elapsed
          last_metrics = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
          last_metrics["steps_per_second"] = steps_per_s
          last_metrics["examples_per_second"] = steps_per_s * config.input.batch_size
          writer.write(done, last_metrics)
          _log("step %d/%d (%.0f%%) loss %.4f [c %.4f, 3d %.4f, 2d %.4f] lr %.2e "
               "%.2f steps/s %.0f ex/s ETA %s", done, total, 100 * done / total,
               last_metrics["loss/total"], last_metrics["loss/contrastive"],
               last_metrics["loss/point_recon"], last_metrics["loss/image_recon"],
               last_metrics["learning_rate"], steps_per_s,
               last_metrics["examples_per_second"],
               _format_eta((total - done) / max(steps_per_s, 1e-9)))
          window, t_window, window_start = [], time.perf_counter(), done
        if save_now:
          checkpointing.save(manager, done, state, force=True)
          last_saved = done
        every = int(config.get("eval_every_steps", 0) or 0)
        if every and done % every == 0 and not is_last:
          results = evaluate.evaluate_retrieval(model, state["params"], builder,
                                                input_config, config, mesh)
          writer.write(done, evaluate.flat_metrics(results))
          _log("eval @%d: %s", done, evaluate.summary(results))
          t_window = time.perf_counter()
        # Multi-process runs agree on stopping at log steps (a collective); one process
        # checks every step.
        check = jax.process_count() == 1 or done % config.log_every_steps == 0
        if check and stop.requested():
          if last_saved != done:
            checkpointing.save(manager, done, state, force=True)
          manager.wait_until_finished()
          _log("Stopped by signal at step %d; checkpoint saved. Re-run to resume.", done)
          return TrainResult(state, dict(last_metrics, stopped_at=done), model)
    manager.wait_until_finished()
  finally:
    manager.wait_until_finished()
    manager.close()

  # --- Final evaluation and report.
  t_eval = time.perf_counter()
  results = evaluate.evaluate_retrieval(model, state["params"], builder, input_config,
                                        config, mesh)
  results["eval_seconds"] = time.perf_counter() - t_eval
  results["steps"] = int(jax.device_get(state["step"]))
  results["train_seconds"] = train_seconds  # of this invocation (0 if it only evaluated)
  writer.write(results["steps"], evaluate.flat_metrics(results))
  if jax.process_index() == 0:
    report.write_report(workdir, results, config, builder, input_config)
  _log("Retrieval: %s", evaluate.summary(results))
  _log("Report: %s", os.path.join(workdir, "report.md"))
  if jax.process_count() > 1:
    # No process may exit while another still talks to the coordination service (the
    # leader's exit would abort the others).
    multihost_utils.sync_global_devices("cmah_train_and_evaluate_done")
  return TrainResult(state, dict(last_metrics, **evaluate.flat_metrics(results)), model)

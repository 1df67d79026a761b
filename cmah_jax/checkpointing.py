"""Orbax checkpoints of the train state: async saves, keep N, topology-independent restore,
the run's config stored with every step, and a fall-back past damaged steps.

The state is a plain pytree `{"step", "params", "opt_state"}`. Restoring passes the
*current* mesh's shardings, so a checkpoint written on 4 devices loads on 1 (and the
reverse). Orbax commits a step atomically (it writes to a temporary directory and renames
it when complete), so a save interrupted by a crash or `kill -9` is never picked up by
`latest_step()`; the temporary directory is removed when the next manager opens.

`make_manager(..., step_metadata=...)` makes every `save` store that dict (the resolved
config) in the step's Orbax metadata (`<step>/_CHECKPOINT_METADATA`, `custom_metadata`),
written before the step is committed; `step_config` reads it back. `restore_latest` walks
from the newest step to the oldest and restores the first intact one, naming the damaged
ones (truncated or missing array files, unreadable metadata, an emptied directory) and
moving them to `<checkpoints>.damaged/` so that later saves of those steps do not collide
(each reason is TensorStore's root cause on one line; the tens of lines Orbax's abandoned
reads would print later are silenced by `cmah_jax.orbax_noise`).
A failed write (disk full, read-only directory) raises `CheckpointWriteError` naming the
step, the directory, the cause and the last complete checkpoint, which is left intact.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from cmah_jax import orbax_noise

CONFIG_KEY = "cmah_config"                       # in each step's custom metadata
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"      # Orbax's per-step metadata file


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (the previous complete one is intact)."""


class DamagedCheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be restored."""


class CheckpointManager(ocp.CheckpointManager):
  """`ocp.CheckpointManager` that remembers `step_metadata` (stored by `save` with every
  step) and the step of the save in flight (`pending_step`, for error messages)."""

  def __init__(self, directory, *, options, step_metadata: dict | None = None):
    super().__init__(directory, options=options)
    self.step_metadata = step_metadata
    self.pending_step: int | None = None


def make_manager(directory: str, *, max_to_keep: int, save_interval_steps: int = 1,
                 step_metadata: dict | None = None) -> CheckpointManager:
  """A manager over `directory` (made absolute: Orbax needs absolute paths) whose saves
  store `step_metadata` (JSON-ready dict, e.g. `{CONFIG_KEY: cfg.to_dict()}`) in each step.

  Raises:
    CheckpointWriteError: `directory` cannot be created or written (e.g. read-only).
  """
  directory = local_directory(directory, "checkpoint directory")
  check_writable(directory, "checkpoint directory")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=save_interval_steps,
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,
  )
  return CheckpointManager(directory, options=options, step_metadata=step_metadata)


def local_directory(path: str, what: str = "directory") -> str:
  """`path` with `~` expanded, made absolute.

  Raises:
    CheckpointWriteError: `path` is a URL (`gs://...`): checkpoints, metrics and reports
      are written with the local file API, so a bucket must be mounted (e.g. gcsfuse).
  """
  if "://" in str(path):
    raise CheckpointWriteError(
        f"The {what} {path} is a URL; runs write through the local file system. Give a "
        "directory every process shares (on a TPU pod, e.g. the bucket mounted with gcsfuse "
        "at /mnt/bucket: --workdir=/mnt/bucket/run).")
  return os.path.abspath(os.path.expanduser(path))


def check_writable(directory: str, what: str = "directory") -> None:
  """Create `directory` if needed and write/remove a probe file in it.

  Raises:
    CheckpointWriteError: naming the directory and the OS error (read-only, full disk,
      permissions).
  """
  probe = os.path.join(directory, f".write_probe.{jax.process_index()}.{os.getpid()}")
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    err = CheckpointWriteError(
        f"The {what} {directory} is not writable ({e.strerror or e}); training needs it "
        "for checkpoints and metrics. Free space or fix permissions, or choose another "
        "--workdir.")
    err.errno = e.errno
    raise err from e


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
  """Start an async save of `state` at `step` (returns whether a save was started); the
  manager's `step_metadata` goes into the step.

  Raises:
    CheckpointWriteError: this save or the previous one (still in flight) failed.
  """
  try:
    started = manager.save(step, args=ocp.args.StandardSave(state), force=force,
                           custom_metadata=getattr(manager, "step_metadata", None))
  except Exception as e:  # pylint: disable=broad-except  (Orbax / OS errors, re-raised)
    raise _write_error(manager, e, getattr(manager, "pending_step", None) or step) from e
  if started and isinstance(manager, CheckpointManager):
    manager.pending_step = step
  return started


def wait(manager: ocp.CheckpointManager) -> None:
  """Block until the save in flight is committed.

  Raises:
    CheckpointWriteError: it failed (the step, directory, cause and last complete step
      are named).
  """
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _write_error(manager, e, getattr(manager, "pending_step", None)) from e
  if isinstance(manager, CheckpointManager):
    manager.pending_step = None


def close(manager: ocp.CheckpointManager) -> None:
  """Wait for the save in flight and close; errors are logged, not raised (use `wait`
  first on the normal path; this runs in `finally` blocks, where another error may be
  propagating)."""
  try:
    manager.close()
  except Exception:  # pylint: disable=broad-except
    logging.exception("Closing the checkpoint manager of %s failed", manager.directory)


def _write_error(manager, error: Exception, step) -> CheckpointWriteError:
  directory = str(manager.directory)
  try:
    manager.reload()
    last = manager.latest_step()
  except Exception:  # pylint: disable=broad-except
    last = None
  cause = _innermost_cause(error, stop_at=OSError)
  errno = getattr(cause, "errno", None)
  # TensorStore (the array writer) reports OS errors inside a long message.
  code = re.search(r"os_error_code='(\d+)'", str(cause))
  if errno is None and code:
    errno = int(code.group(1))
  reason = f"{os.strerror(errno)} [errno {errno}]" if errno else _one_line(cause)
  intact = (f"The last complete checkpoint (step {last}) is intact"
            if last is not None else "No complete checkpoint exists yet")
  err = CheckpointWriteError(
      f"Writing checkpoint step {step} to {directory} failed: {reason}. {intact}; free "
      "disk space / fix permissions and re-run to resume from it.")
  err.errno = errno
  return err


def _innermost_cause(error: BaseException, stop_at=()) -> BaseException:
  """Follow `error.__cause__` to the innermost cause, or to the first error of a type in
  `stop_at` on the way (a cycle, e.g. `raise e from e`, ends the walk)."""
  seen = {id(error)}
  while (not isinstance(error, stop_at) and error.__cause__ is not None
         and id(error.__cause__) not in seen):
    error = error.__cause__
    seen.add(id(error))
  return error


def _one_line(error: BaseException) -> str:
  """`"TypeName: first line of the message"` (cut at `_first_line`'s limit)."""
  return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: Exception, limit: int = 300) -> str:
  text = str(error).strip().splitlines()
  text = text[0] if text else type(error).__name__
  return text if len(text) <= limit else text[:limit] + "..."


def abstract_like(tree, shardings):
  """`jax.ShapeDtypeStruct` tree with the given shardings (a tree of the same structure)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restore `step` into the shapes, dtypes and shardings of `abstract_state`."""
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(int(step)))


def step_config(manager: ocp.CheckpointManager, step: int) -> dict | None:
  """The resolved config stored with `step` (`CONFIG_KEY` of its custom metadata); None if
  the step has none (written by an older version).

  Raises:
    ValueError: the step's metadata file is unreadable (damaged), naming it.
  """
  path = os.path.join(step_dir(manager, step), STEP_METADATA_FILE)
  if not os.path.exists(path):
    if not os.path.isdir(step_dir(manager, step)):
      raise ValueError(f"{step_dir(manager, step)} is missing")
    return None
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"unreadable {STEP_METADATA_FILE} ({_first_line(e)})") from e
  if not isinstance(meta, dict):
    raise ValueError(f"unreadable {STEP_METADATA_FILE} (not a JSON object)")
  return (meta.get("custom_metadata") or {}).get(CONFIG_KEY)


@dataclasses.dataclass
class Restored:
  """What `restore_latest` found: the state of `step`, the config stored with it (None if
  absent), and the newer steps that were damaged, as `(step, reason)`, moved aside to
  `damaged_dir`."""
  state: Any
  step: int
  config: dict | None
  damaged: list
  damaged_dir: str | None = None


def restore_latest(manager: ocp.CheckpointManager, abstract_state,
                   check: Callable[[int, dict | None], None] | None = None
                   ) -> Restored | None:
  """Restore the newest intact checkpoint of `manager` into `abstract_state`.

  Steps are tried newest first. A step whose metadata or arrays cannot be read is damaged:
  it is logged with the reason and the next older step is tried. `check(step, config)`
  runs before each step's arrays are read and may raise (a config mismatch stops the
  search: it is not damage). With several processes, a step counts as intact only if every
  process restored it.

  Returns:
    `Restored`, or None when the directory has no checkpoint.
  Raises:
    DamagedCheckpointError: checkpoints exist but none is intact (each is named with its
      reason).
  """
  directory = str(manager.directory)
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    state, config, reason = None, None, None
    try:
      config = step_config(manager, step)
    except ValueError as e:
      reason = str(e)
    if _any_process(reason is not None):
      damaged.append((step, reason or "damaged on another process"))
      logging.warning("Checkpoint step %d in %s is damaged: %s", step, directory, reason)
      continue
    if check is not None:
      check(step, config)
    try:
      state = _restore_with_fresh_reader(directory, step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except  (any read failure = damage)
      # Orbax wraps TensorStore's error (`ValueError: OUT_OF_RANGE: Error reading
      # "params.w/0.0" ...`) in an Exception whose message dumps the TensorStore spec.
      reason = _one_line(_innermost_cause(e))
      orbax_noise.expect_failed_read_leftovers()
    if _any_process(reason is not None):
      damaged.append((step, reason or "damaged on another process"))
      logging.warning("Checkpoint step %d in %s is damaged: %s", step, directory, reason)
      continue
    moved_to = _set_aside(manager, [s for s, _ in damaged]) if damaged else None
    return Restored(state, step, config, damaged, moved_to)
  if damaged:
    listing = "; ".join(f"step {s}: {r}" for s, r in damaged)
    raise DamagedCheckpointError(
        f"No intact checkpoint in {directory} ({listing}). If the model was changed on "
        "purpose (--allow_config_change), its checkpoints cannot be restored into it. Move "
        "that directory away (or choose another --workdir) to start afresh.")
  return None


def _restore_with_fresh_reader(directory: str, step: int, abstract_state):
  """Restore `step` with a read-only manager of its own: a damaged step can leave an Orbax
  manager with wrong cached assumptions (e.g. an emptied step directory makes it expect
  several items), which must not carry over to the next step or to saving."""
  orbax_noise.install()
  options = ocp.CheckpointManagerOptions(read_only=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(directory, options=options) as reader:
    return reader.restore(step, args=ocp.args.StandardRestore(abstract_state))


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def _set_aside(manager: ocp.CheckpointManager, steps) -> str:
  """Move the directories of `steps` to `<directory>.damaged/<step>` (a timestamp is added
  if that exists) and reload the manager; returns the `.damaged` directory."""
  target_root = str(manager.directory).rstrip("/") + ".damaged"
  if jax.process_index() == 0:
    os.makedirs(target_root, exist_ok=True)
    for step in steps:
      source = step_dir(manager, step)
      if not os.path.exists(source):
        continue
      target = os.path.join(target_root, str(step))
      if os.path.exists(target):
        target += time.strftime(".%Y%m%d-%H%M%S")
      shutil.move(source, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("cmah_damaged_checkpoints_moved")
  manager.reload()
  return target_root


def restore_params(directory: str, abstract_params):
  """Warm start (`config.init_from`): the params of the latest checkpoint in `directory`,
  placed with the shardings of `abstract_params`.

  Raises:
    FileNotFoundError: no checkpoint under `directory` (named in the message).
    ValueError: the checkpoint's params do not fit the model (different variant or bits).
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"config.init_from: no such directory {directory}")
  with ocp.CheckpointManager(directory) as mngr:
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"config.init_from: no checkpoint found in {directory}")
    logging.info("Warm start from %s step %d", directory, step)
    params = mngr.restore(step, args=ocp.args.StandardRestore(None))["params"]
  if jax.tree.structure(params) != jax.tree.structure(abstract_params):
    raise ValueError(f"config.init_from={directory}: checkpoint params do not match the "
                     "model (different variant or bits?)")
  for x, a in zip(jax.tree.leaves(params), jax.tree.leaves(abstract_params)):
    if x.shape != a.shape:
      raise ValueError(f"config.init_from={directory}: a parameter has shape {x.shape} in "
                       f"the checkpoint but {a.shape} in the model")
  return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, abstract_params)

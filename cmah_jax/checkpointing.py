"""Orbax checkpoints of the train state: async saves, keep N, topology-independent restore.

The state is a plain pytree `{"step", "params", "opt_state"}`. Restoring passes the
*current* mesh's shardings, so a checkpoint written on 4 devices loads on 1 (and the
reverse). Orbax commits a step atomically (it writes to a temporary directory and renames
it when complete), so an interrupted save is never picked up by `latest_step()`.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging


def make_manager(directory: str, *, max_to_keep: int, save_interval_steps: int = 1
                 ) -> ocp.CheckpointManager:
  """A `CheckpointManager` over `directory` (made absolute: Orbax needs absolute paths)."""
  directory = os.path.abspath(os.path.expanduser(directory))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=save_interval_steps,
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
  """Start an async save of `state` at `step` (returns whether a save was started)."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def abstract_like(tree, shardings):
  """`jax.ShapeDtypeStruct` tree with the given shardings (a tree of the same structure)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restore `step` into the shapes, dtypes and shardings of `abstract_state`."""
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


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

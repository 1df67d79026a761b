"""Device mesh and shardings: one data-parallel axis over every device of every host."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1D mesh named `"data"` over `devices` (default: all devices of all processes).

  Axes are `Auto` so that XLA propagates shardings (e.g. inserts the all-gather of a
  contrastive loss over the global batch) without explicit-sharding annotations.
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `"data"`, other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the full array (params, optimizer state)."""
  return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh, key: str = "input.batch_size") -> None:
  """Raise a clear error if the global batch does not split evenly over the mesh."""
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(
        f"config.{key}={batch_size} is not divisible by the {n} devices of the mesh "
        f"({jax.process_count()} process(es)); choose a multiple of {n}.")

"""Train order and host sharding of the global batch: pure functions of their arguments.

The global batch of step `s` is a pure function of `(seed, s)`: epoch
`e = s // steps_per_epoch` visits the split in the order `permutation(seed, e)` and drops the
remainder, so a run resumed at `start_step` sees exactly the batches it would have seen.
Each host reads only its contiguous rows of the global batch (`host_rows`).
"""
from __future__ import annotations

import numpy as np


def check_seed(seed: int) -> int:
  if int(seed) < 0:
    raise ValueError(f"config.seed={seed} must be a non-negative integer.")
  return int(seed)


def steps_per_epoch(num_examples_: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped)."""
  if batch_size > num_examples_:
    raise ValueError(f"config.input.batch_size={batch_size} exceeds the {num_examples_} "
                     "training examples; choose a smaller batch.")
  return num_examples_ // batch_size


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """Order of the split in `epoch`: int64 [n], from `default_rng([seed, 0, epoch])`."""
  return np.random.default_rng([check_seed(seed), 0, int(epoch)]).permutation(n)


def global_batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
  """Record indices of the global batch of `step`: int64 [batch_size]."""
  spe = steps_per_epoch(n, batch_size)
  epoch, pos = divmod(int(step), spe)
  return epoch_permutation(seed, epoch, n)[pos * batch_size:(pos + 1) * batch_size]


def host_rows(batch_size: int, process_index: int, process_count: int,
              key: str = "input.batch_size") -> slice:
  """Contiguous rows of the global batch read by host `process_index` of `process_count`."""
  if batch_size % process_count:
    raise ValueError(f"config.{key}={batch_size} is not divisible by the {process_count} "
                     "processes (hosts).")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} outside [0, {process_count}).")
  per_host = batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


def mesh_rows(mesh, batch_size: int, key: str) -> slice:
  """The rows of a `[batch_size, ...]` array sharded on `mesh` held by this process."""
  from cmah_jax import sharding  # pylint: disable=import-outside-toplevel
  sharding.check_batch_divisible(batch_size, mesh, key)
  index_map = sharding.data_sharding(mesh).addressable_devices_indices_map((batch_size,))
  spans = sorted({(s[0].indices(batch_size)[0], s[0].indices(batch_size)[1])
                  for s in index_map.values()})
  start, stop = spans[0][0], spans[-1][1]
  covered = sum(b - a for a, b in spans)
  if covered != stop - start:
    raise ValueError("This process's devices hold non-contiguous rows of the batch; build "
                     "the mesh with cmah_jax.sharding.make_mesh() (devices in process order).")
  return slice(start, stop)


def resolve_hosts(mesh, batch_size, process_index, process_count, key):
  """Rows of the global batch this host produces, from the mesh or the overrides."""
  if mesh is None:
    pi = 0 if process_index is None else process_index
    pc = 1 if process_count is None else process_count
    return host_rows(batch_size, pi, pc, key)
  import jax  # pylint: disable=import-outside-toplevel
  if process_count is not None and process_count != jax.process_count():
    raise ValueError(f"process_count={process_count} differs from jax.process_count()="
                     f"{jax.process_count()}; simulated hosts need mesh=None (host batches).")
  if process_index is not None and process_index != jax.process_index():
    raise ValueError(f"process_index={process_index} differs from jax.process_index()="
                     f"{jax.process_index()}; simulated hosts need mesh=None (host batches).")
  host_rows(batch_size, jax.process_index(), jax.process_count(), key)  # divisibility
  return mesh_rows(mesh, batch_size, key)

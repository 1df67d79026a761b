"""Batches on devices: the training iterator and the evaluation pass.

Host batches hold uint8 images; after assembly with `jax.make_array_from_process_local_data`
on `NamedSharding(mesh, P("data"))` the images are normalised on device with
`cmah_jax.ops.image.normalize_images` (4x less host-to-device traffic than float32).
"""
from __future__ import annotations

import itertools

import jax
import numpy as np

from cmah_jax import sharding
from cmah_jax.input.batches import (as_source, eval_local_batch, num_eval_batches,
                                    train_local_batch)
from cmah_jax.input.order import check_seed, resolve_hosts, steps_per_epoch
from cmah_jax.input.prefetch import BatchIterator
from cmah_jax.input.spec import InputSpec, check_spec
from cmah_jax.ops.image import normalize_images

EVAL_DEVICE_KEYS = ("points", "images")  # eval metadata (label, valid, index) stays on host
IMAGE_KEYS = ("images", "images_second")  # uint8 on the host, normalised on device


class DeviceAssembler:
  """Host-local NumPy batch -> global jax.Arrays on `NamedSharding(mesh, P("data"))`.

  Keys in `device_keys` become global arrays (images normalised to float32 on device);
  the others stay this host's NumPy rows.
  """

  def __init__(self, mesh, batch_size: int, device_keys=None):
    self._sharding = sharding.data_sharding(mesh)
    self._batch_size = batch_size
    self._device_keys = device_keys
    self._normalize = jax.jit(normalize_images)

  def __call__(self, local: dict) -> dict:
    out = {}
    for key, value in local.items():
      if self._device_keys is not None and key not in self._device_keys:
        out[key] = value
        continue
      shape = (self._batch_size,) + value.shape[1:]
      out[key] = jax.make_array_from_process_local_data(self._sharding, value, shape)
    for key in IMAGE_KEYS:
      if key in out:
        out[key] = self._normalize(out[key])
    return out


class TrainPipeline:
  """Infinite iterator over training batches, starting at `start_step`.

  With a `mesh`: global batches of jax.Arrays sharded on `"data"`:
    {"points": float32 [B, N, 3], "images": float32 [B, S, S, 3] (normalised),
     "label": int32 [B], "index": int32 [B] (record index)}, with `spec.second_view` also
    "images_second": float32 [B, S, S, 3] (normalised).
  With `mesh=None`: this host's NumPy batch (`train_local_batch`, uint8 images); the
  `process_index` / `process_count` overrides (default 0 / 1) simulate hosts.

  Attributes: `steps_per_epoch`, `num_examples`, `step` (of the next batch).
  Use as a context manager or call `close()` to stop the prefetch thread.
  """

  def __init__(self, source_or_builder, split: str, spec: InputSpec, mesh, seed: int,
               start_step: int = 0, process_index: int | None = None,
               process_count: int | None = None):
    self.spec = check_spec(spec)
    self.seed = check_seed(seed)
    self.source = as_source(source_or_builder, split)
    self.num_examples = len(self.source)
    self.steps_per_epoch = steps_per_epoch(self.num_examples, self.spec.batch_size)
    self.rows = resolve_hosts(mesh, self.spec.batch_size, process_index, process_count,
                              "input.batch_size")
    self._assemble = None if mesh is None else DeviceAssembler(mesh, self.spec.batch_size)
    self.step = int(start_step)
    self._batches = BatchIterator(self._produce, itertools.count(self.step),
                                  self.spec.prefetch, finish=self._assemble)

  def _produce(self, step: int):
    return train_local_batch(self.source, step, self.spec, self.seed, rows=self.rows)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._batches)
    self.step += 1
    return batch

  def close(self):
    self._batches.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def eval_batches(builder, split: str, spec: InputSpec, mesh,
                 process_index: int | None = None,
                 process_count: int | None = None) -> BatchIterator:
  """Iterator over the eval batches of `split`, each object exactly once.

  With a `mesh`: {"points" float32 [B, N, 3], "images" float32 [B, S, S, 3] (normalised)}
  as global jax.Arrays (B = input.eval_batch_size) and this host's rows of "label" int32,
  "valid" bool, "index" int32 as NumPy (metadata never goes to the device); with
  `mesh=None`: this host's NumPy batches (uint8 images). Padding rows (valid False) carry
  index -1 and label -1. Close it (or exhaust it, or use it as a context manager) to stop
  the prefetch thread.
  """
  spec = check_spec(spec)
  source = as_source(builder, split)
  rows = resolve_hosts(mesh, spec.eval_batch_size, process_index, process_count,
                       "input.eval_batch_size")
  assemble = (None if mesh is None else
              DeviceAssembler(mesh, spec.eval_batch_size, EVAL_DEVICE_KEYS))

  def produce(b):
    return eval_local_batch(source, b, spec, rows=rows)

  return BatchIterator(produce, range(num_eval_batches(len(source), spec.eval_batch_size)),
                       spec.prefetch, finish=assemble)


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in global row order (NumPy)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  shards = {}
  for s in x.addressable_shards:
    start = s.index[0].start or 0
    shards.setdefault(start, s.data)
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])

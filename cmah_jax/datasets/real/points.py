"""Point clouds of the real-dataset builders: checks and subsampling.

A cloud is rejected (`BadPointCloudError`, named by its object id) when it is non-finite,
has fewer points than `num_points`, the wrong shape, or all points coincident. `num_points`
of each cloud are kept by farthest point sampling
(`cmah_jax.ops.pointcloud.farthest_point_sample`, first index 0) [Point-MAE] or as a
seeded random subset (`default_rng([split_seed, crc32(object_id)])`) [ours], then centred
on their centroid and scaled into the unit sphere (farthest point at radius 1).
"""
from __future__ import annotations

import functools
import os
import zlib
from typing import Sequence

import numpy as np

from cmah_jax.geometry import normalize_unit_sphere_np

CHUNK = 32  # objects read (threads) and subsampled (one batched FPS call) together [ours]


class BadPointCloudError(ValueError):
  """A point cloud was read but is unusable (NaN, truncated, wrong shape, degenerate)."""

  def __init__(self, object_id: str, reason: str, path=None):
    self.object_id = object_id
    self.reason = reason
    self.path = None if path is None else os.fspath(path)
    where = f" ({self.path})" if self.path else ""
    super().__init__(f"Point cloud of {object_id!r}{where} rejected: {reason}")


def check_points(points: np.ndarray, object_id: str, min_points: int, path=None) -> np.ndarray:
  """Reject unusable clouds with `BadPointCloudError`; return float64 [N, 3]."""
  points = np.asarray(points)
  if points.ndim != 2 or points.shape[-1] != 3:
    raise BadPointCloudError(object_id, f"shape {list(points.shape)}, expected [N, 3]", path)
  points = points.astype(np.float64)
  if points.shape[0] < min_points:
    raise BadPointCloudError(
        object_id, f"truncated: {points.shape[0]} points, config.num_points needs at "
        f"least {min_points}", path)
  bad = ~np.isfinite(points).all(axis=-1)
  if bad.any():
    raise BadPointCloudError(
        object_id, f"{int(bad.sum())} of {points.shape[0]} points are NaN or infinite", path)
  if np.ptp(points, axis=0).max() <= 0:
    raise BadPointCloudError(object_id, "degenerate: all points coincide", path)
  return points


@functools.lru_cache(maxsize=None)
def _jitted_fps(num_samples: int):
  import jax  # pylint: disable=import-outside-toplevel

  from cmah_jax.ops.pointcloud import farthest_point_sample  # pylint: disable=import-outside-toplevel
  return jax.jit(lambda pts: farthest_point_sample(pts, num_samples))


def fps_indices(clouds: Sequence[np.ndarray], num_samples: int,
                batch: int = CHUNK) -> list[np.ndarray]:
  """Farthest-point-sample indices of each cloud: a list of int [num_samples].

  Clouds are padded to a power-of-two size with copies of their point 0 and to `batch`
  clouds, so few shapes are compiled. Padding never changes the result: FPS starts at
  index 0, copies of point 0 are then at distance 0, and a distance-0 tie goes to index 0
  itself (the lowest index), so a padded index is never chosen.
  """
  import jax  # pylint: disable=import-outside-toplevel

  if not clouds:
    return []
  fn = _jitted_fps(int(num_samples))
  cpu = jax.devices("cpu")[0]
  out = []
  for start in range(0, len(clouds), batch):
    part = clouds[start:start + batch]
    size = max(num_samples, max(len(c) for c in part))
    size = 1 << (size - 1).bit_length()
    arr = np.empty((batch, size, 3), np.float32)
    for i in range(batch):
      c = part[i] if i < len(part) else part[0]
      arr[i, :len(c)] = c
      arr[i, len(c):] = c[0]
    idx = np.asarray(fn(jax.device_put(arr, cpu)))
    for i, c in enumerate(part):
      if (idx[i] >= len(c)).any():  # impossible by the argument above; guard anyway
        raise AssertionError("farthest_point_sample chose a padding point")
      out.append(idx[i])
  return out


def random_subset_indices(num: int, num_samples: int, seed: int, object_id: str) -> np.ndarray:
  """Sorted random subset without replacement from `default_rng([seed, crc32(id)])`."""
  rng = np.random.default_rng([int(seed), zlib.crc32(object_id.encode("utf-8"))])
  return np.sort(rng.choice(num, num_samples, replace=False))


def subsample_points(clouds: Sequence[np.ndarray], object_ids: Sequence[str], num_points: int,
                     method: str, seed: int) -> list[np.ndarray]:
  """`num_points` of each cloud (FPS or seeded random subset), unit-sphere normalised."""
  if method == "fps":
    indices = fps_indices(clouds, num_points)
  elif method == "random":
    indices = [random_subset_indices(len(c), num_points, seed, i)
               for c, i in zip(clouds, object_ids)]
  else:
    raise ValueError(f"Unknown subsample method {method!r} (builder config `subsample`); "
                     "use 'fps' or 'random'.")
  return [normalize_unit_sphere_np(c[i]) for c, i in zip(clouds, indices)]

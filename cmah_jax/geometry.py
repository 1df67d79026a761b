"""NumPy geometry shared by the offline dataset builders and the retrieval tools.

- `sample_surface`: points uniform by area on a triangle mesh.
- `normalize_unit_sphere_np`: centre on the centroid, farthest point at radius 1
  (the NumPy twin of `cmah_jax.ops.pointcloud.normalize_unit_sphere`).
"""
from __future__ import annotations

import numpy as np


def sample_surface(vertices: np.ndarray, faces: np.ndarray, num_points: int,
                   rng: np.random.Generator) -> np.ndarray:
  """Points uniform by area on a triangle mesh.

  Args:
    vertices: float [n, 3]; faces: int [m, 3] vertex indices; rng: the only randomness.
  Returns:
    float64 [num_points, 3].
  """
  tri = vertices[faces]  # [m, 3, 3]
  area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
  cdf = np.cumsum(area)
  idx = np.searchsorted(cdf, rng.random(num_points) * cdf[-1], side="right")
  idx = np.minimum(idx, len(faces) - 1)
  r1, r2 = rng.random(num_points), rng.random(num_points)
  s = np.sqrt(r1)
  w = np.stack([1 - s, s * (1 - r2), s * r2], -1)
  return np.einsum("nk,nkd->nd", w, tri[idx])


def normalize_unit_sphere_np(points: np.ndarray) -> np.ndarray:
  """Centre on the centroid, scale so the farthest point has norm 1: float32 [N, 3]."""
  p = np.asarray(points, np.float64)
  p = p - p.mean(axis=0, keepdims=True)
  radius = np.sqrt((p * p).sum(-1).max())
  return (p / max(radius, 1e-12)).astype(np.float32)

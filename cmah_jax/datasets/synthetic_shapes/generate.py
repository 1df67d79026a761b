"""Objects and splits of `synthetic_shapes`: each object a pure function of its arguments.

Object `index` of `split` has category `index % C` and draws everything (mesh, palette,
points, cameras, lights) from `np.random.default_rng([seed, SPLIT_IDS[split], index])`.
The mesh and the point cloud share one unit-sphere normalisation, so image and points show
the same object. Bit-identical output needs the same NumPy build (its SIMD transcendentals
may differ in the last ulp between CPUs); the random draws themselves are identical
everywhere.
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Iterator

import numpy as np

from cmah_jax.datasets.synthetic_shapes.categories import CATEGORIES, make_mesh, random_palette
from cmah_jax.datasets.synthetic_shapes.render import random_views, render
from cmah_jax.geometry import sample_surface

SPLIT_IDS = {"train": 0, "query": 1, "database": 2}


def object_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator that draws object `index` of `split`: its mesh first, then the rest."""
  return np.random.default_rng([seed, SPLIT_IDS[split], index])


def generate_object(seed: int, split: str, index: int, *, num_points: int = 2048,
                    num_views: int = 8, image_size: int = 64, supersample: int = 2,
                    num_categories: int | None = None) -> dict:
  """Object `index` of `split`, a pure function of its arguments.

  Returns the example format of every cmah_jax dataset:
    {"points": float32 [P, 3] unit-sphere normalised, "images": uint8 [V, S, S, 3],
     "label": int64 (index % C), "object_id": str}.
  """
  if split not in SPLIT_IDS:
    raise ValueError(f"Unknown split {split!r}; known: {sorted(SPLIT_IDS)}")
  num_categories = num_categories or len(CATEGORIES)
  label = index % num_categories
  rng = object_rng(seed, split, index)
  mesh = make_mesh(label, rng)
  palette = random_palette(rng)
  points = sample_surface(mesh.vertices, mesh.faces, num_points, rng)
  # One transform for points and mesh (`geometry.normalize_unit_sphere_np` returns the
  # points only), so image and points show the same object.
  centre = points.mean(0)
  radius = np.linalg.norm(points - centre, axis=1).max()
  points = (points - centre) / radius
  vertices = (mesh.vertices - centre) / radius
  # Mesh corners can lie slightly outside the sampled points' sphere; shrink the rendered
  # copy so the whole object stays in frame.
  vertices /= max(1.0, np.linalg.norm(vertices, axis=1).max())
  az, el = random_views(rng, num_views)
  light = np.array([-0.4, 0.6, -1.0]) + rng.normal(0, 0.2, (num_views, 3))
  images = render(vertices, mesh.faces, palette[mesh.slots], az, el, image_size,
                  light_dirs=light, supersample=supersample)
  return {"points": points.astype(np.float32), "images": images, "label": np.int64(label),
          "object_id": f"{CATEGORIES[label]}/{split}-{index:06d}"}


def _generate_one(index, kwargs):
  return index, generate_object(index=index, **kwargs)


def generate_split(seed: int, split: str, count: int, *, num_workers: int = 0,
                   progress: bool = True, **kwargs) -> Iterator[tuple[int, dict]]:
  """Yields `(index, example)` for `index` in [0, count), in order.

  `num_workers > 0` generates in that many spawned processes (results stay in order and
  are identical to the in-process ones); `kwargs` go to `generate_object`.
  """
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  kwargs = dict(seed=seed, split=split, **kwargs)
  bar = tqdm(total=count, desc=f"synthetic {split}", unit="obj", disable=not progress,
             leave=False)
  try:
    if num_workers <= 0:
      for i in range(count):
        yield _generate_one(i, kwargs)
        bar.update()
      return
    ctx = multiprocessing.get_context("spawn")  # safe with threads (JAX, TFDS) in the parent
    with ctx.Pool(num_workers) as pool:
      args = [(i, kwargs) for i in range(count)]
      for item in pool.imap(_star, args, chunksize=8):
        yield item
        bar.update()
  finally:
    bar.close()


def _star(args):
  return _generate_one(*args)


def default_num_workers() -> int:
  """min(2, CPUs available to this process)."""
  try:
    n = len(os.sched_getaffinity(0))
  except AttributeError:
    n = os.cpu_count() or 1
  return max(1, min(2, n))

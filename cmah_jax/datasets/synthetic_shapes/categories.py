"""The 20 categories of `synthetic_shapes`: a random mesh per category, one colour law.

`CATEGORIES` fixes the label order (label = position). `make_mesh` builds one random
instance with its category's maker (`furniture`, `objects`) and deforms it;
`random_palette` draws the colours of the 3 slots from one distribution shared by every
category, so colour never gives the class away [ours].
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from cmah_jax.datasets.synthetic_shapes import furniture, objects
from cmah_jax.datasets.synthetic_shapes.primitives import Mesh, Parts

_MAKERS: dict[str, Callable] = {
    "chair": furniture.make_chair, "table": furniture.make_table,
    "stool": furniture.make_stool, "bench": furniture.make_bench,
    "bed": furniture.make_bed, "shelf": furniture.make_shelf, "lamp": furniture.make_lamp,
    "mug": objects.make_mug, "bottle": objects.make_bottle, "vase": objects.make_vase,
    "bowl": objects.make_bowl, "airplane": objects.make_airplane, "car": objects.make_car,
    "boat": objects.make_boat, "rocket": objects.make_rocket, "tree": objects.make_tree,
    "tower": objects.make_tower, "house": objects.make_house, "guitar": objects.make_guitar,
    "sofa": furniture.make_sofa,
}
CATEGORIES: tuple[str, ...] = tuple(_MAKERS)


def _category_index(category) -> int:
  if isinstance(category, str):
    if category not in _MAKERS:
      raise ValueError(f"Unknown category {category!r}; known: {CATEGORIES}")
    return CATEGORIES.index(category)
  if not 0 <= int(category) < len(CATEGORIES):
    raise ValueError(f"Category index {category} outside [0, {len(CATEGORIES)})")
  return int(category)


def make_mesh(category, rng: np.random.Generator, warp: float = 0.02) -> Mesh:
  """One random instance of `category` (name or index), deformed, not yet normalised.

  The deformation is a per-axis scale in U[0.9, 1.1] and a smooth warp: three random
  sinusoids of amplitude up to `warp` times the object radius.
  """
  parts = Parts()
  _MAKERS[CATEGORIES[_category_index(category)]](rng, parts)
  mesh = parts.mesh()
  v = mesh.vertices
  centre = (v.max(0) + v.min(0)) / 2
  radius = np.linalg.norm(v - centre, axis=1).max()
  v = (v - centre) * rng.uniform(0.9, 1.1, 3)
  for _ in range(3):
    direction = rng.normal(size=3)
    freq = rng.normal(size=3)
    freq *= rng.uniform(1.0, 4.0) / (np.linalg.norm(freq) * radius)
    amp = rng.uniform(0, warp) * radius
    v = v + amp * np.sin(v @ freq + rng.uniform(0, 2 * np.pi))[:, None] * (
        direction / np.linalg.norm(direction))
  return Mesh(v + centre, mesh.faces, mesh.slots)


def _hsv_to_rgb(h, s, v):
  i = np.floor(h * 6)
  f = h * 6 - i
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  table = np.array([[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]])
  return table[int(i) % 6]


def random_palette(rng: np.random.Generator) -> np.ndarray:
  """Albedos of the 3 colour slots, float64 [3, 3] in [0, 1]; one law for every category."""
  def colour():
    return _hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.85), rng.uniform(0.35, 0.95))
  c0 = colour()
  c1 = c0 if rng.random() < 0.4 else colour()
  c2 = colour() if rng.random() < 0.5 else (c0 if rng.random() < 0.5 else c1)
  return np.stack([c0, c1, c2])

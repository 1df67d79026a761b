"""CPU renderer of `synthetic_shapes`: random cameras and a vectorised NumPy z-buffer.

Perspective camera, flat two-sided Lambertian shading, optional supersampling; no GPU,
display or extra package is needed [ours]. Convention: y is up; a camera at azimuth `a`,
elevation `e` sits at `d * (cos e sin a, sin e, cos e cos a)` looking at the origin.
"""
from __future__ import annotations

import math

import numpy as np


def random_views(rng: np.random.Generator, num_views: int,
                 elevation_deg=(-10.0, 45.0)) -> tuple[np.ndarray, np.ndarray]:
  """Camera azimuths U[0, 2 pi) and elevations U[elevation_deg] (radians), each [V]."""
  az = rng.uniform(0, 2 * np.pi, num_views)
  el = np.deg2rad(rng.uniform(*elevation_deg, num_views))
  return az, el


def render(vertices: np.ndarray, faces: np.ndarray, face_colors: np.ndarray,
           azimuth: np.ndarray, elevation: np.ndarray, image_size: int, *,
           distance: float = 2.6, fill: float = 0.95, ambient: float = 0.3,
           light_dirs: np.ndarray | None = None, background: float = 1.0,
           supersample: int = 1) -> np.ndarray:
  """Rasterise a mesh from V cameras with a z-buffer and flat two-sided Lambertian shading.

  Args:
    vertices: float [n, 3], the object inside the unit sphere.
    faces: int [m, 3].
    face_colors: float [m, 3] albedo in [0, 1].
    azimuth, elevation: float [V] radians; the camera looks at the origin from `distance`.
    image_size: output side S.
    fill: the unit sphere's silhouette spans this fraction of the image.
    light_dirs: float [V, 3] direction towards the light in camera coordinates
      (x right, y up, z forward); default upper-left, from behind the camera.
    supersample: render at S * supersample and average blocks (anti-aliasing).
  Returns:
    uint8 [V, S, S, 3].
  """
  az = np.asarray(azimuth, np.float64)
  el = np.asarray(elevation, np.float64)
  nv = len(az)
  S = image_size * supersample
  eye = distance * np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], -1)
  fwd = -eye / distance
  right = np.cross(fwd, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right, axis=1, keepdims=True)
  up = np.cross(right, fwd)
  rot = np.stack([right, up, fwd], 1)  # [V, 3, 3], rows = camera axes in world
  cam = np.einsum("vij,vnj->vni", rot, vertices[None] - eye[:, None])  # [V, n, 3]
  focal = fill / math.tan(math.asin(1.0 / distance))
  z = cam[..., 2]
  px = (focal * cam[..., 0] / z + 1) * (S / 2)
  py = (1 - focal * cam[..., 1] / z) * (S / 2)
  tx, ty, tiz = px[:, faces], py[:, faces], 1.0 / z[:, faces]  # [V, m, 3]

  # Shading per (view, face).
  tri = vertices[faces]
  normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-20
  if light_dirs is None:
    light_dirs = np.broadcast_to([-0.4, 0.6, -1.0], (nv, 3))
  light = np.asarray(light_dirs, np.float64)
  light = light / np.linalg.norm(light, axis=1, keepdims=True)
  light_world = np.einsum("vji,vj->vi", rot, light)  # [V, 3]
  lam = np.abs(normal @ light_world.T).T  # [V, m]
  shade = (ambient + (1 - ambient) * lam)[..., None] * face_colors[None]  # [V, m, 3]

  # Per (view, face): barycentric weights w0, w1 and 1/z are affine in the pixel position,
  # w = A x + B y + C (1/z is affine in screen space for a perspective camera).
  x0, x1, x2 = tx[..., 0], tx[..., 1], tx[..., 2]
  y0, y1, y2 = ty[..., 0], ty[..., 1], ty[..., 2]
  area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
  valid = np.abs(area2) > 1e-12
  inv_a = np.where(valid, 1.0 / np.where(valid, area2, 1.0), 0.0)
  a0, b0, c0 = (y1 - y2) * inv_a, (x2 - x1) * inv_a, (x1 * y2 - x2 * y1) * inv_a
  a1, b1, c1 = (y2 - y0) * inv_a, (x0 - x2) * inv_a, (x2 * y0 - x0 * y2) * inv_a
  d0, d1 = tiz[..., 0] - tiz[..., 2], tiz[..., 1] - tiz[..., 2]
  coef = np.stack([a0, b0, c0, a1, b1, c1, a0 * d0 + a1 * d1, b0 * d0 + b1 * d1,
                   tiz[..., 2] + c0 * d0 + c1 * d1], -1).reshape(-1, 9)

  # Scanline spans: for every (view, face) and bounding-box row, the pixel centres x with
  # all three barycentric weights >= 0 form one interval (each weight is affine in x).
  by0 = np.clip(np.ceil(ty.min(-1) - 0.5), 0, S).astype(np.int64).ravel()
  by1 = np.clip(np.floor(ty.max(-1) - 0.5), -1, S - 1).astype(np.int64).ravel()
  rows = np.where(valid.ravel(), np.maximum(by1 - by0 + 1, 0), 0)
  vf = np.nonzero(rows)[0]  # flat (view, face) ids covering at least one row
  rows = rows[vf]
  owner = np.repeat(vf, rows)
  cy = np.repeat(by0[vf], rows) + (np.arange(rows.sum()) -
                                   np.repeat(np.cumsum(rows) - rows, rows))
  k = np.repeat(coef[vf], rows, axis=0)
  fy = cy + 0.5
  tol = 1e-9
  lo = np.full(len(owner), 0.5)
  hi = np.full(len(owner), S - 0.5)
  a2, b2, c2 = -k[:, 0] - k[:, 3], -k[:, 1] - k[:, 4], 1 - k[:, 2] - k[:, 5]
  with np.errstate(divide="ignore", invalid="ignore"):
    for a, b, c in ((k[:, 0], k[:, 1], k[:, 2]), (k[:, 3], k[:, 4], k[:, 5]), (a2, b2, c2)):
      rhs = -tol - b * fy - c  # a * x >= rhs
      bound = rhs / a
      lo = np.where(a > 0, np.maximum(lo, bound), lo)
      hi = np.where(a < 0, np.minimum(hi, bound), hi)
      hi = np.where((a == 0) & (rhs > 0), -np.inf, hi)
  x_lo = np.ceil(lo - 0.5)
  x_hi = np.floor(hi - 0.5)
  count = np.where(x_hi >= x_lo, x_hi - x_lo + 1, 0).astype(np.int64)
  keep = np.nonzero(count)[0]
  count = count[keep]
  rep = np.repeat(keep, count)
  cx = np.repeat(x_lo[keep].astype(np.int64), count) + (
      np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
  owner, cy, k = owner[rep], cy[rep], k[rep]
  inv_depth = k[:, 6] * (cx + 0.5) + k[:, 7] * (cy + 0.5) + k[:, 8]
  view = owner // faces.shape[0]
  pix = (view * S + cy) * S + cx
  # Z-buffer: per pixel keep the candidate of largest 1/z (nearest); exact ties go to the
  # candidate listed last, so the result never depends on scatter order.
  zbuf = np.zeros(nv * S * S)
  np.maximum.at(zbuf, pix, inv_depth)
  near = np.nonzero(inv_depth >= zbuf[pix])[0]
  winner = np.full(nv * S * S, -1, np.int64)
  np.maximum.at(winner, pix[near], near)
  hit = winner >= 0
  img = np.full((nv * S * S, 3), background, np.float32)
  img[hit] = shade.reshape(-1, 3)[owner[winner[hit]]]
  img = img.reshape(nv, S, S, 3)
  if supersample > 1:
    img = img.reshape(nv, image_size, supersample, image_size, supersample, 3)
    img = sum(img[:, :, a, :, b] for a in range(supersample)
              for b in range(supersample)) / supersample ** 2
  return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)

"""Mesh primitives of the procedural shapes [ours].

Each primitive returns a part `(vertices float64 [n, 3], faces int64 [m, 3])`; `xform`
scales, rotates and moves a part, and `Parts` accumulates parts (with a colour slot per
face) into one `Mesh`. Convention: y is up.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


def box(size, center=(0.0, 0.0, 0.0)):
  """Axis-aligned box with full extents `size` (sx, sy, sz) centred at `center`."""
  s = np.asarray(size, np.float64) / 2
  c = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
  faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                    [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
  return c * s + np.asarray(center, np.float64), faces


def lathe(radii, heights, segments=16, cap_bottom=True, cap_top=True):
  """Surface of revolution about the y axis through profile points (radius_j, height_j).

  The profile is traversed in the given order (it may fold back, e.g. outer then inner wall
  of a cup). Caps close the first / last ring with a fan when its radius is > 0.
  """
  r = np.asarray(radii, np.float64)
  h = np.asarray(heights, np.float64)
  k = len(r)
  t = np.linspace(0, 2 * np.pi, segments, endpoint=False)
  verts = np.stack([r[:, None] * np.cos(t)[None], np.broadcast_to(h[:, None], (k, segments)),
                    r[:, None] * np.sin(t)[None]], -1).reshape(-1, 3)
  j = np.arange(k - 1)[:, None]
  s = np.arange(segments)[None]
  a = j * segments + s
  b = j * segments + (s + 1) % segments
  c, d = a + segments, b + segments
  faces = [np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)]
  extra = []
  n = len(verts)
  for cap, ring in ((cap_bottom, 0), (cap_top, k - 1)):
    if cap and r[ring] > 0:
      extra.append([0.0, h[ring], 0.0])
      ss = np.arange(segments)
      faces.append(np.stack([np.full(segments, n), ring * segments + ss,
                             ring * segments + (ss + 1) % segments], -1))
      n += 1
  if extra:
    verts = np.concatenate([verts, np.asarray(extra)])
  return verts, np.concatenate(faces)


def cylinder(r_bottom, r_top, y0, y1, segments=16, caps=True):
  """Frustum (cylinder/cone) about the y axis from height y0 to y1."""
  return lathe([r_bottom, r_top], [y0, y1], segments, caps, caps)


def ellipsoid(radii, rings=8, segments=16):
  """Ellipsoid with semi-axes `radii` centred at the origin."""
  phi = np.linspace(np.pi, 0, rings + 1)
  v, f = lathe(np.sin(phi), np.cos(phi), segments, False, False)
  return v * np.asarray(radii, np.float64), f


def torus(major, minor, arc=2 * np.pi, seg_major=16, seg_minor=8):
  """Torus in the xy plane around the z axis; `arc` < 2 pi gives an open arc."""
  closed = arc >= 2 * np.pi - 1e-9
  nu = seg_major if closed else seg_major + 1
  u = np.linspace(0, arc, nu, endpoint=not closed)
  w = np.linspace(0, 2 * np.pi, seg_minor, endpoint=False)
  uu, ww = np.meshgrid(u, w, indexing="ij")
  rr = major + minor * np.cos(ww)
  verts = np.stack([rr * np.cos(uu), rr * np.sin(uu), minor * np.sin(ww)], -1).reshape(-1, 3)
  i = np.arange(seg_major if closed else nu - 1)[:, None]
  j = np.arange(seg_minor)[None]
  a = i * seg_minor + j
  b = i * seg_minor + (j + 1) % seg_minor
  c = ((i + 1) % nu) * seg_minor + j
  d = ((i + 1) % nu) * seg_minor + (j + 1) % seg_minor
  faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3),
                          np.stack([a, d, c], -1).reshape(-1, 3)])
  return verts, faces


def tube(path, radius, segments=8, caps=True):
  """Circular tube swept along a polyline `path` [k, 3] (radius scalar or [k])."""
  p = np.asarray(path, np.float64)
  k = len(p)
  rad = np.broadcast_to(np.asarray(radius, np.float64), (k,))
  tang = np.gradient(p, axis=0)
  tang /= np.linalg.norm(tang, axis=1, keepdims=True) + 1e-12
  ref = np.array([1.0, 0, 0]) if abs(tang[0, 0]) < 0.9 else np.array([0, 0, 1.0])
  normals = np.empty_like(p)
  n = ref - ref @ tang[0] * tang[0]
  for i in range(k):  # parallel transport of the normal frame
    n = n - (n @ tang[i]) * tang[i]
    n /= np.linalg.norm(n) + 1e-12
    normals[i] = n
  binormals = np.cross(tang, normals)
  t = np.linspace(0, 2 * np.pi, segments, endpoint=False)
  ring = (np.cos(t)[None, :, None] * normals[:, None] + np.sin(t)[None, :, None] *
          binormals[:, None]) * rad[:, None, None]
  verts = (p[:, None] + ring).reshape(-1, 3)
  i = np.arange(k - 1)[:, None]
  s = np.arange(segments)[None]
  a = i * segments + s
  b = i * segments + (s + 1) % segments
  faces = [np.stack([a, b, b + segments], -1).reshape(-1, 3),
           np.stack([a, b + segments, a + segments], -1).reshape(-1, 3)]
  if caps:
    m = len(verts)
    verts = np.concatenate([verts, p[[0, -1]]])
    ss = np.arange(segments)
    faces.append(np.stack([np.full(segments, m), ss, (ss + 1) % segments], -1))
    last = (k - 1) * segments
    faces.append(np.stack([np.full(segments, m + 1), last + ss, last + (ss + 1) % segments], -1))
  return verts, np.concatenate(faces)


def prism(poly, y0, y1):
  """Polygon `poly` [k, 2] in the (x, z) plane (star-shaped about its mean) extruded y0..y1."""
  poly = np.asarray(poly, np.float64)
  k = len(poly)
  c = poly.mean(0)
  bottom = np.stack([poly[:, 0], np.full(k, y0), poly[:, 1]], -1)
  top = np.stack([poly[:, 0], np.full(k, y1), poly[:, 1]], -1)
  verts = np.concatenate([bottom, top, [[c[0], y0, c[1]], [c[0], y1, c[1]]]])
  i = np.arange(k)
  j = (i + 1) % k
  faces = np.concatenate([np.stack([i, j, j + k], -1), np.stack([i, j + k, i + k], -1),
                          np.stack([np.full(k, 2 * k), i, j], -1),
                          np.stack([np.full(k, 2 * k + 1), i + k, j + k], -1)])
  return verts, faces


def rot_x(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def xform(part, rot=None, scale=None, shift=None):
  """Scale, then rotate, then translate a (vertices, faces) part."""
  v, f = part
  if scale is not None:
    v = v * np.asarray(scale, np.float64)
  if rot is not None:
    v = v @ np.asarray(rot).T
  if shift is not None:
    v = v + np.asarray(shift, np.float64)
  return v, f


@dataclasses.dataclass
class Mesh:
  """A triangle mesh: `vertices` float64 [n, 3], `faces` int64 [m, 3], `slots` int [m].

  `slots` names the colour slot (0 main, 1 second, 2 accent) of each face.
  """
  vertices: np.ndarray
  faces: np.ndarray
  slots: np.ndarray


class Parts:
  """Accumulates parts into one mesh; `add(part, slot)` tags every face with `slot`."""

  def __init__(self):
    self.v, self.f, self.s = [], [], []
    self.n = 0

  def add(self, part, slot=0):
    v, f = part
    self.v.append(v)
    self.f.append(np.asarray(f) + self.n)
    self.s.append(np.full(len(f), slot, np.int8))
    self.n += len(v)

  def mesh(self) -> Mesh:
    return Mesh(np.concatenate(self.v), np.concatenate(self.f).astype(np.int64),
                np.concatenate(self.s))

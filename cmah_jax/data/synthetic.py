"""Procedural paired dataset: parametric 3D shapes, area-uniform point clouds, CPU renders.

Every object is a pure function of `(seed, split, index)`: its category is `index % C` and
all of its random draws come from `np.random.default_rng([seed, SPLIT_IDS[split], index])`.
An object is built from parametric parts (boxes, surfaces of revolution, tubes, tori, prisms)
with per-category structure and per-object variation (proportions, optional parts, counts,
bends, a smooth random warp). Colours come from one palette distribution shared by every
category, so colour never gives the class away. The mesh and the point cloud share one
unit-sphere normalisation, so image and points show the same object.

Rendering is a vectorised NumPy z-buffer rasterizer (perspective camera, flat Lambertian
shading, two-sided, optional supersampling), so no GPU, display or extra package is needed.
Convention: y is up; a camera at azimuth `a`, elevation `e` sits at
`d * (cos e sin a, sin e, cos e cos a)` looking at the origin.

Bit-identical output needs the same NumPy build (its SIMD transcendentals may differ in the
last ulp between CPUs); the random draws themselves are identical everywhere.
"""
from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
from typing import Callable, Iterator

import numpy as np

SPLIT_IDS = {"train": 0, "query": 1, "database": 2}

# ----------------------------------------------------------------------------------------
# Mesh primitives. Each returns (vertices float64 [n, 3], faces int64 [m, 3]).
# ----------------------------------------------------------------------------------------


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


class _Parts:
  """Accumulates parts into one mesh."""

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


# ----------------------------------------------------------------------------------------
# Categories: each `_make_<name>(rng, parts)` adds the parts of one random instance.
# ----------------------------------------------------------------------------------------


def _legs(parts, xs, zs, y_top, thick, round_legs, splay=0.0, slot=1):
  """Vertical (optionally splayed) legs from y_top down to 0 at the given (x, z) corners."""
  for x, z in zip(xs, zs):
    dx, dz = splay * np.sign(x) * y_top, splay * np.sign(z) * y_top
    if round_legs:
      parts.add(tube([[x + dx, 0, z + dz], [x, y_top, z]], thick / 2, 6), slot)
    else:
      v, f = box([thick, y_top, thick], [x, y_top / 2, z])
      v = v.copy()
      low = v[:, 1] < y_top / 2
      v[low, 0] += dx
      v[low, 2] += dz
      parts.add((v, f), slot)


def _make_chair(rng, parts):
  w, d = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
  t, h = rng.uniform(0.03, 0.09), rng.uniform(0.38, 0.55)
  if rng.random() < 0.75:
    lt = rng.uniform(0.03, 0.06)
    _legs(parts, [-w / 2 + lt, w / 2 - lt] * 2, [-d / 2 + lt] * 2 + [d / 2 - lt] * 2,
          h - t, lt, rng.random() < 0.4, rng.uniform(0, 0.12))
  else:  # swivel chair: column and star base
    parts.add(cylinder(0.03, 0.03, 0.06, h - t, 10), 1)
    nf = int(rng.integers(4, 6))
    for k in range(nf):
      a = 2 * np.pi * k / nf
      parts.add(tube([[0, 0.06, 0], [0.28 * np.cos(a), 0.02, 0.28 * np.sin(a)]], 0.02, 6), 1)
  parts.add(box([w, t, d], [0, h - t / 2, -0.0]), 0)
  bh, tilt = rng.uniform(0.35, 0.65), rng.uniform(0, 0.25)
  rot = rot_x(-tilt)
  if rng.random() < 0.5:
    panel = xform(box([w, bh, rng.uniform(0.03, 0.07)], [0, bh / 2, 0]), rot,
                  shift=[0, h, -d / 2])
    parts.add(panel, 0)
  else:
    ns = int(rng.integers(2, 6))
    for x in np.linspace(-w / 2 + 0.03, w / 2 - 0.03, ns):
      parts.add(xform(box([0.035, bh, 0.03], [x, bh / 2, 0]), rot, shift=[0, h, -d / 2]), 1)
    parts.add(xform(box([w, 0.07, 0.04], [0, bh, 0]), rot, shift=[0, h, -d / 2]), 0)
  if rng.random() < 0.35:
    ah = rng.uniform(0.15, 0.25)
    for x in (-w / 2, w / 2):
      parts.add(box([0.04, 0.04, d * 0.9], [x, h + ah, 0]), 1)
      parts.add(box([0.03, ah, 0.03], [x, h + ah / 2, d * 0.35]), 1)


def _make_table(rng, parts):
  h, t = rng.uniform(0.45, 0.8), rng.uniform(0.03, 0.08)
  round_top = rng.random() < 0.35
  if round_top:
    r = rng.uniform(0.4, 0.65)
    parts.add(cylinder(r, r, h - t, h, 24), 0)
    w = d = r * 1.2
  else:
    w, d = rng.uniform(0.8, 1.6), rng.uniform(0.5, 1.0)
    parts.add(box([w, t, d], [0, h - t / 2, 0]), 0)
  kind = rng.random()
  if kind < 0.6:
    lt = rng.uniform(0.04, 0.08)
    ix, iz = w / 2 - lt - rng.uniform(0, 0.1), d / 2 - lt - rng.uniform(0, 0.1)
    if round_top:
      ix, iz = ix / 1.5, iz / 1.5
    _legs(parts, [-ix, ix] * 2, [-iz] * 2 + [iz] * 2, h - t, lt, rng.random() < 0.4,
          rng.uniform(0, 0.05))
    if rng.random() < 0.3:
      parts.add(box([2 * ix, 0.03, 2 * iz], [0, rng.uniform(0.1, 0.3), 0]), 0)
  elif kind < 0.85:
    parts.add(cylinder(0.05, 0.05, 0.03, h - t, 12), 1)
    rb = rng.uniform(0.2, 0.35)
    parts.add(cylinder(rb, rb * 0.8, 0, 0.04, 16), 1)
  else:
    for x in (-w / 2 + 0.1, w / 2 - 0.1):
      parts.add(box([0.05, h - t, d * 0.8], [x, (h - t) / 2, 0]), 1)
    parts.add(box([w - 0.2, 0.05, 0.05], [0, 0.15, 0]), 1)


def _make_stool(rng, parts):
  h = rng.uniform(0.45, 0.8)
  t = rng.uniform(0.03, 0.07)
  r = rng.uniform(0.14, 0.24)
  if rng.random() < 0.7:
    parts.add(cylinder(r, r, h - t, h, 20), 0)
  else:
    parts.add(box([2 * r, t, 2 * r], [0, h - t / 2, 0]), 0)
  nl = int(rng.integers(3, 5))
  splay = rng.uniform(0.05, 0.2)
  for k in range(nl):
    a = 2 * np.pi * k / nl + np.pi / 4
    x, z = 0.75 * r * np.cos(a), 0.75 * r * np.sin(a)
    parts.add(tube([[x * (1 + splay * 4), 0, z * (1 + splay * 4)], [x, h - t, z]],
                   rng.uniform(0.015, 0.03), 6), 1)
  if rng.random() < 0.5:
    y = rng.uniform(0.15, 0.35) * h
    rr = 0.75 * r * (1 + splay * 4 * (1 - y / (h - t)))
    parts.add(xform(torus(rr, 0.012, seg_major=20, seg_minor=5), rot_x(np.pi / 2),
                    shift=[0, y, 0]), 1)


def _make_bench(rng, parts):
  L, d, h = rng.uniform(1.2, 2.0), rng.uniform(0.3, 0.5), rng.uniform(0.38, 0.5)
  t = rng.uniform(0.03, 0.08)
  if rng.random() < 0.5:
    parts.add(box([L, t, d], [0, h - t / 2, 0]), 0)
  else:  # slatted seat
    ns = int(rng.integers(3, 6))
    for z in np.linspace(-d / 2 + d / ns / 2, d / 2 - d / ns / 2, ns):
      parts.add(box([L, t, d / ns * 0.8], [0, h - t / 2, z]), 0)
  if rng.random() < 0.5:
    lt = rng.uniform(0.04, 0.07)
    _legs(parts, [-L / 2 + 0.1, L / 2 - 0.1] * 2, [-d / 2 + lt] * 2 + [d / 2 - lt] * 2,
          h - t, lt, rng.random() < 0.3, rng.uniform(0, 0.05))
  else:
    for x in (-L / 2 + 0.12, L / 2 - 0.12):
      parts.add(box([0.06, h - t, d * 0.9], [x, (h - t) / 2, 0]), 1)
  if rng.random() < 0.4:
    bh = rng.uniform(0.2, 0.4)
    parts.add(xform(box([L, bh, 0.04], [0, bh / 2 + 0.05, 0]), rot_x(-0.15),
                    shift=[0, h, -d / 2]), 0)
    for x in (-L / 2 + 0.12, L / 2 - 0.12):
      parts.add(box([0.04, 0.1, 0.04], [x, h + 0.05, -d / 2]), 1)


def _make_bed(rng, parts):
  L, W = rng.uniform(1.8, 2.2), rng.uniform(0.9, 1.8)
  fh = rng.uniform(0.1, 0.3)
  mt = rng.uniform(0.12, 0.25)
  lh = rng.uniform(0.03, 0.15)
  _legs(parts, [-W / 2 + 0.04, W / 2 - 0.04] * 2, [-L / 2 + 0.04] * 2 + [L / 2 - 0.04] * 2,
        lh, 0.06, False)
  parts.add(box([W, fh, L], [0, lh + fh / 2, 0]), 1)
  parts.add(box([W * 0.96, mt, L * 0.96], [0, lh + fh + mt / 2, 0]), 0)
  hb = rng.uniform(0.4, 0.9)
  parts.add(box([W, hb + lh + fh, 0.06], [0, (hb + lh + fh) / 2, -L / 2]), 1)
  if rng.random() < 0.5:
    fb = rng.uniform(0.1, 0.4) * hb
    parts.add(box([W, fb + lh + fh, 0.06], [0, (fb + lh + fh) / 2, L / 2]), 1)
  npl = 1 if W < 1.3 else int(rng.integers(1, 3))
  for x in (np.array([0.0]) if npl == 1 else np.array([-W / 4, W / 4])):
    parts.add(xform(ellipsoid([W / (2.5 * npl), 0.06, 0.15]),
                    shift=[x, lh + fh + mt + 0.04, -L / 2 + 0.25]), 2)


def _make_shelf(rng, parts):
  W, H, D = rng.uniform(0.6, 1.2), rng.uniform(1.0, 2.0), rng.uniform(0.25, 0.4)
  t = rng.uniform(0.02, 0.05)
  for x in (-W / 2 + t / 2, W / 2 - t / 2):
    parts.add(box([t, H, D], [x, H / 2, 0]), 0)
  ns = int(rng.integers(3, 7))
  base = rng.uniform(0, 0.1)
  ys = np.linspace(base + t / 2, H - t / 2, ns)
  for y in ys:
    parts.add(box([W - 2 * t, t, D], [0, y, 0]), 0)
  if rng.random() < 0.6:
    parts.add(box([W, H, 0.015], [0, H / 2, -D / 2]), 1)
  if rng.random() < 0.5:  # a few books
    for y0, y1 in zip(ys[:-1], ys[1:]):
      x = -W / 2 + t
      while x < W / 2 - t - 0.08 and rng.random() < 0.8:
        bw, bh = rng.uniform(0.03, 0.08), rng.uniform(0.5, 0.9) * (y1 - y0 - t)
        parts.add(box([bw, bh, D * 0.8], [x + bw / 2, y0 + t / 2 + bh / 2, 0]), 2)
        x += bw + rng.uniform(0, 0.05)


def _make_lamp(rng, parts):
  H = rng.uniform(0.5, 1.6)
  rb = rng.uniform(0.1, 0.25)
  if rng.random() < 0.7:
    parts.add(cylinder(rb, rb * rng.uniform(0.5, 1.0), 0, rng.uniform(0.02, 0.06), 16), 1)
  else:
    parts.add(box([2 * rb, 0.04, 2 * rb], [0, 0.02, 0]), 1)
  bend = rng.uniform(0, 0.35) if rng.random() < 0.5 else 0.0
  s = np.linspace(0, 1, 8)
  path = np.stack([bend * H * s ** 2, H * s, np.zeros_like(s)], -1)
  parts.add(tube(path, rng.uniform(0.012, 0.025), 6), 1)
  top = path[-1]
  sh = rng.uniform(0.15, 0.35)
  r0, r1 = rng.uniform(0.12, 0.3), rng.uniform(0.05, 0.2)
  if rng.random() < 0.65:  # open conical shade, hanging around the top
    shade = cylinder(r0, r1, -sh * 0.7, sh * 0.3, 20, caps=False)
  else:  # dome
    phi = np.linspace(np.pi / 2, 0, 6)
    shade = lathe(r0 * np.sin(phi) + 0.01, sh * np.cos(phi) - sh * 0.4, 20, False, True)
  parts.add(xform(shade, shift=top), 0)


def _make_mug(rng, parts):
  r, h = rng.uniform(0.3, 0.5), rng.uniform(0.6, 1.2)
  wt = rng.uniform(0.03, 0.06)
  taper = rng.uniform(0.85, 1.15)
  parts.add(lathe([0, r, r * taper, r * taper - wt, r - wt, 0],
                  [0, 0, h, h, wt, wt], 24, False, False), 0)
  if rng.random() < 0.9:
    hr = rng.uniform(0.25, 0.4) * h
    handle = torus(hr, rng.uniform(0.03, 0.06), np.pi, 10, 6)
    parts.add(xform(handle, rot_z(-np.pi / 2), shift=[r * (1 + taper) / 2 - 0.02, h * 0.5, 0]),
              rng.integers(0, 2))


def _make_bottle(rng, parts):
  rb, hb = rng.uniform(0.15, 0.3), rng.uniform(0.5, 0.9)
  rn, hn = rb * rng.uniform(0.25, 0.45), rng.uniform(0.1, 0.35)
  hs = rng.uniform(0.08, 0.3)
  a = np.linspace(0, np.pi / 2, 5)
  shoulder_r = rn + (rb - rn) * np.cos(a)
  shoulder_y = hb + hs * np.sin(a)
  r = np.concatenate([[rb * 0.95, rb], shoulder_r, [rn]])
  y = np.concatenate([[0, 0.03], shoulder_y, [hb + hs + hn]])
  parts.add(lathe(r, y, 20), 0)
  ch = rng.uniform(0.03, 0.08)
  parts.add(cylinder(rn * 1.15, rn * 1.15, hb + hs + hn, hb + hs + hn + ch, 12), 2)


def _make_vase(rng, parts):
  h = rng.uniform(0.6, 1.4)
  rb = rng.uniform(0.12, 0.3)
  y = np.linspace(0, h, 10)
  s = y / h
  r = rb * (1 + rng.uniform(0.2, 0.8) * np.sin(np.pi * s * rng.uniform(0.8, 1.3) +
                                                rng.uniform(-0.3, 0.3)))
  r += rng.uniform(0.0, 0.25) * rb * s ** 3  # flared mouth
  r = np.maximum(r, 0.05)
  wt = 0.02
  parts.add(lathe(np.concatenate([[0], r, r[::-1][:3] - wt]),
                  np.concatenate([[0], y, y[::-1][:3]]), 24, False, False), 0)
  if rng.random() < 0.3:
    for sgn in (-1, 1):
      parts.add(xform(torus(0.08 * h, 0.015, np.pi, 8, 5), rot_z(-sgn * np.pi / 2),
                      shift=[sgn * r[7] * 0.95, y[7], 0]), 0)


def _make_bowl(rng, parts):
  r, depth = rng.uniform(0.4, 0.7), rng.uniform(0.3, 0.6)
  wt = rng.uniform(0.02, 0.05)
  phi = np.linspace(0, np.pi / 2, 7)
  ro, yo = r * np.sin(phi), depth * r * (1 - np.cos(phi))
  ri, yi = (r - wt) * np.sin(phi[::-1]), depth * r * (1 - np.cos(phi[::-1])) + wt
  foot = 0.0
  if rng.random() < 0.5:
    foot = rng.uniform(0.03, 0.08)
    parts.add(cylinder(r * 0.35, r * 0.3, 0, foot, 20), 1)
  parts.add(lathe(np.concatenate([ro, ri]), np.concatenate([yo, yi]) + foot, 24, False,
                  False), 0)


def _make_airplane(rng, parts):
  L = 1.0
  fr = rng.uniform(0.05, 0.09)
  z = np.linspace(-L / 2, L / 2, 10)
  s = (z + L / 2) / L
  prof = fr * np.clip(np.minimum((1 - s) / 0.15, s / 0.35), 0, 1) ** 0.5 + 0.003
  fus = lathe(prof, z, 12, False, False)
  parts.add(xform(fus, rot_x(np.pi / 2)), 0)  # along z, nose at +z
  span, chord = rng.uniform(0.7, 1.3), rng.uniform(0.12, 0.25)
  sweep, taper = rng.uniform(0, 0.35), rng.uniform(0.3, 0.9)
  wz = rng.uniform(-0.05, 0.1)
  wy = rng.uniform(-0.6, 0.6) * fr
  for sgn in (-1, 1):
    tip = [sgn * span / 2, wz - sweep * span / 2]
    poly = [[0, wz + chord / 2], [0, wz - chord / 2],
            [tip[0], tip[1] - chord * taper / 2], [tip[0], tip[1] + chord * taper / 2]]
    parts.add(xform(prism(poly, -0.01, 0.01), shift=[0, wy, 0]), 1)
  tz = -L / 2 + 0.05
  tc, ts = rng.uniform(0.08, 0.14), rng.uniform(0.25, 0.45)
  for sgn in (-1, 1):
    poly = [[0, tz + tc], [0, tz], [sgn * ts / 2, tz - 0.04], [sgn * ts / 2, tz + tc * 0.5]]
    parts.add(xform(prism(poly, -0.008, 0.008), shift=[0, fr * 0.3, 0]), 1)
  fh = rng.uniform(0.1, 0.2)
  fin = prism([[tz + tc * 1.2, 0], [tz, 0], [tz - 0.03, fh], [tz + tc * 0.3, fh]], -0.008, 0.008)
  parts.add((fin[0][:, [1, 2, 0]], fin[1]), 1)  # (z, y) profile, thickness along x
  if rng.random() < 0.6:
    ne = 1 if rng.random() < 0.6 else 2
    for sgn in (-1, 1):
      for k in range(ne):
        x = sgn * span * (0.18 + 0.14 * k)
        zc = wz - sweep * abs(x) + chord * 0.3
        eng = xform(cylinder(0.035, 0.03, -0.08, 0.08, 10), rot_x(np.pi / 2),
                    shift=[x, wy - 0.04, zc])
        parts.add(eng, 2)


def _make_car(rng, parts):
  L, W = rng.uniform(0.9, 1.2), rng.uniform(0.4, 0.55)
  wr = rng.uniform(0.09, 0.15)
  bh = rng.uniform(0.15, 0.3)
  y0 = wr * rng.uniform(0.5, 0.9)
  parts.add(box([W, bh, L], [0, y0 + bh / 2, 0]), 0)
  kind = rng.random()
  ch = rng.uniform(0.12, 0.25)
  if kind < 0.7:  # cabin (sedan / SUV): trapezoid side profile extruded across x
    cl = L * rng.uniform(0.4, 0.7)
    cz = rng.uniform(-0.15, 0.05) * L
    slope = rng.uniform(0.05, 0.25) * cl
    poly = [[cz - cl / 2, 0], [cz + cl / 2, 0], [cz + cl / 2 - slope, ch],
            [cz - cl / 2 + slope * 0.6, ch]]
    cab = prism(poly, -W * 0.45, W * 0.45)  # (x,z) plane = (z_car, y_car), extrude x
    v = cab[0][:, [1, 2, 0]]
    parts.add((v + [0, y0 + bh, 0], cab[1]), 1)
  else:  # pickup: cab at the front, open bed walls at the back
    parts.add(box([W * 0.9, ch, L * 0.3], [0, y0 + bh + ch / 2, L * 0.15]), 1)
    for x in (-W / 2 + 0.02, W / 2 - 0.02):
      parts.add(box([0.03, 0.08, L * 0.4], [x, y0 + bh + 0.04, -L * 0.28]), 0)
  for x in (-W / 2, W / 2):
    for z in (-L * 0.33, L * 0.33):
      parts.add(xform(cylinder(wr, wr, -0.04, 0.04, 14), rot_z(np.pi / 2), shift=[x, wr, z]), 2)


def _make_boat(rng, parts):
  L, W, D = 1.0, rng.uniform(0.2, 0.4), rng.uniform(0.1, 0.2)
  nz, nt = 10, 7
  zs = np.linspace(-L / 2, L / 2, nz)
  s = (zs + L / 2) / L
  s0 = rng.uniform(0.4, 0.7)  # where the bow starts to narrow
  half = W / 2 * np.maximum(1 - np.maximum((s - s0) / (1 - s0), 0) ** rng.uniform(1.5, 2.5),
                            0.02)
  half *= np.clip(0.85 + 0.6 * s, 0, 1)  # narrower transom
  keel = D * (1 - 0.5 * s ** 3)
  th = np.linspace(-np.pi / 2, np.pi / 2, nt)
  vv = np.stack([half[:, None] * np.sin(th)[None], -keel[:, None] * np.cos(th)[None] ** 0.7,
                 np.broadcast_to(zs[:, None], (nz, nt))], -1).reshape(-1, 3)
  i = np.arange(nz - 1)[:, None]
  j = np.arange(nt - 1)[None]
  a = i * nt + j
  hull_f = np.concatenate([np.stack([a, a + 1, a + nt + 1], -1).reshape(-1, 3),
                           np.stack([a, a + nt + 1, a + nt], -1).reshape(-1, 3)])
  # deck: a fan over the top edge of every section
  left, right = np.arange(nz) * nt, np.arange(nz) * nt + nt - 1
  deck_f = np.concatenate([np.stack([left[:-1], right[:-1], right[1:]], -1),
                           np.stack([left[:-1], right[1:], left[1:]], -1)])
  parts.add((vv + [0, D, 0], np.concatenate([hull_f, deck_f])), 0)
  if rng.random() < 0.6:
    cl, cw, chh = rng.uniform(0.2, 0.4), W * rng.uniform(0.5, 0.8), rng.uniform(0.06, 0.15)
    parts.add(box([cw, chh, cl], [0, D + chh / 2, rng.uniform(-0.25, 0.05)]), 1)
  if rng.random() < 0.4:
    mh = rng.uniform(0.5, 0.9)
    mz = rng.uniform(0.0, 0.15)
    parts.add(cylinder(0.012, 0.01, D, D + mh, 6), 1)
    sail = prism([[mz, D + 0.08], [mz - rng.uniform(0.25, 0.4), D + 0.08], [mz, D + mh]],
                 -0.004, 0.004)
    parts.add((sail[0][:, [1, 2, 0]], sail[1]), 2)


def _make_rocket(rng, parts):
  r, H = rng.uniform(0.07, 0.14), rng.uniform(0.7, 1.2)
  nh = rng.uniform(0.15, 0.35)
  a = np.linspace(0, 1, 6)
  ogive = r * np.sqrt(np.maximum(1 - a ** 2, 0))
  parts.add(lathe(np.concatenate([[r * 0.8, r], ogive[1:]]),
                  np.concatenate([[0, 0.05], H + nh * a[1:]]), 16, True, False), 0)
  parts.add(cylinder(r * 0.6, r * 0.9, -0.06, 0.0, 12, caps=False), 2)
  nf = int(rng.integers(3, 5))
  fl, fw = rng.uniform(0.15, 0.35), rng.uniform(0.08, 0.2)
  for k in range(nf):
    fin = prism([[r * 0.9, 0], [r * 0.9, fl], [r + fw, fl * 0.3], [r + fw, -0.05]], -0.006,
                0.006)
    v = fin[0][:, [0, 2, 1]]  # fin in the (x, y) plane
    parts.add(xform((v, fin[1]), rot_y(2 * np.pi * k / nf)), 1)
  if rng.random() < 0.4:
    nb = int(rng.choice([2, 4]))
    br, bh = r * 0.5, H * rng.uniform(0.4, 0.7)
    for k in range(nb):
      ang = 2 * np.pi * k / nb + np.pi / 4
      b = lathe([br, br, 0.0], [0, bh, bh + 0.1], 10, True, False)
      parts.add(xform(b, shift=[(r + br) * np.cos(ang), 0.02, (r + br) * np.sin(ang)]), 1)


def _make_tree(rng, parts):
  H = rng.uniform(0.8, 1.6)
  th = H * rng.uniform(0.3, 0.55)
  tr = rng.uniform(0.03, 0.07)
  lean = rng.uniform(-0.08, 0.08, size=2)
  s = np.linspace(0, 1, 6)
  path = np.stack([lean[0] * s ** 2, th * s, lean[1] * s ** 2], -1)
  parts.add(tube(path, tr * (1.3 - 0.4 * s), 7), 1)
  top = path[-1]
  if rng.random() < 0.5:  # conifer: stacked cones
    nc = int(rng.integers(2, 5))
    ch = (H - th) / nc * 1.6
    for k in range(nc):
      rr = (H - th) * rng.uniform(0.3, 0.5) * (1 - 0.6 * k / nc)
      y = th * 0.7 + k * (H - th) / nc * 0.9
      parts.add(xform(cylinder(rr, 0.0, 0, ch, 14), shift=[top[0], y, top[2]]), 0)
  else:  # deciduous: cluster of blobs
    nb = int(rng.integers(1, 5))
    cr = (H - th) * rng.uniform(0.35, 0.55)
    for k in range(nb):
      off = rng.normal(0, cr * 0.35, 3) if k else np.zeros(3)
      rad = cr * rng.uniform(0.6, 1.0) * np.array([1, rng.uniform(0.7, 1.1), 1])
      parts.add(xform(ellipsoid(rad, 6, 12), shift=top + [0, cr * 0.8, 0] + off), 0)


def _make_tower(rng, parts):
  square = rng.random() < 0.5

  def frustum(r0, r1, y0, y1):  # square frusta have half-width r (4-gon rotated 45 deg)
    if square:
      return xform(lathe([r0 * np.sqrt(2), r1 * np.sqrt(2)], [y0, y1], 4), rot_y(np.pi / 4))
    return cylinder(r0, r1, y0, y1, 16)

  ns = int(rng.integers(2, 5))
  w = rng.uniform(0.2, 0.4)
  y = 0.0
  for k in range(ns):
    sh = rng.uniform(0.25, 0.6)
    w1 = w * rng.uniform(0.75, 1.0)
    parts.add(frustum(w, w1, y, y + sh), k % 2)
    y += sh
    if rng.random() < 0.5:  # balcony ledge
      parts.add(frustum(w1 * 1.25, w1 * 1.25, y, y + 0.03), 1)
      y += 0.03
    w = w1 * rng.uniform(0.7, 1.0)
  parts.add(frustum(w * 1.1, 0.0, y, y + rng.uniform(0.15, 0.6)), 2)


def _make_house(rng, parts):
  W, D, H = rng.uniform(0.6, 1.2), rng.uniform(0.5, 1.0), rng.uniform(0.35, 0.8)
  parts.add(box([W, H, D], [0, H / 2, 0]), 0)
  rh = rng.uniform(0.2, 0.5)
  over = rng.uniform(0.0, 0.08)
  kind = rng.random()
  if kind < 0.55:  # gable roof: triangle profile extruded along x
    roof = prism([[-D / 2 - over, H], [D / 2 + over, H], [0, H + rh]], -W / 2 - over,
                 W / 2 + over)
    parts.add((roof[0][:, [1, 2, 0]], roof[1]), 1)
  elif kind < 0.85:  # hip roof (pyramid)
    v = np.array([[-W / 2 - over, H, -D / 2 - over], [W / 2 + over, H, -D / 2 - over],
                  [W / 2 + over, H, D / 2 + over], [-W / 2 - over, H, D / 2 + over],
                  [-W * 0.2, H + rh, 0], [W * 0.2, H + rh, 0]])
    f = np.array([[0, 1, 5], [0, 5, 4], [2, 3, 4], [2, 4, 5], [1, 2, 5], [3, 0, 4],
                  [0, 1, 2], [0, 2, 3]])
    parts.add((v, f), 1)
  else:  # flat roof with a parapet
    parts.add(box([W + 0.04, 0.06, D + 0.04], [0, H + 0.03, 0]), 1)
  if rng.random() < 0.6:
    cx = rng.uniform(-W / 3, W / 3)
    parts.add(box([0.08, rh + 0.15, 0.08], [cx, H + (rh + 0.15) / 2, rng.uniform(-D / 4, 0)]),
              2)
  dw = rng.uniform(0.12, 0.2)
  parts.add(box([dw, H * 0.55, 0.02], [rng.uniform(-W / 3, W / 3), H * 0.275, D / 2]), 2)


def _make_guitar(rng, parts):
  bl = rng.uniform(0.35, 0.5)
  lw, uw = rng.uniform(0.16, 0.24), rng.uniform(0.11, 0.18)
  t = rng.uniform(0.04, 0.1)
  parts.add(xform(ellipsoid([lw, bl * 0.32, t / 2], 6, 16), shift=[0, bl * 0.3, 0]), 0)
  parts.add(xform(ellipsoid([uw, bl * 0.25, t / 2], 6, 16), shift=[0, bl * 0.72, 0]), 0)
  nl = rng.uniform(0.35, 0.55)
  parts.add(box([0.045, nl, 0.025], [0, bl * 0.85 + nl / 2, t * 0.2]), 1)
  hl = rng.uniform(0.1, 0.18)
  head = box([0.07, hl, 0.02], [0, hl / 2, 0])
  parts.add(xform(head, rot_x(-rng.uniform(0, 0.3)), shift=[0, bl * 0.85 + nl, t * 0.2]), 1)
  parts.add(box([0.12, 0.03, 0.01], [0, bl * 0.25, t / 2]), 2)  # bridge


def _make_sofa(rng, parts):
  L, D = rng.uniform(1.2, 2.2), rng.uniform(0.6, 0.9)
  sh, bh = rng.uniform(0.3, 0.45), rng.uniform(0.35, 0.6)
  lh = rng.uniform(0.0, 0.1)
  if lh > 0.02:
    _legs(parts, [-L / 2 + 0.05, L / 2 - 0.05] * 2, [-D / 2 + 0.05] * 2 +
          [D / 2 - 0.05] * 2, lh, 0.04, rng.random() < 0.5)
  parts.add(box([L, sh - lh, D], [0, lh + (sh - lh) / 2, 0]), 0)
  bt = rng.uniform(0.1, 0.2)
  parts.add(xform(box([L, bh, bt], [0, bh / 2, bt / 2]), rot_x(-rng.uniform(0, 0.2)),
                  shift=[0, sh, -D / 2]), 0)
  aw = rng.uniform(0.08, 0.2)
  ah = rng.uniform(0.1, 0.3)
  rounded = rng.random() < 0.5
  for sgn in (-1, 1):
    x = sgn * (L / 2 + aw / 2)
    parts.add(box([aw, sh + ah - lh, D], [x, lh + (sh + ah - lh) / 2, 0]), 0)
    if rounded:
      parts.add(xform(cylinder(aw * 0.6, aw * 0.6, -D / 2, D / 2, 10), rot_x(np.pi / 2),
                      shift=[x, sh + ah, 0]), 0)
  nc = int(rng.integers(1, 4))
  cw = L / nc
  for k in range(nc):
    parts.add(box([cw * 0.95, 0.1, D - bt], [-L / 2 + cw * (k + 0.5), sh + 0.05, bt / 2]), 1)


_MAKERS: dict[str, Callable] = {
    "chair": _make_chair, "table": _make_table, "stool": _make_stool, "bench": _make_bench,
    "bed": _make_bed, "shelf": _make_shelf, "lamp": _make_lamp, "mug": _make_mug,
    "bottle": _make_bottle, "vase": _make_vase, "bowl": _make_bowl,
    "airplane": _make_airplane, "car": _make_car, "boat": _make_boat, "rocket": _make_rocket,
    "tree": _make_tree, "tower": _make_tower, "house": _make_house, "guitar": _make_guitar,
    "sofa": _make_sofa,
}
CATEGORIES: tuple[str, ...] = tuple(_MAKERS)


# ----------------------------------------------------------------------------------------
# Object = mesh + colours + deformation, normalised; point sampling; rendering.
# ----------------------------------------------------------------------------------------


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
  parts = _Parts()
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


def sample_surface(vertices: np.ndarray, faces: np.ndarray, num_points: int,
                   rng: np.random.Generator) -> np.ndarray:
  """Points uniform by area on a triangle mesh: float64 [num_points, 3]."""
  tri = vertices[faces]  # [m, 3, 3]
  area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
  cdf = np.cumsum(area)
  idx = np.searchsorted(cdf, rng.random(num_points) * cdf[-1], side="right")
  idx = np.minimum(idx, len(faces) - 1)
  r1, r2 = rng.random(num_points), rng.random(num_points)
  s = np.sqrt(r1)
  w = np.stack([1 - s, s * (1 - r2), s * r2], -1)
  return np.einsum("nk,nkd->nd", w, tri[idx])


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
  rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
  mesh = make_mesh(label, rng)
  palette = random_palette(rng)
  points = sample_surface(mesh.vertices, mesh.faces, num_points, rng)
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

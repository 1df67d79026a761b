"""Makers of the 12 other categories: vessels (mug, bottle, vase, bowl), vehicles (airplane,
car, boat, rocket), outdoor shapes (tree, tower, house) and the guitar.

Each `make_<name>(rng, parts)` adds the parts of one random instance to a `Parts`
(colour slots 0 main, 1 second, 2 accent) [ours]; all randomness comes from `rng`.
"""
from __future__ import annotations

import numpy as np

from cmah_jax.datasets.synthetic_shapes.primitives import (
    box, cylinder, ellipsoid, lathe, prism, rot_x, rot_y, rot_z, torus, tube, xform)


def make_mug(rng, parts):
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


def make_bottle(rng, parts):
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


def make_vase(rng, parts):
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


def make_bowl(rng, parts):
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


def make_airplane(rng, parts):
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


def make_car(rng, parts):
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


def make_boat(rng, parts):
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


def make_rocket(rng, parts):
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


def make_tree(rng, parts):
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


def make_tower(rng, parts):
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


def make_house(rng, parts):
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


def make_guitar(rng, parts):
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

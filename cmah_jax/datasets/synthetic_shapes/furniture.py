"""Makers of the 8 furniture categories: chair, table, stool, bench, bed, shelf, lamp, sofa.

Each `make_<name>(rng, parts)` adds the parts of one random instance to a `Parts`
(colour slots 0 main, 1 second, 2 accent) [ours]; all randomness comes from `rng`.
"""
from __future__ import annotations

import numpy as np

from cmah_jax.datasets.synthetic_shapes.primitives import (
    box, cylinder, ellipsoid, lathe, rot_x, torus, tube, xform)


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


def make_chair(rng, parts):
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


def make_table(rng, parts):
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


def make_stool(rng, parts):
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


def make_bench(rng, parts):
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


def make_bed(rng, parts):
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


def make_shelf(rng, parts):
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


def make_lamp(rng, parts):
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


def make_sofa(rng, parts):
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

"""Drawing helpers shared by the training report and the retrieval pictures (matplotlib)."""
from __future__ import annotations

import numpy as np


def draw_points(ax, pts):
  """A point cloud (y-up, as every dataset stores it) seen from azimuth 35 deg, elevation
  20 deg, drawn back to front with nearer points darker."""
  az, el = np.deg2rad(35), np.deg2rad(20)
  x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
  u = x * np.cos(az) + z * np.sin(az)            # screen horizontal
  depth = -x * np.sin(az) + z * np.cos(az)
  v = y * np.cos(el) - depth * np.sin(el)        # screen vertical
  near = y * np.sin(el) + depth * np.cos(el)     # towards the viewer
  order = np.argsort(near)                       # farthest first: nearer ones cover them
  ax.scatter(u[order], v[order], s=1.0, c=near[order], cmap="Greys", vmin=-1.5, vmax=1.0,
             linewidths=0)
  ax.set_xlim(-1.1, 1.1)
  ax.set_ylim(-1.1, 1.1)
  ax.set_aspect("equal")

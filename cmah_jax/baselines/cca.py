"""Regularised canonical correlation analysis (NumPy) [Hotelling 1936; as used by CCA-ITQ,
Gong & Lazebnik 2013].

With covariances Cxx, Cyy (ridge-regularised) and Cxy, the canonical directions are
Wx = Cxx^{-1/2} U, Wy = Cyy^{-1/2} V and the canonical correlations the singular values s,
where U diag(s) V^T is the SVD of the whitened cross-covariance Cxx^{-1/2} Cxy Cyy^{-1/2}.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Cca(NamedTuple):
  """A fitted CCA; unpacks as `(wx, wy, mean_x, mean_y, correlations)`."""
  wx: np.ndarray  # [dx, dim] float64
  wy: np.ndarray  # [dy, dim] float64
  mean_x: np.ndarray  # [dx] float64
  mean_y: np.ndarray  # [dy] float64
  correlations: np.ndarray  # [dim] float64, descending, in [0, 1]

  def project_x(self, x) -> np.ndarray:
    """`[n, dx]` -> canonical variates `[n, dim]` float64."""
    return (np.asarray(x, np.float64) - self.mean_x) @ self.wx

  def project_y(self, y) -> np.ndarray:
    """`[n, dy]` -> canonical variates `[n, dim]` float64."""
    return (np.asarray(y, np.float64) - self.mean_y) @ self.wy


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
  """Symmetric positive-definite `[d, d]` -> C^{-1/2} (by eigendecomposition)."""
  w, v = np.linalg.eigh(c)
  if w[0] <= 0:
    raise ValueError(
        f"covariance is singular (smallest eigenvalue {w[0]:.3g}); use reg > 0")
  return (v / np.sqrt(w)) @ v.T


def regularised_covariance(x: np.ndarray, reg: float) -> np.ndarray:
  """Centred `[n, d]` -> `[d, d]` covariance (1/(n-1)) plus `reg * mean variance * I`.

  The ridge is relative to the mean variance trace(C)/d, so `reg` does not depend on the
  scale of the features.
  """
  c = x.T @ x / max(len(x) - 1, 1)
  return c + reg * (np.trace(c) / len(c)) * np.eye(len(c))


def fit_cca(x, y, dim: int, reg: float = 1e-4) -> Cca:
  """Regularised CCA of paired samples.

  Args:
    x: `[n, dx]` samples of view 1.
    y: `[n, dy]` samples of view 2, row i paired with row i of x.
    dim: number of canonical pairs, at most min(dx, dy).
    reg: relative ridge added to both covariances (see `regularised_covariance`); 0 needs
      full-rank covariances.

  Returns:
    `Cca(wx [dx, dim], wy [dy, dim], mean_x [dx], mean_y [dy], correlations [dim])`. The
    variates `project_x(x)` have (regularised) identity covariance, likewise for y, and the
    cross-covariance of the k-th pair is `correlations[k]`. Each pair's sign is fixed so that
    the largest-magnitude entry of the wx column is positive.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
    raise ValueError(f"x, y must be paired [n, dx], [n, dy]; got {x.shape}, {y.shape}")
  dx, dy = x.shape[1], y.shape[1]
  if not 0 < dim <= min(dx, dy):
    raise ValueError(f"dim={dim} must be in [1, min(dx={dx}, dy={dy})]: CCA has at most "
                     "as many canonical pairs as the smaller feature dimension")
  if reg < 0:
    raise ValueError(f"reg={reg} must be >= 0")
  mean_x, mean_y = x.mean(0), y.mean(0)
  xc, yc = x - mean_x, y - mean_y
  ix = _inv_sqrt(regularised_covariance(xc, reg))
  iy = _inv_sqrt(regularised_covariance(yc, reg))
  cxy = xc.T @ yc / max(len(x) - 1, 1)
  u, s, vt = np.linalg.svd(ix @ cxy @ iy, full_matrices=False)
  wx, wy = ix @ u[:, :dim], iy @ vt[:dim].T
  pivot = np.argmax(np.abs(wx), axis=0)
  sign = np.sign(wx[pivot, np.arange(dim)])
  sign[sign == 0] = 1
  return Cca(wx * sign, wy * sign, mean_x, mean_y, np.clip(s[:dim], 0.0, 1.0))

"""Iterative Quantization [Gong & Lazebnik, CVPR 2011 / TPAMI 2013] (NumPy).

Given zero-centred projected data V `[n, K]`, find the orthogonal R `[K, K]` minimising the
quantisation loss ||B - V R||_F^2 over R and B in {-1, +1}^{n x K}, by alternating
  B = sign(V R)                      (best codes for R),
  R = U W^T, U S W^T = SVD(V^T B)    (orthogonal Procrustes: best rotation for B),
from a random orthogonal R. Neither step can increase the loss, so it is non-increasing.
"""
from __future__ import annotations

import numpy as np


def sign(x) -> np.ndarray:
  """Elementwise sign with sign(0) = +1: float32 {-1, +1}."""
  return np.where(np.asarray(x) >= 0, 1.0, -1.0).astype(np.float32)


def random_rotation(k: int, seed: int) -> np.ndarray:
  """A Haar-random orthogonal `[k, k]` float64 matrix from `default_rng(seed)` (QR of a
  Gaussian matrix with the signs of R's diagonal folded into Q)."""
  q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((k, k)))
  return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def quantization_loss(v, rotation) -> float:
  """||sign(V R) - V R||_F^2 for `[n, K]` V and `[K, K]` R."""
  z = np.asarray(v, np.float64) @ rotation
  return float(np.sum((sign(z) - z) ** 2))


def fit_itq(v, n_iter: int = 50, seed: int = 0, return_losses: bool = False):
  """ITQ rotation of zero-centred data.

  Args:
    v: `[n, K]` projected, zero-centred data.
    n_iter: alternations (50 in [Gong & Lazebnik 2013]).
    seed: seed of the random orthogonal initial R.
    return_losses: also return the loss of each iterate.

  Returns:
    R `[K, K]` float64 orthogonal; with `return_losses`, `(R, losses [n_iter + 1])` where
    `losses[t]` is the quantisation loss of the t-th rotation (t = 0: the initial one).
  """
  v = np.asarray(v, np.float64)
  if v.ndim != 2:
    raise ValueError(f"v must be [n, K], got shape {v.shape}")
  rotation = random_rotation(v.shape[1], seed)
  losses = []
  for _ in range(int(n_iter)):
    z = v @ rotation
    b = sign(z).astype(np.float64)
    losses.append(float(np.sum((b - z) ** 2)))
    u, _, wt = np.linalg.svd(v.T @ b)
    rotation = u @ wt
  losses.append(quantization_loss(v, rotation))
  return (rotation, np.asarray(losses)) if return_losses else rotation

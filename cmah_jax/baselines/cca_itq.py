"""CCA-ITQ cross-modal hashing [Gong & Lazebnik, TPAMI 2013], images vs point clouds.

Fit: standardise each modality's features (train mean and std), CCA to `bits` dimensions,
scale the k-th canonical direction of both modalities by `correlation_k ** power`, then learn
ONE ITQ rotation on the stacked projected training data of both modalities, so that bit j
means the same in both code spaces. Encode: `sign(((f - mean) / std) W diag(scale) R)`.

The eigenvalue scaling is Gong & Lazebnik's: CCA directions with weak correlation would
otherwise weigh as much as strong ones once ITQ rotates them together. "Eigenvalue" here is
the canonical correlation (the eigenvalue of the symmetric generalised eigenproblem
[0 Cxy; Cyx 0] w = lambda [Cxx 0; 0 Cyy] w); `power` 0 turns the scaling off. Our defaults
`power = 2`, `reg = 1e-3` were chosen on a validation split carved out of synthetic_shapes
train (`benchmarks/baseline_cca_itq.py --validate`), never on query/database: power 0 / 1 /
2 / 4 gave mean val mAP 0.37-0.43 / 0.51-0.60 / 0.58-0.61 / 0.54-0.59 over the other
settings tried (unscaled weak directions hurt most at 64-128 bits).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from cmah_jax.baselines import cca, itq


@dataclasses.dataclass
class CcaItq:
  """CCA-ITQ hash functions for two modalities sharing one `bits`-bit code space.

  Attributes:
    reg: relative ridge of the CCA covariances (`cca.regularised_covariance`).
    power: directions scaled by canonical correlation ** power [Gong & Lazebnik 2013].
    n_iter: ITQ alternations.
  """
  reg: float = 1e-3
  power: float = 2.0
  n_iter: int = 50
  # Set by fit().
  stats: tuple | None = None  # (img mean, img std, pts mean, pts std), each [d] float64
  model: cca.Cca | None = None
  scale: np.ndarray | None = None  # [bits] float64
  rotation: np.ndarray | None = None  # [bits, bits] float64

  def fit(self, img_feats, pts_feats, bits: int, seed: int = 0) -> "CcaItq":
    """Learn from paired training features.

    Args:
      img_feats: `[n, d_img]` image features.
      pts_feats: `[n, d_pts]` point-cloud features, row i paired with image row i.
      bits: code length K <= min(d_img, d_pts) (one CCA direction per bit).
      seed: seed of ITQ's initial rotation.

    Returns:
      self, fitted.
    """
    x = np.asarray(img_feats, np.float64)
    y = np.asarray(pts_feats, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
      raise ValueError(f"features must be paired [n, d_img], [n, d_pts]; got {x.shape}, "
                       f"{y.shape}")
    if not 0 < bits <= min(x.shape[1], y.shape[1]):
      raise ValueError(
          f"bits={bits} exceeds what CCA can give: one canonical direction per bit needs "
          f"bits <= min(image feature dim {x.shape[1]}, point feature dim {y.shape[1]})")
    self.stats = (x.mean(0), _std(x), y.mean(0), _std(y))
    x, y = self._standardise(x, y)
    self.model = cca.fit_cca(x, y, bits, self.reg)
    self.scale = self.model.correlations ** self.power
    v = np.concatenate([self.model.project_x(x), self.model.project_y(y)]) * self.scale
    self.rotation = itq.fit_itq(v - v.mean(0), self.n_iter, seed)
    return self

  def _standardise(self, x=None, y=None):
    mx, sx, my, sy = self.stats
    return (None if x is None else (x - mx) / sx), (None if y is None else (y - my) / sy)

  def _check_fitted(self):
    if self.rotation is None:
      raise RuntimeError("CcaItq is not fitted: call fit() first")

  def encode_images(self, feats) -> np.ndarray:
    """`[n, d_img]` image features -> codes `[n, bits]` float32 in {-1, +1}."""
    self._check_fitted()
    x, _ = self._standardise(x=np.asarray(feats, np.float64))
    return itq.sign(self.model.project_x(x) * self.scale @ self.rotation)

  def encode_points(self, feats) -> np.ndarray:
    """`[n, d_pts]` point-cloud features -> codes `[n, bits]` float32 in {-1, +1}."""
    self._check_fitted()
    _, y = self._standardise(y=np.asarray(feats, np.float64))
    return itq.sign(self.model.project_y(y) * self.scale @ self.rotation)


def _std(x: np.ndarray) -> np.ndarray:
  """Per-feature std, with constant features given std 1 (left unscaled)."""
  s = x.std(0)
  return np.where(s > 1e-12, s, 1.0)

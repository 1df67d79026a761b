"""Hand-crafted features for the shallow baselines (NumPy, deterministic given a seed).

Images: a histogram of oriented gradients on a spatial grid [Dalal & Triggs 2005] and a
block-mean colour thumbnail. Point clouds: shape distributions [Osada et al. 2002] (D2 pair
distances, A3 triple angles), a radius-from-centroid histogram, a height x horizontal-radius
histogram, covariance eigenvalues and per-axis extents. The rotation-invariant parts (D2,
A3, radii, eigenvalues) ignore pose; the height histogram and extents assume y is up, as in
our datasets (objects upright, cameras at random azimuths).
"""
from __future__ import annotations

import numpy as np

_CHUNK = 256  # objects per block: bounds the temporary arrays
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601


def _block_mean(x: np.ndarray, size: int) -> np.ndarray:
  """float `[n, H, W, C]` -> `[n, size, size, C]` by the mean over equal blocks."""
  n, h, w, c = x.shape
  if h % size or w % size:
    raise ValueError(f"image size {h}x{w} is not a multiple of the thumbnail size {size}")
  return x.reshape(n, size, h // size, size, w // size, c).mean(axis=(2, 4))


def hog_features(images, grid: int = 4, bins: int = 9, norm: str = "cell") -> np.ndarray:
  """Grid histograms of unsigned gradient orientation, magnitude weighted [Dalal & Triggs
  2005, simplified: hard binning, no block overlap].

  Args:
    images: uint8 `[n, H, W, 3]`.
    grid: cells per side; H and W are split into `grid` near-equal bands.
    bins: orientation bins over [0, pi).
    norm: "cell" (L2 per cell, as D&T's blocks, scale-free contrast) or "global" (L2 over
      the whole descriptor, keeping where the gradient energy is).

  Returns:
    float32 `[n, grid * grid * bins]`.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [n, H, W, 3], got {images.shape}")
  if norm not in ("cell", "global"):
    raise ValueError(f"norm={norm!r}: expected 'cell' or 'global'")
  n, h, w, _ = images.shape
  cy = (np.arange(h) * grid // h)[:, None]  # cell row of each pixel row
  cx = (np.arange(w) * grid // w)[None, :]
  cell = (cy * grid + cx) * bins  # [H, W]
  out = np.empty((n, grid * grid * bins), np.float32)
  for s in range(0, n, _CHUNK):
    grey = images[s:s + _CHUNK].astype(np.float32) @ _LUMA / 255.0  # [c, H, W]
    gx = np.zeros_like(grey)
    gy = np.zeros_like(grey)
    gx[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]  # central differences [-1, 0, 1]
    gy[:, 1:-1, :] = grey[:, 2:, :] - grey[:, :-2, :]
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    b = np.minimum((ang * (bins / np.pi)).astype(np.int64), bins - 1)
    c = len(grey)
    idx = np.arange(c)[:, None, None] * (grid * grid * bins) + cell[None] + b
    hist = np.bincount(idx.ravel(), weights=mag.ravel(), minlength=c * grid * grid * bins)
    hist = hist.reshape(c, grid * grid, bins)
    axes = 2 if norm == "cell" else (1, 2)
    hist = hist / np.sqrt(np.sum(hist ** 2, axis=axes, keepdims=True) + 1e-6)
    out[s:s + c] = hist.reshape(c, -1)
  return out


def thumbnail_features(images, size: int = 8) -> np.ndarray:
  """uint8 `[n, H, W, 3]` -> float32 `[n, size * size * 3]` in [0, 1]: the block-mean
  downsampled image (colour layout and silhouette against the background)."""
  images = np.asarray(images)
  out = [_block_mean(images[s:s + _CHUNK].astype(np.float32) / 255.0, size)
         for s in range(0, len(images), _CHUNK)]
  return np.concatenate(out).reshape(len(images), -1).astype(np.float32)


def image_features(images, grid: int = 4, bins: int = 9, thumb: int = 8,
                   norm: str = "cell") -> np.ndarray:
  """HOG `[n, grid^2 * bins]` and thumbnail `[n, thumb^2 * 3]`, concatenated: float32."""
  return np.concatenate([hog_features(images, grid, bins, norm),
                         thumbnail_features(images, thumb)], axis=1)


def _histograms(values: np.ndarray, bins: int, lo: float, hi: float) -> np.ndarray:
  """Row-wise normalised histograms: `[c, m]` -> `[c, bins]` (values clipped into range)."""
  c = values.shape[0]
  b = np.clip(((values - lo) * (bins / (hi - lo))).astype(np.int64), 0, bins - 1)
  counts = np.bincount((np.arange(c)[:, None] * bins + b).ravel(), minlength=c * bins)
  return counts.reshape(c, bins) / values.shape[1]


def _distinct_indices(rng: np.random.Generator, count: int, num_points: int,
                      k: int) -> np.ndarray:
  """`[count, k]` int: `count` draws of `k` distinct indices below `num_points`."""
  return np.argsort(rng.random((count, num_points)), axis=1)[:, :k]


def point_features(points, seed: int = 0, num_samples: int = 4096, d2_bins: int = 64,
                   a3_bins: int = 32, radial_bins: int = 32, height_bins: int = 8,
                   ring_bins: int = 8) -> np.ndarray:
  """Shape descriptors of unit-sphere normalised point clouds.

  Blocks (each histogram sums to 1):
    D2 [Osada et al. 2002]: distances of `num_samples` random point pairs on [0, 2].
    A3 [Osada et al. 2002]: angle at the middle point of random triples on [0, pi].
    radial: distances from the centroid on [0, 1.5].
    height x ring: joint histogram of y on [-1, 1] and the distance from the y axis on
      [0, 1] (invariant to rotation about the up axis).
    moments: the 3 covariance eigenvalues (descending) and the 3 per-axis extents.

  The pair and triple indices are drawn once from `default_rng(seed)` and shared by every
  object, so an object's features do not depend on the batch it is in (the point order of
  our clouds is already random).

  Args:
    points: float `[n, N, 3]`.
    seed: seed of the pair/triple sampling.

  Returns:
    float32 `[n, d2_bins + a3_bins + radial_bins + height_bins * ring_bins + 6]`.
  """
  points = np.asarray(points, np.float32)
  if points.ndim != 3 or points.shape[-1] != 3 or points.shape[1] < 3:
    raise ValueError(f"points must be [n, N >= 3, 3], got {points.shape}")
  n, num_points, _ = points.shape
  rng = np.random.default_rng(seed)
  pairs = _distinct_indices(rng, num_samples, num_points, 2)
  triples = _distinct_indices(rng, num_samples, num_points, 3)
  blocks = []
  for s in range(0, n, _CHUNK):
    p = points[s:s + _CHUNK]
    d2 = np.linalg.norm(p[:, pairs[:, 0]] - p[:, pairs[:, 1]], axis=-1)
    u = p[:, triples[:, 0]] - p[:, triples[:, 1]]
    v = p[:, triples[:, 2]] - p[:, triples[:, 1]]
    cos = np.sum(u * v, -1) / np.maximum(
        np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1), 1e-12)
    a3 = np.arccos(np.clip(cos, -1.0, 1.0))
    centred = p - p.mean(axis=1, keepdims=True)
    radial = np.linalg.norm(centred, axis=-1)
    ring = np.hypot(p[..., 0], p[..., 2])
    h = np.clip(((p[..., 1] + 1) * (height_bins / 2)).astype(np.int64), 0, height_bins - 1)
    r = np.clip((ring * ring_bins).astype(np.int64), 0, ring_bins - 1)
    joint = _histograms((h * ring_bins + r).astype(np.float64), height_bins * ring_bins,
                        0, height_bins * ring_bins)
    cov = np.einsum("cni,cnj->cij", centred, centred) / num_points
    eig = np.linalg.eigvalsh(cov)[:, ::-1]
    extent = p.max(axis=1) - p.min(axis=1)
    blocks.append(np.concatenate([
        _histograms(d2, d2_bins, 0.0, 2.0), _histograms(a3, a3_bins, 0.0, np.pi),
        _histograms(radial, radial_bins, 0.0, 1.5), joint, eig, extent], axis=1))
  return np.concatenate(blocks).astype(np.float32)

"""Shallow baselines: features, CCA against an independent derivation, ITQ, CCA-ITQ."""
import numpy as np
import pytest

from cmah_jax import baselines
from cmah_jax.baselines import cca, features, itq


# ---------------------------------------------------------------------------------------
# Features.
# ---------------------------------------------------------------------------------------


def _images(n=5, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _clouds(n=5, num_points=256, seed=0):
  p = np.random.default_rng(seed).normal(size=(n, num_points, 3)).astype(np.float32)
  return p / np.linalg.norm(p, axis=-1, keepdims=True).max(axis=1, keepdims=True)


def test_hog_matches_pixel_loop():
  img = _images(1, 16)
  grey = img[0].astype(np.float64) @ [0.299, 0.587, 0.114] / 255
  ref = np.zeros((2, 2, 6))
  for i in range(16):
    for j in range(16):
      gx = grey[i, j + 1] - grey[i, j - 1] if 0 < j < 15 else 0.0
      gy = grey[i + 1, j] - grey[i - 1, j] if 0 < i < 15 else 0.0
      b = min(int((np.arctan2(gy, gx) % np.pi) / np.pi * 6), 5)
      ref[i // 8, j // 8, b] += np.hypot(gx, gy)
  cell = ref / np.sqrt((ref ** 2).sum(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(features.hog_features(img, grid=2, bins=6)[0], cell.ravel(),
                             rtol=1e-4, atol=1e-6)
  glob = ref / np.sqrt((ref ** 2).sum() + 1e-6)
  np.testing.assert_allclose(features.hog_features(img, 2, 6, norm="global")[0],
                             glob.ravel(), rtol=1e-4, atol=1e-6)


def test_hog_of_vertical_edge_is_horizontal_gradient():
  img = np.zeros((1, 16, 16, 3), np.uint8)
  img[:, :, 8:] = 255  # dark | bright: gradient along +x, orientation 0 -> bin 0
  h = features.hog_features(img, grid=1, bins=9)[0]
  assert h[0] == pytest.approx(1.0, abs=1e-3) and np.all(h[1:] == 0)


def test_image_features_shape_and_thumbnail():
  img = _images(3, 32)
  f = features.image_features(img, grid=4, bins=9, thumb=8)
  assert f.shape == (3, 4 * 4 * 9 + 8 * 8 * 3) and f.dtype == np.float32
  thumb = img.reshape(3, 8, 4, 8, 4, 3).mean(axis=(2, 4)) / 255
  np.testing.assert_allclose(f[:, 144:], thumb.reshape(3, -1), rtol=1e-5)
  with pytest.raises(ValueError, match="multiple of the thumbnail size"):
    features.thumbnail_features(_images(1, 30), 8)


def test_point_features_deterministic_and_batch_independent():
  pts = _clouds(5)
  f = features.point_features(pts, seed=3)
  assert f.shape == (5, 64 + 32 + 32 + 64 + 6) and f.dtype == np.float32
  np.testing.assert_array_equal(f, features.point_features(pts, seed=3))
  np.testing.assert_array_equal(f[2:3], features.point_features(pts[2:3], seed=3))
  assert not np.array_equal(f, features.point_features(pts, seed=4))
  np.testing.assert_allclose(f[:, :64].sum(1), 1.0, rtol=1e-6)  # D2 histogram


def test_point_features_reference_values():
  pts = _clouds(1, 64)
  f = features.point_features(pts, seed=7, num_samples=500, d2_bins=8, a3_bins=4,
                              radial_bins=4, height_bins=2, ring_bins=2)[0]
  # D2 by a plain loop over the same pairs.
  r = np.random.default_rng(7)
  pairs = np.argsort(r.random((500, 64)), axis=1)[:, :2]
  d = [np.linalg.norm(pts[0, a] - pts[0, b]) for a, b in pairs]
  np.testing.assert_allclose(f[:8], np.histogram(d, 8, (0, 2))[0] / 500, atol=1e-6)
  # A3: the angle at the middle point of the same generator's next 500 triples.
  triples = np.argsort(r.random((500, 64)), axis=1)[:, :3]
  angles = []
  for a, m, b in triples:
    u, v = pts[0, a] - pts[0, m], pts[0, b] - pts[0, m]
    angles.append(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))
  np.testing.assert_allclose(f[8:12], np.histogram(angles, 4, (0, np.pi))[0] / 500,
                             atol=1e-6)
  # Radial: distances from the centroid (not the origin) on [0, 1.5].
  radial = np.linalg.norm(pts[0] - pts[0].mean(0), axis=1)
  np.testing.assert_allclose(f[12:16], np.histogram(radial, 4, (0, 1.5))[0] / 64, atol=1e-6)
  # Height x ring: y on [-1, 1] (rows) by distance from the y axis on [0, 1] (columns).
  joint, _, _ = np.histogram2d(np.clip(pts[0, :, 1], -1, 0.999),
                               np.clip(np.hypot(pts[0, :, 0], pts[0, :, 2]), 0, 0.999),
                               bins=2, range=((-1, 1), (0, 1)))
  np.testing.assert_allclose(f[16:20], joint.ravel() / 64, atol=1e-6)
  # Moments: covariance eigenvalues and extents.
  c = np.cov(pts[0].T, bias=True)
  np.testing.assert_allclose(f[-6:-3], np.sort(np.linalg.eigvalsh(c))[::-1], rtol=1e-4)
  np.testing.assert_allclose(f[-3:], np.ptp(pts[0], axis=0), rtol=1e-6)


def test_point_features_invariant_to_rotation_about_up_axis():
  pts = _clouds(2, 512)
  a = 0.7
  rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
  f, g = (features.point_features(p, seed=0) for p in (pts, (pts @ rot.T).astype(np.float32)))
  # Every histogram block (D2, A3, radial, height x ring) and the eigenvalues are invariant
  # (up to float rounding at bin edges); extents are not.
  np.testing.assert_allclose(f[:, :-3], g[:, :-3], atol=2e-3)


# ---------------------------------------------------------------------------------------
# CCA.
# ---------------------------------------------------------------------------------------


def _paired(n=2000, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, 3))  # shared latent
  x = z @ rng.normal(size=(3, 6)) + rng.normal(size=(n, 6)) * [0.3, 1, 1, 2, 1, 1]
  y = z @ rng.normal(size=(3, 5)) + rng.normal(size=(n, 5)) + 4.0
  return x, y


def test_cca_correlations_match_eigenvalues_of_independent_form():
  x, y = _paired()
  reg = 1e-3
  wx, wy, mx, my, corr = cca.fit_cca(x, y, dim=4, reg=reg)
  # Independent derivation: squared canonical correlations are the eigenvalues of
  # Cxx^{-1} Cxy Cyy^{-1} Cyx (same ridge), via solve + a non-symmetric eigensolver.
  xc, yc = x - x.mean(0), y - y.mean(0)
  n = len(x) - 1
  cxx, cyy, cxy = xc.T @ xc / n, yc.T @ yc / n, xc.T @ yc / n
  cxx = cxx + reg * np.trace(cxx) / 6 * np.eye(6)
  cyy = cyy + reg * np.trace(cyy) / 5 * np.eye(5)
  ev = np.linalg.eigvals(np.linalg.solve(cxx, cxy) @ np.linalg.solve(cyy, cxy.T))
  ref = np.sqrt(np.sort(np.clip(ev.real, 0, None))[::-1][:4])
  np.testing.assert_allclose(corr, ref, rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(mx, x.mean(0))
  assert wx.shape == (6, 4) and wy.shape == (5, 4)


def test_cca_variates_whitened_and_paired_correlations():
  x, y = _paired(seed=1)
  model = cca.fit_cca(x, y, dim=5, reg=0.0)
  u, v = model.project_x(x), model.project_y(y)
  n = len(x) - 1
  np.testing.assert_allclose(u.T @ u / n, np.eye(5), atol=1e-8)
  np.testing.assert_allclose(v.T @ v / n, np.eye(5), atol=1e-8)
  np.testing.assert_allclose(u.T @ v / n, np.diag(model.correlations), atol=1e-8)
  assert np.all(np.diff(model.correlations) <= 1e-12)
  # Each pair's correlation is the plain Pearson correlation of the variates.
  for k in range(5):
    assert np.corrcoef(u[:, k], v[:, k])[0, 1] == pytest.approx(model.correlations[k])


def test_cca_finds_perfectly_correlated_direction():
  rng = np.random.default_rng(2)
  n = 500
  z = rng.normal(size=n)
  x = np.stack([rng.normal(size=n), z + 0, rng.normal(size=n)], 1)
  y = np.stack([rng.normal(size=n), rng.normal(size=n), -2 * z + 1], 1)
  model = cca.fit_cca(x, y, dim=2, reg=0.0)
  assert model.correlations[0] == pytest.approx(1.0, abs=1e-10)
  assert model.correlations[1] < 0.2  # the rest is independent noise
  wx0 = model.wx[:, 0] / np.linalg.norm(model.wx[:, 0])
  wy0 = model.wy[:, 0] / np.linalg.norm(model.wy[:, 0])
  np.testing.assert_allclose(wx0, [0, 1, 0], atol=1e-8)  # sign: largest entry positive
  np.testing.assert_allclose(wy0, [0, 0, -1], atol=1e-8)


def test_cca_errors():
  x, y = _paired(n=50)
  with pytest.raises(ValueError, match=r"min\(dx=6, dy=5\)"):
    cca.fit_cca(x, y, dim=6)
  with pytest.raises(ValueError, match="singular"):
    cca.fit_cca(np.concatenate([x, x[:, :1]], 1), y, dim=2, reg=0.0)


# ---------------------------------------------------------------------------------------
# ITQ.
# ---------------------------------------------------------------------------------------


def test_random_rotation_orthogonal_and_seeded():
  r = itq.random_rotation(7, seed=0)
  np.testing.assert_allclose(r @ r.T, np.eye(7), atol=1e-12)
  np.testing.assert_array_equal(r, itq.random_rotation(7, seed=0))


def test_itq_loss_non_increasing_and_rotation_orthogonal():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(500, 8)) * np.linspace(2, 0.5, 8)
  v -= v.mean(0)
  r, losses = itq.fit_itq(v, n_iter=50, seed=1, return_losses=True)
  assert losses.shape == (51,)
  assert np.all(np.diff(losses) <= 1e-9 * losses[0])
  assert losses[-1] < losses[0]
  np.testing.assert_allclose(r @ r.T, np.eye(8), atol=1e-10)
  assert itq.quantization_loss(v, r) == pytest.approx(losses[-1])


@pytest.mark.parametrize("bits,seeds", [(2, range(5)), (8, [6, 14])])
def test_itq_recovers_rotated_codes(bits, seeds):
  # V = B0 R0^T is an exact rotation of +-1 codes, so the global minimum has loss 0 and
  # codes B0 up to bit sign and order. ITQ is a local method: with 2 bits every initial
  # rotation tried reaches it; with 8 bits most stop in a local minimum (loss ~900 of an
  # initial ~2900; 4 of seeds 0..19 reach 0 here), so the 8-bit seeds are fixed.
  rng = np.random.default_rng(0)
  b0 = np.where(rng.random((1000, bits)) < 0.5, -1.0, 1.0)
  v = b0 @ itq.random_rotation(bits, seed=100).T
  for seed in seeds:
    r, losses = itq.fit_itq(v, n_iter=50, seed=seed, return_losses=True)
    assert losses[-1] < 1e-8 < losses[0]
    b = itq.sign(v @ r)
    match = np.abs(b.T @ b0) / len(b0)  # |agreement| of each learnt bit with each true bit
    np.testing.assert_allclose(np.sort(match.max(1)), 1.0)
    assert sorted(match.argmax(1)) == list(range(bits))  # a permutation


def test_sign_of_zero_is_plus_one():
  np.testing.assert_array_equal(itq.sign([-0.5, 0.0, 2.0]), [-1, 1, 1])


# ---------------------------------------------------------------------------------------
# CCA-ITQ and the chance baseline.
# ---------------------------------------------------------------------------------------


def _two_views(n=600, seed=0, classes=4):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  centres = rng.normal(size=(classes, 6)) * 3
  z = centres[labels] + rng.normal(size=(n, 6))
  img = z @ rng.normal(size=(6, 20)) + rng.normal(size=(n, 20))
  pts = np.tanh(z @ rng.normal(size=(6, 12))) + 0.1 * rng.normal(size=(n, 12))
  return img, pts, labels


def test_cca_itq_codes_and_cross_modal_retrieval():
  from cmah_jax import metrics
  img, pts, labels = _two_views()
  model = baselines.CcaItq().fit(img[:400], pts[:400], bits=8, seed=0)
  ci, cp = model.encode_images(img[400:]), model.encode_points(pts[400:])
  assert ci.shape == cp.shape == (200, 8) and ci.dtype == np.float32
  assert set(np.unique(ci)) <= {-1.0, 1.0}
  np.testing.assert_allclose(model.rotation @ model.rotation.T, np.eye(8), atol=1e-10)
  # Paired samples land on nearby codes; retrieval beats chance by far.
  assert np.mean(np.sum(ci != cp, 1)) < 2.5
  chance = metrics.mean_average_precision(
      baselines.random_codes(200, 8, 0), baselines.random_codes(200, 8, 1), labels[400:],
      labels[400:])
  got = metrics.mean_average_precision(ci, cp, labels[400:], labels[400:])
  assert got > 0.8 > chance + 0.4
  # Deterministic given the seed; one object encodes the same alone as in a batch.
  again = baselines.CcaItq().fit(img[:400], pts[:400], bits=8, seed=0)
  np.testing.assert_array_equal(again.encode_images(img[400:]), ci)
  np.testing.assert_array_equal(model.encode_points(pts[450:451]), cp[50:51])


@pytest.mark.parametrize("power", [0.0, 2.0])
def test_cca_itq_is_gong_and_lazebniks_recipe(power):
  """Codes = sign(((f - mean) / std) W diag(corr ** power) R), R fitted by ITQ on both
  modalities' stacked, centred training projections, built here step by step from the
  tested CCA and ITQ; the fitted rotation quantises better than the random start."""
  img, pts, _ = _two_views(seed=1)
  train_img, train_pts, test_img, test_pts = img[:400], pts[:400], img[400:], pts[400:]
  model = baselines.CcaItq(power=power).fit(train_img, train_pts, bits=6, seed=3)
  xs = (train_img - train_img.mean(0)) / train_img.std(0)
  ys = (train_pts - train_pts.mean(0)) / train_pts.std(0)
  ref = cca.fit_cca(xs, ys, 6, 1e-3)
  scale = ref.correlations ** power
  stacked = np.concatenate([(xs - ref.mean_x) @ ref.wx, (ys - ref.mean_y) @ ref.wy]) * scale
  rotation = itq.fit_itq(stacked - stacked.mean(0), 50, 3)
  for encode, feats, train, w, mean in (
      (model.encode_images, test_img, train_img, ref.wx, ref.mean_x),
      (model.encode_points, test_pts, train_pts, ref.wy, ref.mean_y)):
    z = (((feats - train.mean(0)) / train.std(0) - mean) @ w * scale) @ rotation
    np.testing.assert_array_equal(encode(feats), np.where(z >= 0, 1.0, -1.0))
  centred = stacked - stacked.mean(0)
  assert (itq.quantization_loss(centred, model.rotation)
          < itq.quantization_loss(centred, itq.random_rotation(6, 3)))


def test_cca_itq_errors():
  img, pts, _ = _two_views(n=50)
  with pytest.raises(ValueError, match="image feature dim 20, point feature dim 12"):
    baselines.CcaItq().fit(img, pts, bits=16)
  with pytest.raises(RuntimeError, match="not fitted"):
    baselines.CcaItq().encode_images(img)


def test_random_codes():
  c = baselines.random_codes(1000, 16, seed=0)
  assert c.shape == (1000, 16) and c.dtype == np.float32
  assert set(np.unique(c)) == {-1.0, 1.0}
  assert abs(c.mean()) < 0.05
  np.testing.assert_array_equal(c, baselines.random_codes(1000, 16, seed=0))

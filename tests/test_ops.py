"""Point-cloud, masking, hashing and image ops against plain NumPy/Python references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cmah_jax.ops import hashing, image, masking, pointcloud


# ----------------------------------------------------------------------------- references
def fps_reference(points, s):
  """Plain-loop FPS: start at 0, take argmax (lowest index on ties) of min sq. distance."""
  n = len(points)
  chosen = [0]
  min_d = [float("inf")] * n
  for _ in range(1, s):
    last = points[chosen[-1]]
    best, best_i = -1.0, -1
    for i in range(n):
      d = sum((float(points[i][c]) - float(last[c])) ** 2 for c in range(3))
      min_d[i] = min(min_d[i], d)
      if min_d[i] > best:
        best, best_i = min_d[i], i
    chosen.append(best_i)
  return np.array(chosen)


def knn_reference(queries, points, k):
  out = []
  for q in queries:
    d = [(float(np.sum((p - q) ** 2)), i) for i, p in enumerate(points)]
    out.append([i for _, i in sorted(d)[:k]])
  return np.array(out)


def chamfer_reference(x, y):
  a = np.mean([min(np.sum((xi - yj) ** 2) for yj in y) for xi in x])
  b = np.mean([min(np.sum((xi - yj) ** 2) for xi in x) for yj in y])
  return a + b


# ----------------------------------------------------------------------------- FPS
@pytest.mark.parametrize("n,s", [(50, 10), (17, 17), (8, 1)])
def test_fps_matches_loop(n, s):
  pts = np.random.default_rng(n).normal(size=(n, 3)).astype(np.float32)
  got = np.asarray(pointcloud.farthest_point_sample(jnp.asarray(pts), s))
  np.testing.assert_array_equal(got, fps_reference(pts, s))
  assert got.dtype == np.int32


def test_fps_duplicates_and_ties():
  # 4 distinct points repeated; after the distinct ones, picks go to the lowest index.
  base = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  pts = np.concatenate([base, base, base])
  got = np.asarray(pointcloud.farthest_point_sample(jnp.asarray(pts), 12))
  np.testing.assert_array_equal(got, fps_reference(pts, 12))
  assert sorted(got[:4]) == [0, 1, 2, 3]
  # Equidistant points: ties to the lowest index.
  np.testing.assert_array_equal(got[:2], [0, 1])


def test_fps_nan_follows_argmax_semantics():
  # A NaN coordinate makes NaN distances; like np.argmax / jnp.argmax, FPS then takes the
  # first NaN (never an out-of-range index).
  pts = np.random.default_rng(3).normal(size=(12, 3)).astype(np.float32)
  pts[5, 1] = np.nan
  min_d, chosen = np.full(12, np.inf, np.float32), [0]
  for _ in range(3):
    min_d = np.minimum(min_d, ((pts - pts[chosen[-1]]) ** 2).sum(-1))
    chosen.append(int(np.argmax(min_d)))
  got = np.asarray(pointcloud.farthest_point_sample(jnp.asarray(pts), 4))
  np.testing.assert_array_equal(got, chosen)


def test_fps_batched_jit_vmap():
  pts = np.random.default_rng(0).normal(size=(3, 40, 3)).astype(np.float32)
  ref = np.stack([fps_reference(p, 8) for p in pts])
  batched = pointcloud.farthest_point_sample(jnp.asarray(pts), 8)
  jitted = jax.jit(pointcloud.farthest_point_sample, static_argnums=1)(jnp.asarray(pts), 8)
  vmapped = jax.vmap(lambda p: pointcloud.farthest_point_sample(p, 8))(jnp.asarray(pts))
  for got in (batched, jitted, vmapped):
    np.testing.assert_array_equal(np.asarray(got), ref)


def test_fps_too_many_samples_is_clear_error():
  with pytest.raises(ValueError, match=r"num_samples=11.*N=10"):
    pointcloud.farthest_point_sample(jnp.zeros((10, 3)), 11)
  with pytest.raises(ValueError, match=r"\[\.\.\., N, 3\]"):
    pointcloud.farthest_point_sample(jnp.zeros((10, 2)), 3)


# ----------------------------------------------------------------------------- kNN
def test_knn_matches_brute_force_with_ties():
  rng = np.random.default_rng(1)
  pts = rng.integers(0, 3, size=(60, 3)).astype(np.float32)  # many exact ties
  qs = rng.integers(0, 3, size=(7, 3)).astype(np.float32)
  got = np.asarray(pointcloud.knn(jnp.asarray(qs), jnp.asarray(pts), 9))
  np.testing.assert_array_equal(got, knn_reference(qs, pts, 9))
  assert got.dtype == np.int32


def test_knn_batched_and_vmap():
  rng = np.random.default_rng(2)
  pts = rng.normal(size=(2, 30, 3)).astype(np.float32)
  qs = rng.normal(size=(2, 5, 3)).astype(np.float32)
  ref = np.stack([knn_reference(q, p, 4) for q, p in zip(qs, pts)])
  got = jax.jit(pointcloud.knn, static_argnums=2)(jnp.asarray(qs), jnp.asarray(pts), 4)
  np.testing.assert_array_equal(np.asarray(got), ref)
  got_v = jax.vmap(lambda q, p: pointcloud.knn(q, p, 4))(jnp.asarray(qs), jnp.asarray(pts))
  np.testing.assert_array_equal(np.asarray(got_v), ref)


# ----------------------------------------------------------------------------- grouping
def test_group_points_against_reference():
  pts = np.random.default_rng(3).normal(size=(2, 64, 3)).astype(np.float32)
  nb, ct = pointcloud.group_points(jnp.asarray(pts), 6, 5)
  assert nb.shape == (2, 6, 5, 3) and ct.shape == (2, 6, 3)
  for b in range(2):
    c_idx = fps_reference(pts[b], 6)
    np.testing.assert_allclose(ct[b], pts[b][c_idx], rtol=0, atol=0)
    n_idx = knn_reference(pts[b][c_idx], pts[b], 5)
    ref = pts[b][n_idx] - pts[b][c_idx][:, None, :]
    np.testing.assert_allclose(nb[b], ref, atol=1e-6)
    np.testing.assert_allclose(nb[b][:, 0], 0.0, atol=0)  # the centre is its own 1-NN
  nb1, ct1 = pointcloud.group_points(jnp.asarray(pts[0]), 6, 5)  # unbatched
  np.testing.assert_array_equal(nb1, nb[0])
  np.testing.assert_array_equal(ct1, ct[0])


# ----------------------------------------------------------------------------- Chamfer
def test_chamfer_hand_worked():
  x = jnp.array([[0.0, 0, 0], [1, 0, 0]])
  y = jnp.array([[0.0, 0, 0], [0, 2, 0], [1, 1, 0]])
  # x->y: 0 (to y0), 1 (to y2) -> mean 0.5; y->x: 0, 4 (y1 to x0), 1 -> mean 5/3.
  np.testing.assert_allclose(pointcloud.chamfer_distance(x, y), 0.5 + 5 / 3, rtol=1e-6)
  np.testing.assert_allclose(pointcloud.chamfer_distance(x, x), 0.0)


def test_chamfer_matches_double_loop_and_grad():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(3, 10, 3)).astype(np.float32)
  y = rng.normal(size=(3, 7, 3)).astype(np.float32)
  got = jax.jit(pointcloud.chamfer_distance)(x, y)
  np.testing.assert_allclose(got, [chamfer_reference(a, b) for a, b in zip(x, y)], rtol=1e-5)
  g = jax.grad(lambda a: pointcloud.chamfer_distance(a, y).sum())(jnp.asarray(x))
  assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0
  # Hand-derived gradient: d/dx_i = 2/n (x_i - y_nn(i)) + sum_{j: nn(j) = i} 2/m (x_i - y_j).
  for b in range(3):
    d = ((x[b][:, None] - y[b][None]) ** 2).sum(-1)
    ref = 2 / 10 * (x[b] - y[b][d.argmin(1)])
    for j, i in enumerate(d.argmin(0)):
      ref[i] += 2 / 7 * (x[b][i] - y[b][j])
    np.testing.assert_allclose(g[b], ref, rtol=1e-4, atol=1e-6)


def test_normalize_unit_sphere():
  pts = np.random.default_rng(5).normal(size=(2, 100, 3)).astype(np.float32) * 5 + 3
  out = np.asarray(pointcloud.normalize_unit_sphere(jnp.asarray(pts)))
  np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1).max(axis=1), 1.0, rtol=1e-5)
  centred = pts - pts.mean(axis=1, keepdims=True)
  ref = centred / np.linalg.norm(centred, axis=-1).max(axis=1)[:, None, None]
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(pointcloud.normalize_unit_sphere(jnp.ones((4, 3)))))
  # Its gradient: finite on a coincident cloud (sqrt'(0) is infinite), and on a spread
  # one equal to central finite differences (float64 NumPy reference).
  weights = np.random.default_rng(6).normal(size=(100, 3))
  loss = lambda p: jnp.sum(pointcloud.normalize_unit_sphere(p) * weights)
  assert np.all(np.isfinite(np.asarray(jax.grad(loss)(jnp.ones((100, 3))))))
  grad = np.asarray(jax.grad(loss)(jnp.asarray(pts[0])))

  def ref_loss(p):
    c = p - p.mean(0)
    return np.sum(c / np.linalg.norm(c, axis=-1).max() * weights)

  p0 = pts[0].astype(np.float64)
  for i, j in ((0, 0), (17, 2), (63, 1)):
    step = np.zeros_like(p0)
    step[i, j] = 1e-5
    fd = (ref_loss(p0 + step) - ref_loss(p0 - step)) / 2e-5
    np.testing.assert_allclose(grad[i, j], fd, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- masking
@pytest.mark.parametrize("t,ratio", [(64, 0.6), (49, 0.75), (10, 0.0), (7, 0.5)])
def test_random_mask_counts_and_disjointness(t, ratio):
  ids_keep, ids_masked, mask = masking.random_mask(jax.random.key(0), 5, t, ratio)
  t_mask = int(ratio * t)
  assert ids_keep.shape == (5, t - t_mask) and ids_masked.shape == (5, t_mask)
  assert mask.dtype == jnp.bool_
  for b in range(5):
    keep, masked = set(np.asarray(ids_keep[b])), set(np.asarray(ids_masked[b]))
    assert keep.isdisjoint(masked) and keep | masked == set(range(t))
    assert set(np.flatnonzero(np.asarray(mask[b]))) == masked
  np.testing.assert_array_equal(mask.sum(axis=1), t_mask)
  # Both index lists ascend: kept tokens keep their order in the encoder.
  assert np.all(np.diff(np.asarray(ids_keep), axis=1) > 0)
  assert np.all(np.diff(np.asarray(ids_masked), axis=1) > 0)


def test_random_mask_is_pure_function_of_key_and_rows_differ():
  a = masking.random_mask(jax.random.key(7), 8, 64, 0.6)
  b = jax.jit(masking.random_mask, static_argnums=(1, 2, 3))(jax.random.key(7), 8, 64, 0.6)
  c = masking.random_mask(jax.random.key(8), 8, 64, 0.6)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[2], c[2])
  rows = {tuple(np.asarray(r)) for r in a[2]}
  assert len(rows) == 8  # a fresh permutation per row
  with pytest.raises(ValueError, match="mask_ratio"):
    masking.random_mask(jax.random.key(0), 2, 10, 1.0)


def test_random_mask_is_uniform():
  # Each token is masked with probability ~ratio over many rows.
  _, _, mask = masking.random_mask(jax.random.key(1), 4000, 10, 0.5)
  freq = np.asarray(mask).mean(axis=0)
  np.testing.assert_allclose(freq, 0.5, atol=0.04)


# ----------------------------------------------------------------------------- hashing
def test_sign_ste_values_and_gradient():
  x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0])
  np.testing.assert_array_equal(hashing.sign_ste(x), [-1, 1, 1, 1, 1])
  g = jax.grad(lambda v: jnp.sum(hashing.sign_ste(v) * jnp.arange(5.0)))(x)
  np.testing.assert_array_equal(g, np.arange(5.0))  # identity gradient
  g2 = jax.jit(jax.grad(lambda v: jnp.sum(hashing.sign_ste(jnp.tanh(v)))))(x)
  np.testing.assert_allclose(g2, 1 - np.tanh(np.asarray(x, np.float64)) ** 2, rtol=1e-4)
  assert jax.vmap(hashing.sign_ste)(x[None]).shape == (1, 5)


@given(n=st.integers(1, 6), k=st.integers(1, 70), seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_pack_codes_matches_numpy_packbits(n, k, seed):
  codes = np.where(np.random.default_rng(seed).random((n, k)) < 0.5, -1, 1).astype(np.float32)
  packed = np.asarray(hashing.pack_codes(jnp.asarray(codes)))
  np.testing.assert_array_equal(packed, np.packbits(codes > 0, axis=-1))
  assert packed.dtype == np.uint8 and packed.shape == (n, -(-k // 8))
  np.testing.assert_array_equal(hashing.unpack_codes(jnp.asarray(packed), k), codes)


def test_pack_codes_bit_order_hand_worked():
  code = -np.ones(16, np.float32)
  code[0] = 1   # byte 0, bit 7 -> 128
  code[7] = 1   # byte 0, bit 0 -> 1
  code[9] = 1   # byte 1, bit 6 -> 64
  np.testing.assert_array_equal(hashing.pack_codes(jnp.asarray(code[None])), [[129, 64]])


def _hamming_reference(q, d):
  qb = np.unpackbits(q, axis=-1).astype(np.int32)
  db = np.unpackbits(d, axis=-1).astype(np.int32)
  return np.abs(qb[:, None, :] - db[None, :, :]).sum(-1)


@pytest.mark.parametrize("nbytes", [2, 8, 9])
def test_hamming_distance_matches_unpackbits(nbytes):
  rng = np.random.default_rng(nbytes)
  q = rng.integers(0, 256, (6, nbytes), dtype=np.uint8)
  d = rng.integers(0, 256, (11, nbytes), dtype=np.uint8)
  got = np.asarray(jax.jit(hashing.hamming_distance)(q, d))
  np.testing.assert_array_equal(got, _hamming_reference(q, d))
  assert got.dtype == np.int32


@pytest.mark.parametrize("n,k,chunk", [(300, 10, 64), (100, 100, 7), (50, 3, 65536),
                                     (300, 10, 2)])  # tiles of 3 of the 9 queries
def test_hamming_topk_matches_stable_sort(n, k, chunk):
  rng = np.random.default_rng(n)
  # 2 bytes of codes over 300 items: many tied distances, exercising the tie-break.
  q = rng.integers(0, 256, (9, 2), dtype=np.uint8)
  d = rng.integers(0, 256, (n, 2), dtype=np.uint8)
  dist, idx = hashing.hamming_topk(q, d, k, chunk_size=chunk)
  ref_d = _hamming_reference(q, d)
  ref_i = np.argsort(ref_d, axis=1, kind="stable")[:, :k]
  np.testing.assert_array_equal(idx, ref_i)
  np.testing.assert_array_equal(dist, np.take_along_axis(ref_d, ref_i, axis=1))


@pytest.mark.parametrize("n,k,nbytes,chunk,clustered", [
    (5000, 2, 2, 65536, False),  # three levels (groups of blocks), partial last block/group
    (5000, 3, 1, 65536, True),   # duplicates everywhere: ties decide nearly every slot
    (3001, 3, 9, 1, False),      # block level only, 3 words, query tiles (chunk_size=1)
])
def test_hamming_topk_hierarchical_paths_match_stable_sort(n, k, nbytes, chunk, clustered):
  rng = np.random.default_rng(n + k)
  q = rng.integers(0, 256, (9, nbytes), dtype=np.uint8)
  if clustered:
    centres = rng.integers(0, 256, (5, nbytes), dtype=np.uint8)
    d = centres[rng.integers(0, 5, n)]
    q[:3] = centres[:3]
  else:
    d = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
  dist, idx = hashing.hamming_topk(q, d, k, chunk_size=chunk)
  ref_d = _hamming_reference(q, d)
  ref_i = np.argsort(ref_d, axis=1, kind="stable")[:, :k]
  np.testing.assert_array_equal(idx, ref_i)
  np.testing.assert_array_equal(dist, np.take_along_axis(ref_d, ref_i, axis=1))
  assert dist.dtype == np.int32 and idx.dtype == np.int32


def test_hamming_topk_no_queries():
  d = np.random.default_rng(0).integers(0, 256, (5000, 8), dtype=np.uint8)
  dist, idx = hashing.hamming_topk(np.zeros((0, 8), np.uint8), d, 3)
  assert dist.shape == idx.shape == (0, 3)


def test_hamming_topk_rejects_bad_k():
  with pytest.raises(ValueError, match="k=5"):
    hashing.hamming_topk(np.zeros((1, 1), np.uint8), np.zeros((4, 1), np.uint8), 5)
  with pytest.raises(ValueError, match="byte widths"):
    hashing.hamming_topk(np.zeros((1, 2), np.uint8), np.zeros((4, 1), np.uint8), 1)



def test_unpacked_or_unsigned_codes_are_refused_by_name():
  """±1 int8 codes given where packed bytes go would read as bytes (-1 = 0xff); {0, 1}
  or bool codes given to `pack_codes` would all read as +1."""
  codes = np.array([[1, -1, -1, -1, -1, -1, -1, -1]], np.int8)
  for fn in (hashing.hamming_distance, lambda q, d: hashing.hamming_topk(q, d, 1)):
    with pytest.raises(ValueError, match=r"queries must be packed codes \[rows, nbytes\] "
                       r"uint8.*got \(1, 8\) int8"):
      fn(codes, hashing.pack_codes(codes))
    with pytest.raises(ValueError, match=r"database must be packed codes.*got \(1,\) uint8"):
      fn(hashing.pack_codes(codes), hashing.pack_codes(codes)[0])
  for bits in (codes > 0, (codes > 0).astype(np.uint8)):
    with pytest.raises(ValueError, match=r"pack_codes: .*2 \* bits - 1"):
      hashing.pack_codes(bits)
  # 2 * bits - 1 is the first code again: one bit set, the most significant (0x80).
  assert int(hashing.pack_codes(2 * (codes > 0).astype(np.int32) - 1)[0, 0]) == 0x80


# ----------------------------------------------------------------------------- image
def test_patchify_roundtrip_and_layout():
  img = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  patches = np.asarray(image.patchify(jnp.asarray(img), 2))
  assert patches.shape == (2, 6, 12)
  # Patch (row 1, col 2) of image 1 is pixels [2:4, 4:6].
  np.testing.assert_array_equal(patches[1, 1 * 3 + 2], img[1, 2:4, 4:6].reshape(-1))
  np.testing.assert_array_equal(image.unpatchify(jnp.asarray(patches), 2, 4, 6), img)
  with pytest.raises(ValueError, match="multiple of the patch size"):
    image.patchify(jnp.zeros((1, 5, 4, 3)), 2)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\], got shape \(4, 6, 3\)"):
    image.patchify(jnp.asarray(img[0]), 2)


def test_normalize_images():
  img = np.array([[[[0, 128, 255]]]], np.uint8)
  out = np.asarray(image.normalize_images(img))
  # ImageNet's published channel statistics (torchvision, MAE), typed here.
  ref = (img / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(out, ref, rtol=1e-6)
  np.testing.assert_array_equal(image.normalize_images(out), out)  # float passes through
  np.testing.assert_array_equal(image.denormalize_images(out), img)


"""Readers of cmah_jax.retrieval against hand-built files: one box mesh written by hand in
every format (ASCII / binary PLY, OBJ, OFF, ASCII / binary STL), point files, images, and
every kind of bad input."""
import io
import os
import struct

import numpy as np
import plyfile
import pytest
from PIL import Image

from cmah_jax.geometry import normalize_unit_sphere_np
from cmah_jax.retrieval import readers
from cmah_jax.retrieval.readers import BadInput

# A box with half-extents (1, 2, 3): faces perpendicular to x have area 4*6 = 24 each,
# to y 2*6 = 12, to z 2*4 = 8: area fractions by axis 48/88, 24/88, 16/88.
HALF = np.array([1.0, 2.0, 3.0])
VERTS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) * HALF
# Quads (outward order not needed for sampling), vertex index = 4*(x>0) + 2*(y>0) + (z>0).
QUADS = [[0, 1, 3, 2], [4, 6, 7, 5],   # x = -1, +1
         [0, 4, 5, 1], [2, 3, 7, 6],   # y = -2, +2
         [0, 2, 6, 4], [1, 5, 7, 3]]   # z = -3, +3
TRIS = np.array([[q[0], q[i], q[i + 1]] for q in QUADS for i in (1, 2)])
AXIS_FRACTIONS = np.array([48, 24, 16]) / 88


def write_ply(path, binary, faces=True):
  v = np.array([tuple(p) for p in VERTS], [("x", "f4"), ("y", "f4"), ("z", "f4")])
  els = [plyfile.PlyElement.describe(v, "vertex")]
  if faces:
    f = np.array([(q,) for q in QUADS], [("vertex_indices", "i4", (4,))])
    els.append(plyfile.PlyElement.describe(f, "face"))
  plyfile.PlyData(els, text=not binary).write(str(path))


def write_obj(path):
  lines = ["# box", "o box"] + [f"v {x} {y} {z}" for x, y, z in VERTS]
  for q in QUADS[:-1]:
    lines.append("f " + " ".join(f"{i + 1}/{i + 1}/1" for i in q))  # v/vt/vn, 1-based
  lines.append("f " + " ".join(str(i - 8) for i in QUADS[-1]))      # negative indices
  path.write_text("\n".join(lines) + "\n")


def write_off(path, counts_on_header=False, face_colour=""):
  head = ["OFF 8 6 0"] if counts_on_header else ["OFF", "# comment", "8 6 0"]
  lines = head + [f"{x} {y} {z}" for x, y, z in VERTS]
  lines += ["4 " + " ".join(map(str, q)) + face_colour for q in QUADS]
  path.write_text("\n".join(lines) + "\n")


def write_stl_ascii(path):
  lines = ["solid box"]
  for t in TRIS:
    lines += ["  facet normal 0 0 0", "    outer loop"]
    lines += [f"      vertex {x:.6e} {y:.6e} {z:.6e}" for x, y, z in VERTS[t]]
    lines += ["    endloop", "  endfacet"]
  path.write_text("\n".join(lines + ["endsolid box"]) + "\n")


def write_stl_binary(path, header=b"solid but binary"):
  out = io.BytesIO()
  out.write(header.ljust(80, b" "))
  out.write(struct.pack("<I", len(TRIS)))
  for t in TRIS:
    out.write(struct.pack("<3f", 0, 0, 0))
    for p in VERTS[t]:
      out.write(struct.pack("<3f", *p))
    out.write(struct.pack("<H", 0))
  path.write_bytes(out.getvalue())


MESH_WRITERS = {
    "ascii.ply": lambda p: write_ply(p, binary=False),
    "binary.ply": lambda p: write_ply(p, binary=True),
    "box.obj": write_obj,
    "box.off": write_off,
    "header.off": lambda p: write_off(p, counts_on_header=True),
    "colour.off": lambda p: write_off(p, face_colour=" 0.5 0.25 1.0"),  # per-face RGB
    "ascii.stl": write_stl_ascii,
    "binary.stl": write_stl_binary,
}


def _area(verts, faces):
  tri = verts[faces]
  return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


@pytest.mark.parametrize("name", sorted(MESH_WRITERS))
def test_box_mesh_in_every_format(tmp_path, name):
  path = tmp_path / name
  MESH_WRITERS[name](path)
  verts, faces = readers.read_geometry(str(path))
  assert faces is not None and faces.shape == (12, 3)
  np.testing.assert_allclose(_area(verts, faces).sum(), 88.0, rtol=1e-6)
  # The same surface: every triangle's corners are box corners.
  np.testing.assert_allclose(np.sort(np.abs(verts), axis=0)[-1], HALF, rtol=1e-6)

  n = 6000
  pts = readers.load_points(str(path), n, key=name)
  assert pts.shape == (n, 3) and pts.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(pts, axis=1).max(), 1.0, rtol=1e-5)
  # Undo the normalisation's scale with the box's known geometry: every point lies on a
  # face, i.e. max_i |x_i| / half_i is 1 for the face's axis (up to the centroid shift).
  rel = np.abs(pts - pts.mean(0)) / HALF
  rel = rel / np.quantile(rel.max(1), 0.5)
  axis = rel.argmax(1)
  counts = np.bincount(axis, minlength=3)
  expected = AXIS_FRACTIONS * n
  sigma = np.sqrt(n * AXIS_FRACTIONS * (1 - AXIS_FRACTIONS))
  assert np.all(np.abs(counts - expected) < 4 * sigma), (counts, expected)


def test_area_uniform_sampling_statistics(tmp_path):
  """Per-face counts of many samples match the face areas (chi-square, 12 faces)."""
  path = tmp_path / "b.stl"
  write_stl_binary(path)
  verts, faces = readers.read_geometry(str(path))
  n = 24000
  pts = readers.geometry.sample_surface(verts, faces, n, np.random.default_rng(0))
  on = np.isclose(np.abs(pts), HALF, atol=1e-9)  # which face plane(s) each point is on
  assert on.any(1).all()
  axis = on.argmax(1)
  sign = np.sign(pts[np.arange(n), axis]) > 0
  counts = np.bincount(2 * axis + sign, minlength=6)
  expected = np.repeat(AXIS_FRACTIONS / 2, 2) * n
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 20.5, (counts, expected)  # 5 dof, p = 0.001


def test_points_are_deterministic_per_id(tmp_path):
  path = tmp_path / "m.obj"
  write_obj(path)
  a = readers.load_points(str(path), 256, key="x/m.obj")
  b = readers.load_points(str(path), 256, key="x/m.obj")
  c = readers.load_points(str(path), 256, key="y/m.obj")
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_point_cloud_files_and_resampling(tmp_path):
  rng = np.random.default_rng(1)
  cloud = rng.normal(size=(500, 3)) * [1, 2, 3] + 5
  norm = normalize_unit_sphere_np(cloud)
  np.save(tmp_path / "c.npy", cloud.astype(np.float32))
  np.save(tmp_path / "c6.npy", np.concatenate([cloud, rng.normal(size=(500, 3))], 1))
  # PLY without faces: a point cloud.
  v = np.array([tuple(p) for p in cloud], [("x", "f8"), ("y", "f8"), ("z", "f8")])
  plyfile.PlyData([plyfile.PlyElement.describe(v, "vertex")]).write(str(tmp_path / "c.ply"))

  for name in ("c.npy", "c6.npy", "c.ply"):
    verts, faces = readers.read_geometry(str(tmp_path / name))
    assert faces is None and verts.shape == (500, 3)
    np.testing.assert_allclose(verts, cloud, rtol=1e-6)

  # P > N: N distinct stored points in stored order.
  sub = readers.load_points(str(tmp_path / "c.npy"), 256, key="c.npy")
  rows = [int(np.argmin(np.abs(norm - p).sum(1))) for p in sub]
  np.testing.assert_allclose(sub, norm[rows], atol=1e-6)
  assert len(set(rows)) == 256 and rows == sorted(rows)
  # P = N: all points as stored.
  np.testing.assert_allclose(readers.load_points(str(tmp_path / "c.npy"), 500, "c"), norm,
                             atol=1e-6)
  # P < N: every point at least once, the rest repeats, stored order.
  big = readers.load_points(str(tmp_path / "c.npy"), 1200, key="c.npy")
  rows = [int(np.argmin(np.abs(norm - p).sum(1))) for p in big]
  assert set(rows) == set(range(500)) and rows == sorted(rows)


def _jpeg_bytes(img):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "JPEG", quality=95)
  return buf.getvalue()


def test_images_centre_crop_resize_and_modes(tmp_path):
  # 60 x 100 (h x w): red bars of 20 px left and right, a 60x60 centre square in green.
  img = np.zeros((60, 100, 3), np.uint8)
  img[:, :20] = img[:, 80:] = (255, 0, 0)
  img[:, 20:80] = (0, 200, 0)
  Image.fromarray(img).save(tmp_path / "wide.png")
  out = readers.load_image(str(tmp_path / "wide.png"), 32)
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.broadcast_to(np.uint8([0, 200, 0]), (32, 32, 3)))
  # Box filter when shrinking by an integer factor = block mean.
  grad = np.repeat(np.repeat(np.arange(0, 256, 8, np.uint8)[:, None], 64, 1)[..., None], 3, 2)
  grad = np.repeat(grad, 2, axis=0)[:64]  # 64 x 64
  Image.fromarray(grad).save(tmp_path / "g.png")
  want = grad.reshape(32, 2, 32, 2, 3).astype(float).mean((1, 3))
  np.testing.assert_allclose(readers.load_image(str(tmp_path / "g.png"), 32), want, atol=1)
  # Grey -> RGB; RGBA composited on white; tall JPEG cropped to its centre.
  Image.fromarray(np.full((40, 40), 77, np.uint8)).save(tmp_path / "grey.png")
  np.testing.assert_array_equal(readers.load_image(str(tmp_path / "grey.png"), 8), 77)
  rgba = np.zeros((16, 16, 4), np.uint8)
  Image.fromarray(rgba).save(tmp_path / "clear.png")
  np.testing.assert_array_equal(readers.load_image(str(tmp_path / "clear.png"), 8), 255)
  tall = np.zeros((90, 30, 3), np.uint8)
  tall[30:60] = 250
  (tmp_path / "tall.jpg").write_bytes(_jpeg_bytes(tall))
  assert readers.load_image(str(tmp_path / "tall.jpg"), 16).min() > 230


def _bad_files(tmp_path):
  """name -> words the reason must contain."""
  rng = np.random.default_rng(0)
  (tmp_path / "empty.npy").write_bytes(b"")
  np.save(tmp_path / "nan.npy", np.where(rng.random((50, 3)) < 0.1, np.nan, 1.0))
  np.save(tmp_path / "ok.npy", rng.normal(size=(50, 3)))
  (tmp_path / "trunc.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:-30])
  np.save(tmp_path / "flat.npy", rng.normal(size=(50,)))
  np.save(tmp_path / "same.npy", np.ones((50, 3)))
  write_ply(tmp_path / "full.ply", binary=True)
  (tmp_path / "trunc.ply").write_bytes((tmp_path / "full.ply").read_bytes()[:-20])
  write_stl_binary(tmp_path / "full.stl")
  (tmp_path / "trunc.stl").write_bytes((tmp_path / "full.stl").read_bytes()[:-7])
  write_stl_ascii(tmp_path / "a.stl")
  (tmp_path / "trunc_ascii.stl").write_text((tmp_path / "a.stl").read_text()[:300])
  write_off(tmp_path / "b.off")
  (tmp_path / "trunc.off").write_text("\n".join((tmp_path / "b.off").read_text().split("\n")[:8]))
  (tmp_path / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
  (tmp_path / "badface.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 9\n")
  for name, index in (("badface.ply", 8), ("negface.ply", -1)):
    v = np.array([tuple(p) for p in VERTS], [("x", "f4"), ("y", "f4"), ("z", "f4")])
    f = np.array([([0, 1, index],)], [("vertex_indices", "i4", (3,))])
    plyfile.PlyData([plyfile.PlyElement.describe(v, "vertex"),
                     plyfile.PlyElement.describe(f, "face")]).write(str(tmp_path / name))
  (tmp_path / "badface.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 3\n")
  (tmp_path / "text.png").write_text("this is not an image\n")
  Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "f.png")
  (tmp_path / "trunc.png").write_bytes((tmp_path / "f.png").read_bytes()[:400])
  full_jpg = _jpeg_bytes(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
  (tmp_path / "trunc.jpg").write_bytes(full_jpg[:len(full_jpg) // 2])
  (tmp_path / "empty.jpg").write_bytes(b"")
  return {"empty.npy": "empty", "nan.npy": "non-finite", "trunc.npy": "truncated",
          "flat.npy": "shape", "same.npy": "coincide", "trunc.ply": "PLY",
          "trunc.stl": "truncated or corrupt binary STL", "trunc_ascii.stl": "endsolid",
          "trunc.off": "truncated",
          "flat.obj": "zero surface area", "badface.obj": "bad face",
          "badface.ply": r"face vertex index 8 outside \[0, 8\)",
          "negface.ply": r"face vertex index -1 outside \[0, 8\)",
          "badface.off": r"face vertex index 3 outside \[0, 3\)",
          "text.png": "not an image", "trunc.png": "truncated", "trunc.jpg": "truncated",
          "empty.jpg": "empty"}


def test_bad_inputs_name_the_reason(tmp_path):
  for name, words in _bad_files(tmp_path).items():
    kind = readers.modality_of(name)
    with pytest.raises(BadInput, match=words):
      readers.load_file(str(tmp_path / name), kind, name, 64, 16)
  # The good ones next to them read fine.
  for name in ("ok.npy", "full.ply", "full.stl", "a.stl", "b.off"):
    assert readers.load_points(str(tmp_path / name), 64, name).shape == (64, 3)
  assert readers.load_image(str(tmp_path / "f.png"), 16).shape == (16, 16, 3)
  with pytest.raises(BadInput, match="unreadable"):
    readers.load_points(str(tmp_path / "missing.npy"), 64, "m")


def test_scan_folder_recursive_ids_and_ignored(tmp_path):
  (tmp_path / "a" / "b").mkdir(parents=True)
  for rel in ("z.npy", "a/x.PLY", "a/b/y.obj", "a/p.png", "notes.txt", "a/b/q.JPG"):
    (tmp_path / rel).write_bytes(b"x")
  files, ignored = readers.scan_folder(str(tmp_path), "points")
  assert [i for i, _ in files] == ["a/b/y.obj", "a/x.PLY", "z.npy"]
  assert all(os.path.isabs(p) and p.endswith(i.split("/")[-1]) for i, p in files)
  assert [i for i, _ in ignored] == ["a/b/q.JPG", "a/p.png", "notes.txt"]
  assert "an image;" in dict(ignored)["a/p.png"] and ".txt" in dict(ignored)["notes.txt"]
  files, ignored = readers.scan_folder(str(tmp_path), "images")
  assert [i for i, _ in files] == ["a/b/q.JPG", "a/p.png"] and len(ignored) == 4

"""Tests of the procedural dataset (datasets/synthetic_shapes), its TFDS builder, prepare and
preview."""
import glob
import math
import os

import numpy as np
import pytest

from cmah_jax import datasets
from cmah_jax.datasets import prepare, preview
from cmah_jax.datasets.synthetic_shapes import categories, generate, primitives
from cmah_jax.datasets.synthetic_shapes.builder import SyntheticShapes
from cmah_jax.datasets.synthetic_shapes.render import render
from cmah_jax.geometry import sample_surface

SPLITS = ("train", "query", "database")


@pytest.fixture(scope="session")
def tiny_builder(tmp_path_factory):
  """The `tiny` config prepared once per session."""
  builder = datasets.get_builder("synthetic_shapes", str(tmp_path_factory.mktemp("tiny_a")), "tiny")
  builder.download_and_prepare()
  return builder


# ---------------------------------------------------------------------------- generator


def test_20_categories_each_with_its_own_maker():
  assert len(categories.CATEGORIES) == 20
  # From the same random stream, every category gives another mesh: a maker registered
  # under two names, or one that ignores the category, fails here.
  meshes = [categories.make_mesh(c, np.random.default_rng(3)) for c in categories.CATEGORIES]
  for i, a in enumerate(meshes):
    for j in range(i):
      b = meshes[j]
      same = a.vertices.shape == b.vertices.shape and np.allclose(a.vertices, b.vertices)
      assert not same, (categories.CATEGORIES[i], categories.CATEGORIES[j])
  # A category named or indexed is the same category.
  by_index = categories.make_mesh(5, np.random.default_rng(3))
  np.testing.assert_array_equal(by_index.vertices, meshes[5].vertices)


@pytest.mark.parametrize("category", categories.CATEGORIES)
def test_every_category_gives_valid_varied_meshes(category):
  sizes, extents = [], []
  for i in range(15):
    mesh = categories.make_mesh(category, np.random.default_rng([7, i]))
    v, f = mesh.vertices, mesh.faces
    assert np.isfinite(v).all()
    assert f.min() >= 0 and f.max() < len(v)
    assert mesh.slots.shape == (len(f),)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    assert area.sum() > 1e-3
    sizes.append(len(f))
    ext = v.max(0) - v.min(0)
    extents.append(ext / ext.max())
  # Intra-class variation: the normalised bounding-box proportions are not all the same.
  assert np.ptp(np.asarray(extents), axis=0).max() > 0.05


def test_generate_object_format_and_determinism():
  a = generate.generate_object(3, "train", 17, num_points=256, num_views=3, image_size=24)
  b = generate.generate_object(3, "train", 17, num_points=256, num_views=3, image_size=24)
  assert a["points"].dtype == np.float32 and a["points"].shape == (256, 3)
  assert a["images"].dtype == np.uint8 and a["images"].shape == (3, 24, 24, 3)
  assert a["label"] == 17 % len(categories.CATEGORIES)
  assert a["object_id"] == f"{categories.CATEGORIES[a['label']]}/train-000017"
  for k in ("points", "images"):
    np.testing.assert_array_equal(a[k], b[k])
  # Unit-sphere normalised: centred on the centroid, farthest point on the sphere.
  np.testing.assert_allclose(a["points"].mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(a["points"], axis=1).max(), 1, atol=1e-5)
  # Another split or index is another object.
  c = generate.generate_object(3, "query", 17, num_points=256, num_views=3, image_size=24)
  assert not np.array_equal(a["points"], c["points"])


def test_sample_surface_is_uniform_by_area():
  # Two triangles in the z=0 plane with areas 1 and 3.
  v = np.array([[0, 0, 0], [2, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 2, 0]], float)
  f = np.array([[0, 1, 2], [3, 4, 5]])
  p = sample_surface(v, f, 40000, np.random.default_rng(0))
  assert np.abs(p[:, 2]).max() == 0
  first = p[:, 0] < 5
  assert abs(first.mean() - 0.25) < 0.01
  # Inside the triangles (half-plane tests) and uniform: the mean is the centroid.
  q = p[first]
  assert (q[:, 0] >= -1e-12).all() and (q[:, 1] >= -1e-12).all()
  assert (q[:, 0] / 2 + q[:, 1] <= 1 + 1e-12).all()
  np.testing.assert_allclose(q.mean(0), v[:3].mean(0), atol=0.01)
  np.testing.assert_allclose(p[~first].mean(0), v[3:].mean(0), atol=0.02)


def _look_at(az, el, distance):
  eye = distance * np.array([math.cos(el) * math.sin(az), math.sin(el),
                             math.cos(el) * math.cos(az)])
  fwd = -eye / np.linalg.norm(eye)
  right = np.cross(fwd, [0, 1, 0])
  right /= np.linalg.norm(right)
  return eye, fwd, right, np.cross(right, fwd)


def _raycast_reference(v, f, colors, az, el, size, distance=2.6, fill=0.95, ambient=0.3):
  """Independent renderer: one ray per pixel centre, Moller-Trumbore against every face."""
  eye, fwd, right, up = _look_at(az, el, distance)
  focal = fill / math.tan(math.asin(1 / distance))
  light = np.array([-0.4, 0.6, -1.0])
  light_w = (light[0] * right + light[1] * up + light[2] * fwd) / np.linalg.norm(light)
  img = np.ones((size, size, 3))
  a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
  e1, e2 = b - a, c - a
  n = np.cross(e1, e2)
  n /= np.linalg.norm(n, axis=1, keepdims=True)
  shade = (ambient + (1 - ambient) * np.abs(n @ light_w))[:, None] * colors
  for i in range(size):
    for j in range(size):
      u = ((j + 0.5) / size * 2 - 1) / focal
      w = (1 - (i + 0.5) / size * 2) / focal
      d = fwd + u * right + w * up
      pvec = np.cross(d, e2)
      det = np.einsum("ij,ij->i", e1, pvec)
      ok = np.abs(det) > 1e-12
      inv = np.where(ok, 1 / np.where(ok, det, 1), 0)
      tvec = eye - a
      bu = np.einsum("ij,ij->i", tvec, pvec) * inv
      qvec = np.cross(tvec, e1)
      bv = (qvec @ d) * inv
      t = np.einsum("ij,ij->i", e2, qvec) * inv
      hit = ok & (bu >= 0) & (bv >= 0) & (bu + bv <= 1) & (t > 0)
      if hit.any():
        k = np.nonzero(hit)[0][np.argmin(t[hit])]
        img[i, j] = shade[k]
  return np.round(img * 255).astype(np.uint8)


def test_render_matches_raycast_reference():
  parts = primitives.Parts()
  parts.add(primitives.box([1.0, 0.6, 0.8], [0.1, -0.1, 0]), 0)
  parts.add(primitives.xform(primitives.box([0.3, 1.2, 0.3]), primitives.rot_z(0.5),
                             shift=[-0.3, 0.2, 0.3]), 1)
  parts.add(primitives.cylinder(0.3, 0.1, 0.2, 0.8, 8), 2)
  mesh = parts.mesh()
  palette = np.array([[0.9, 0.2, 0.1], [0.1, 0.7, 0.3], [0.2, 0.3, 0.9]])
  colors = palette[mesh.slots]
  az, el = np.array([0.3, 2.5]), np.array([0.4, -0.1])
  got = render(mesh.vertices, mesh.faces, colors, az, el, 24)
  for k in range(2):
    ref = _raycast_reference(mesh.vertices, mesh.faces, colors, az[k], el[k], 24)
    differ = (got[k] != ref).any(-1)
    assert differ.mean() < 0.01, differ.sum()


def test_render_hand_worked_square():
  # A unit square facing a camera at azimuth 0: covers |x|, |y| <= 0.5 at depth d.
  v = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], float)
  f = np.array([[0, 1, 2], [0, 2, 3]])
  size, d, fill, ambient = 40, 2.6, 0.95, 0.3
  img = render(v, f, np.full((2, 3), 0.5), np.zeros(1), np.zeros(1), size, distance=d,
               fill=fill, ambient=ambient)[0]
  focal = fill / math.tan(math.asin(1 / d))
  half = 0.5 * focal / d * size / 2  # half side in pixels
  centres = np.arange(size) + 0.5
  inside = np.abs(centres - size / 2) <= half
  expected_mask = inside[:, None] & inside[None, :]
  lam = 1 / np.linalg.norm([-0.4, 0.6, -1.0])  # |n . l| with n = -z in camera coordinates
  value = round(0.5 * (ambient + (1 - ambient) * lam) * 255)
  np.testing.assert_array_equal((img != 255).any(-1), expected_mask)
  assert (img[expected_mask] == value).all()


def test_colour_law_is_shared_by_all_categories():
  means = []
  for c in range(len(categories.CATEGORIES)):
    cols = []
    for i in range(40):
      rng = np.random.default_rng([1, c, i])
      categories.make_mesh(c, rng)
      cols.append(categories.random_palette(rng)[0])
    means.append(np.mean(cols, 0))
  means = np.asarray(means)
  # With 40 draws the std of a class mean is ~0.04; no class stands out.
  assert np.abs(means - means.mean(0)).max() < 0.15


def test_multiprocess_generation_equals_in_process():
  kw = dict(num_points=64, num_views=2, image_size=16, supersample=1, progress=False)
  seq = list(generate.generate_split(5, "database", 5, num_workers=0, **kw))
  par = list(generate.generate_split(5, "database", 5, num_workers=2, **kw))
  assert [i for i, _ in par] == list(range(5))
  for (_, a), (_, b) in zip(seq, par):
    np.testing.assert_array_equal(a["points"], b["points"])
    np.testing.assert_array_equal(a["images"], b["images"])


# ---------------------------------------------------------------------------- builder


def test_builder_registered_and_configs():
  assert "synthetic_shapes" in datasets.available_datasets()
  assert datasets.builder_class("synthetic_shapes") is SyntheticShapes
  names = [c.name for c in SyntheticShapes.BUILDER_CONFIGS]
  assert {"default", "tiny"} <= set(names)
  default = SyntheticShapes.BUILDER_CONFIGS[names.index("default")]
  tiny = SyntheticShapes.BUILDER_CONFIGS[names.index("tiny")]
  # 20 classes x (200, 20, 80) and x (4, 2, 3) objects (README's table).
  assert default.split_sizes() == {"train": 4000, "query": 400, "database": 1600}
  assert tiny.split_sizes() == {"train": 80, "query": 40, "database": 60}
  assert (default.num_views, default.image_size, default.num_points) == (8, 64, 2048)


def test_shapes_dtypes_and_sizes(tiny_builder):
  cfg = tiny_builder.builder_config
  sizes = cfg.split_sizes()
  for split in SPLITS:
    src = tiny_builder.as_data_source(split=split)
    assert len(src) == sizes[split] == tiny_builder.info.splits[split].num_examples
    ex = src[len(src) - 1]
    assert ex["points"].dtype == np.float32
    assert ex["points"].shape == (cfg.num_points, 3)
    assert ex["images"].dtype == np.uint8
    assert ex["images"].shape == (cfg.num_views, cfg.image_size, cfg.image_size, 3)
    assert int(ex["label"]) == (len(src) - 1) % 20
    assert isinstance(ex["object_id"], bytes)
  assert tiny_builder.info.metadata["class_names"] == list(categories.CATEGORIES)


def test_records_equal_generator(tiny_builder):
  cfg = tiny_builder.builder_config
  src = tiny_builder.as_data_source(split="query")
  for i in (0, 7, len(src) - 1):
    ref = generate.generate_object(cfg.seed, "query", i, num_points=cfg.num_points,
                                   num_views=cfg.num_views, image_size=cfg.image_size,
                                   supersample=cfg.supersample)
    got = src[i]
    np.testing.assert_array_equal(got["points"], ref["points"])
    np.testing.assert_array_equal(got["images"], ref["images"])
    assert got["object_id"].decode() == ref["object_id"]


def test_class_balance(tiny_builder):
  cfg = tiny_builder.builder_config
  per_class = {"train": cfg.train_per_class, "query": cfg.query_per_class,
               "database": cfg.database_per_class}
  for split in SPLITS:
    src = tiny_builder.as_data_source(split=split)
    exs = [src[i] for i in range(len(src))]
    labels = np.array([int(e["label"]) for e in exs])
    np.testing.assert_array_equal(np.bincount(labels, minlength=20),
                                  np.full(20, per_class[split]))
    for e in exs:  # the id names the category of the label
      assert e["object_id"].decode().split("/")[0] == categories.CATEGORIES[int(e["label"])]


def test_splits_are_disjoint(tiny_builder):
  ids, clouds = {}, {}
  for split in SPLITS:
    src = tiny_builder.as_data_source(split=split)
    exs = [src[i] for i in range(len(src))]
    ids[split] = {e["object_id"] for e in exs}
    clouds[split] = {e["points"].tobytes() for e in exs}
    assert len(ids[split]) == len(exs) and len(clouds[split]) == len(exs)
  for a in SPLITS:
    for b in SPLITS:
      if a < b:  # (ids name their split, so only the clouds can tell)
        assert not clouds[a] & clouds[b]


def test_no_mesh_is_in_two_splits(tiny_builder):
  """One mesh sampled twice into two splits would give clouds of different bytes, which
  `test_splits_are_disjoint` cannot see. Each stored object is regenerated from its id
  (`<class>/<split>-<index>`): the stored cloud must come back bit for bit, and the meshes
  behind all stored objects of all splits must be pairwise different."""
  cfg = tiny_builder.builder_config
  meshes = {}
  for split in SPLITS:
    src = tiny_builder.as_data_source(split=split)
    for i in range(len(src)):
      e = src[i]
      name, index = str(e["object_id"], "utf-8").rsplit("-", 1)
      assert name == f"{categories.CATEGORIES[int(e['label'])]}/{split}"
      np.testing.assert_array_equal(e["points"], generate.generate_object(
          cfg.seed, split, int(index), num_points=cfg.num_points, num_views=cfg.num_views,
          image_size=cfg.image_size, supersample=cfg.supersample)["points"])
      # The object's mesh is the first draw of its generator (`generate_object`).
      mesh = categories.make_mesh(int(e["label"]),
                                  generate.object_rng(cfg.seed, split, int(index)))
      key = np.round(mesh.vertices, 9).tobytes() + mesh.faces.tobytes()
      assert key not in meshes, (e["object_id"], meshes.get(key))
      meshes[key] = e["object_id"]


def test_objects_fit_in_every_view(tiny_builder):
  src = tiny_builder.as_data_source(split="train")
  for i in range(len(src)):
    img = src[i]["images"]
    border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], 1)
    assert (border == 255).all(), i
    assert (img != 255).any(-1).mean(axis=(1, 2)).min() > 0.01  # something is drawn


def test_two_builds_give_the_same_bytes(tiny_builder, tmp_path):
  other = datasets.get_builder("synthetic_shapes", str(tmp_path), "tiny")
  other.download_and_prepare()
  files_a = sorted(glob.glob(os.path.join(tiny_builder.data_path, "*.array_record*")))
  files_b = sorted(glob.glob(os.path.join(other.data_path, "*.array_record*")))
  assert len(files_a) == len(files_b) == 3
  for fa, fb in zip(files_a, files_b):
    assert os.path.basename(fa) == os.path.basename(fb)
    with open(fa, "rb") as a, open(fb, "rb") as b:
      assert a.read() == b.read(), fa


def test_prepare_cli_reuses_prepared_data(tiny_builder, capsys):
  data_dir = os.path.dirname(os.path.dirname(os.path.dirname(tiny_builder.data_path)))
  record = glob.glob(os.path.join(tiny_builder.data_path, "*train*.array_record*"))[0]
  mtime = os.path.getmtime(record)
  assert prepare.main(["--dataset=synthetic_shapes", "--config=tiny",
                       f"--data_dir={data_dir}"]) == 0
  out = capsys.readouterr().out
  assert "already prepared: reused" in out
  assert "train=80, query=40, database=60" in out
  assert os.path.getmtime(record) == mtime


def test_prepare_rejects_unknown_config(tmp_path):
  with pytest.raises(ValueError, match="config.dataset.config"):
    prepare.prepare("synthetic_shapes", str(tmp_path), "nope")


def test_preview_writes_a_sheet(tiny_builder, tmp_path, capsys):
  data_dir = os.path.dirname(os.path.dirname(os.path.dirname(tiny_builder.data_path)))
  out = tmp_path / "sheet.png"
  assert preview.main(["--dataset=synthetic_shapes", "--config=tiny", f"--data_dir={data_dir}",
                       f"--out={out}", "--per_class=2"]) == 0
  assert "20 classes x 2 objects" in capsys.readouterr().out
  from PIL import Image  # pylint: disable=import-outside-toplevel
  img = np.asarray(Image.open(out))
  assert img.shape[0] > 300 and img.shape[1] > 300
  assert img.std() > 10

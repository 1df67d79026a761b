"""Real-dataset builders on fixture trees in the published layouts (written by the tests).

Every fixture file is real: binary and ASCII PLY (plyfile), HDF5 (h5py), NPY (NumPy), PNG
(Pillow, RGB and RGBA). Fixture images are solid colours that encode (object, view), so the
stored views can be checked exactly after resizing; points are checked against a NumPy-loop
farthest point sampling and unit-sphere normalisation.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zlib

import h5py
import numpy as np
import plyfile
import pytest
from PIL import Image

import tensorflow_datasets as tfds

from cmah_jax.datasets import get_builder
from cmah_jax.datasets.real import modelnet40 as mn
from cmah_jax.datasets.real import shapenet55 as sn55
from cmah_jax.datasets.real import shapenet_render as snr
from cmah_jax.datasets.real.builder import RealDatasetConfig
from cmah_jax.datasets.real.points import (
    BadPointCloudError, check_points, fps_indices)
from cmah_jax.datasets.real.readers import LayoutError, UnreadableFileError, select_views
from cmah_jax.datasets.real.skips import TooManySkippedError
from cmah_jax.datasets.real.splits import (
    SPLITS, holdout_split, query_database_split, record_order)

MODELNET_NAMES = (
    "airplane bathtub bed bench bookshelf bottle bowl car chair cone cup curtain desk door "
    "dresser flower_pot glass_box guitar keyboard lamp laptop mantel monitor night_stand "
    "person piano plant radio range_hood sink sofa stairs stool table tent toilet tv_stand "
    "vase wardrobe xbox").split()
SRC_SIZE = 16  # fixture PNG side; stored at TEST_CONFIG.image_size
NUM_RAW_POINTS = 64


def cfg(**kw) -> RealDatasetConfig:
  base = dict(name="test", image_size=8, num_views=2, num_points=32, subsample="random",
              num_workers=2, test_fraction=0.5, query_fraction=0.5)
  base.update(kw)
  return RealDatasetConfig(**base)


# ----------------------------------------------------------------------------------------
# Fixture writers and independent references.
# ----------------------------------------------------------------------------------------


def raw_points(seed: int, n: int = NUM_RAW_POINTS) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 2.0]).astype(np.float32)


def color(obj: int, view: int) -> tuple[int, int, int]:
  return (10 + 7 * obj) % 256, (20 + 31 * view) % 256, (40 + 13 * obj + 5 * view) % 256


def write_ply(path, points, binary: bool):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  vertex = np.array([tuple(p) for p in points],
                    dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
  plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")],
                  text=not binary).write(str(path))


def write_png(path, rgb, rgba: bool = False, transparent_quadrant: bool = False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  arr = np.empty((SRC_SIZE, SRC_SIZE, 4 if rgba else 3), np.uint8)
  arr[..., :3] = rgb
  if rgba:
    arr[..., 3] = 255
    if transparent_quadrant:
      arr[:SRC_SIZE // 2, :SRC_SIZE // 2, 3] = 0
      arr[:SRC_SIZE // 2, :SRC_SIZE // 2, :3] = 0  # hidden colour under alpha 0
  Image.fromarray(arr).save(path)


def fps_reference(points: np.ndarray, k: int) -> np.ndarray:
  """Plain-loop farthest point sampling from index 0, lowest index on ties."""
  chosen = [0]
  dist = np.full(len(points), np.inf)
  for _ in range(k - 1):
    d = ((points - points[chosen[-1]]) ** 2).sum(-1)
    dist = np.minimum(dist, d)
    best = 0
    for i in range(len(points)):
      if dist[i] > dist[best]:
        best = i
    chosen.append(best)
  return np.array(chosen)


def normalize_reference(p: np.ndarray) -> np.ndarray:
  p = p.astype(np.float64)
  c = p - p.mean(0)
  return c / np.sqrt((c ** 2).sum(1)).max()


def expected_split(ids, labels, fraction, seed, stream):
  """The documented rule, written out: per class, sorted ids, rng permutation, first k."""
  picked = set()
  for lab in sorted(set(labels)):
    members = sorted(i for i, l in zip(ids, labels) if l == lab)
    n = len(members)
    k = 0 if n < 2 else min(max(int(np.floor(fraction * n + 0.5)), 1), n - 1)
    perm = np.random.default_rng([seed, stream, lab]).permutation(n)
    picked |= {members[j] for j in perm[:k]}
  return picked


# The documented record order (docs/real_datasets.md): rng stream 2, split index below.
RECORD_STREAM = 2
SPLIT_INDEX = {"train": 0, "query": 1, "database": 2}


def expected_order(ids, split, seed=0):
  """The documented record order, written out: sorted ids, rng permutation, in that order."""
  members = sorted(ids)
  perm = np.random.default_rng([seed, RECORD_STREAM, SPLIT_INDEX[split]]).permutation(
      len(members))
  return [members[j] for j in perm]


def oid_of(ex) -> str:
  oid = ex["object_id"]
  return oid.decode() if isinstance(oid, bytes) else str(oid)


def read_split(builder, split):
  src = builder.as_data_source(split=split)
  return [src[i] for i in range(len(src))]


def prepare(builder, manual_dir):
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def summary(builder) -> dict:
  with open(os.path.join(builder.data_dir, "prepare_summary.json")) as f:
    return json.load(f)


# --- ShapeNetRender ---------------------------------------------------------------------

SNR_CLASSES = ("02691156", "03001627", "04379243")  # labels 0, 4, 10


def make_shapenet_render(root, per_class=4, views=3, rgba=True, n_points=NUM_RAW_POINTS):
  """Returns {object_id: (label, obj_index, raw_points)}."""
  objs = {}
  labels = {s: i for i, (s, _) in enumerate(snr.SYNSETS)}
  k = 0
  for synset in SNR_CLASSES:
    for j in range(per_class):
      model = f"m{synset[-3:]}{j:02d}abc"
      pts = raw_points(k, n_points)
      write_ply(root / "ShapeNet" / synset / f"{model}.ply", pts, binary=(k % 2 == 0))
      for v in range(views):
        write_png(root / "ShapeNetRendering" / synset / model / "rendering" / f"{v:02d}.png",
                  color(k, v), rgba=rgba, transparent_quadrant=(v == 1))
      (root / "ShapeNetRendering" / synset / model / "rendering" / "renderings.txt"
       ).write_text("metadata, not an image\n")
      objs[f"{synset}/{model}"] = (labels[synset], k, pts)
      k += 1
  return objs


# --- ModelNet40 -------------------------------------------------------------------------

MN_CLASSES = ("airplane", "chair", "sofa")


def make_modelnet40(root, train_per_class=3, test_per_class=3, views=12,
                    train_files=2, n_points=NUM_RAW_POINTS, classes=MN_CLASSES):
  h5_dir = root / mn.H5_DIR
  h5_dir.mkdir(parents=True)
  (h5_dir / "shape_names.txt").write_text("\n".join(MODELNET_NAMES) + "\n")
  objs = {}
  k = 0
  rows = {"train": [], "test": []}
  for split, per in (("train", train_per_class), ("test", test_per_class)):
    for cls in classes:
      for j in range(per):
        num = j + (0 if split == "train" else 100)
        name = f"{cls}_{num:04d}"
        pts = raw_points(1000 + k, n_points)
        rows[split].append((f"{cls}/{name}.ply", MODELNET_NAMES.index(cls), pts))
        for v in range(views):
          write_png(root / mn.IMAGE_DIR / cls / name / f"{name}.{v}.png", color(k, v))
        objs[f"{cls}/{name}"] = (MODELNET_NAMES.index(cls), k, pts, split)
        k += 1
  for split, n_files in (("train", train_files), ("test", 1)):
    parts = np.array_split(np.arange(len(rows[split])), n_files)
    for i, idx in enumerate(parts):
      chosen = [rows[split][r] for r in idx]
      with h5py.File(h5_dir / f"ply_data_{split}{i}.h5", "w") as f:
        f["data"] = np.stack([c[2] for c in chosen])
        f["label"] = np.array([[c[1]] for c in chosen], np.uint8)
      with open(h5_dir / f"ply_data_{split}_{i}_id2file.json", "w") as f:
        json.dump([c[0] for c in chosen], f)
  return objs


# --- ShapeNet-55 ------------------------------------------------------------------------

SN55_CLASSES = ("02691156", "03001627", "04554684")  # labels 0, 18, 54
SN55_DEGREES = (0, 12, 24, 36)


def make_shapenet55(root, train_per_class=3, test_per_class=3, n_points=NUM_RAW_POINTS):
  labels = {s: i for i, (s, _) in enumerate(sn55.SYNSETS)}
  (root / "ShapeNet-55").mkdir(parents=True)
  (root / "shapenet_pc").mkdir()
  objs = {}
  lists = {"train": [], "test": []}
  k = 0
  for split, per in (("train", train_per_class), ("test", test_per_class)):
    for synset in SN55_CLASSES:
      for j in range(per):
        oid = f"{synset}-{split[:2]}{j:03d}f00d"
        pts = raw_points(2000 + k, n_points)
        np.save(root / "shapenet_pc" / f"{oid}.npy", pts)
        for v, deg in enumerate(SN55_DEGREES):
          folder = root / "rendered_images" / oid
          write_png(folder / f"{oid}_r_{deg:03d}.png", color(k, v), rgba=True)
          write_png(folder / f"{oid}_r_{deg:03d}_depth0001.png", (0, 0, 0))
        lists[split].append(f"{oid}.npy")
        objs[oid] = (labels[synset], k, pts, split)
        k += 1
  for split in lists:
    (root / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(lists[split]) + "\n")
  return objs


# ----------------------------------------------------------------------------------------
# Happy paths.
# ----------------------------------------------------------------------------------------


def check_common(builder, objs, views_of, config):
  """Format, labels, points (FPS/random + normalisation), images (views), disjoint splits."""
  seen = {}
  for split in SPLITS:
    for ex in read_split(builder, split):
      oid = oid_of(ex)
      assert oid not in seen, f"{oid} in two splits"
      seen[oid] = split
      label, k, pts = objs[oid][:3]
      assert ex["points"].dtype == np.float32 and ex["points"].shape == (config.num_points, 3)
      assert ex["images"].dtype == np.uint8
      assert ex["images"].shape == (config.num_views, config.image_size, config.image_size, 3)
      assert int(ex["label"]) == label
      if config.subsample == "fps":
        idx = fps_reference(pts.astype(np.float64), config.num_points)
      else:  # the documented rule, written out: a sorted subset keyed by seed and id
        rng = np.random.default_rng([config.split_seed, zlib.crc32(oid.encode("utf-8"))])
        idx = np.sort(rng.choice(len(pts), config.num_points, replace=False))
      np.testing.assert_allclose(ex["points"], normalize_reference(pts[idx]), atol=1e-5)
      np.testing.assert_allclose(np.linalg.norm(ex["points"], axis=1).max(), 1.0, atol=1e-5)
      for v, src_view in enumerate(views_of(oid)):
        img = ex["images"][v]
        np.testing.assert_array_equal(img[-1, -1], color(k, src_view))
  assert set(seen) == set(objs)
  return seen


def check_record_order(builder, seed=0):
  """Each split's records are the documented seeded shuffle of its sorted ids."""
  for split in SPLITS:
    stored = [oid_of(ex) for ex in read_split(builder, split)]
    assert stored == expected_order(stored, split, seed), split
  assert builder.info.metadata["record_order"] == (
      f"records of each split: sorted ids permuted by default_rng([{seed}, 2, split_index]), "
      "split_index = train 0, query 1, database 2")


def check_pipeline(builder, config):
  """Prepared splits feed the input pipeline: train and eval batches of the right content."""
  from cmah_jax import input as pipeline  # pylint: disable=import-outside-toplevel

  spec = pipeline.InputSpec(batch_size=4, eval_batch_size=4,
                            num_points=config.num_points // 2,
                            image_size=config.image_size // 2, prefetch=0)
  train = builder.as_data_source(split="train")
  batch = pipeline.train_local_batch(train, 0, spec, seed=5)
  idx = pipeline.global_batch_indices(5, 0, len(train), 4)
  assert batch["points"].shape == (4, config.num_points // 2, 3)
  assert batch["images"].shape == (4, config.image_size // 2, config.image_size // 2, 3)
  np.testing.assert_array_equal(batch["label"], [int(train[int(i)]["label"]) for i in idx])
  query = builder.as_data_source(split="query")
  ev = pipeline.eval_local_batch(query, 0, spec)
  n = min(4, len(query))
  first = query[0]
  assert set(map(tuple, ev["points"][0].round(6))) <= set(map(tuple, first["points"].round(6)))
  np.testing.assert_array_equal(ev["valid"], np.arange(4) < len(query))
  np.testing.assert_array_equal(ev["label"][:n], [int(query[i]["label"]) for i in range(n)])


def test_shapenet_render_happy_path(tmp_path):
  objs = make_shapenet_render(tmp_path / "manual")
  config = cfg(subsample="fps", num_views=2)
  b = prepare(snr.ShapenetRender(data_dir=tmp_path / "data", config=config),
              tmp_path / "manual")
  # 3 views 00, 01, 02 -> k * 3 // 2 for k = 0, 1 -> views 0 and 1.
  seen = check_common(b, objs, lambda oid: (0, 1), config)
  # View 1 has a transparent top-left quadrant (hidden colour black) -> white background.
  ex = read_split(b, "train")[0]
  np.testing.assert_array_equal(ex["images"][1][0, 0], (255, 255, 255))
  # Split: holdout then query/database, exactly the documented rule.
  ids = sorted(objs)
  labels = [objs[i][0] for i in ids]
  test = expected_split(ids, labels, 0.5, 0, stream=0)
  test_ids = sorted(test)
  query = expected_split(test_ids, [objs[i][0] for i in test_ids], 0.5, 0, stream=1)
  for oid, split in seen.items():
    want = "train" if oid not in test else ("query" if oid in query else "database")
    assert split == want, oid
  for split in SPLITS:  # 4 per class: 2 train, 1 query, 1 database
    got = [objs[oid][0] for oid, s in seen.items() if s == split]
    assert sorted(got) == sorted([0, 4, 10] * (2 if split == "train" else 1))
  info = b.info
  assert info.metadata["class_names"][4] == "chair"
  assert info.file_format.value == "array_record"
  s = summary(b)
  assert s["pairs_found"] == 12 and s["skipped"] == []
  check_record_order(b)
  check_pipeline(b, config)


def test_modelnet40_happy_path(tmp_path, capsys):
  objs = make_modelnet40(tmp_path / "manual")
  config = cfg(subsample="fps", num_views=3, query_fraction=0.34)
  b = prepare(mn.Modelnet40(data_dir=tmp_path / "data", config=config), tmp_path / "manual")
  # 12 views named <name>.0.png ... <name>.11.png, natural order: k * 12 // 3 = 0, 4, 8.
  seen = check_common(b, objs, lambda oid: (0, 4, 8), config)
  for oid, split in seen.items():
    assert (split == "train") == (objs[oid][3] == "train"), oid
  test_ids = sorted(o for o in objs if objs[o][3] == "test")
  query = expected_split(test_ids, [objs[i][0] for i in test_ids], 0.34, 0, stream=1)
  assert {o for o, s in seen.items() if s == "query"} == query
  assert len(query) == 3  # round(0.34 * 3) = 1 per class
  out = capsys.readouterr().out
  assert "preparation summary" in out and "airplane" in out and "pairs found" in out
  assert b.info.metadata["class_names"] == MODELNET_NAMES
  check_record_order(b)
  check_pipeline(b, config)


def test_shapenet55_happy_path_and_generic_prepare_idempotent(tmp_path, capsys):
  objs = make_shapenet55(tmp_path / "manual")
  config = cfg(num_views=2)
  b = prepare(sn55.Shapenet55(data_dir=tmp_path / "data", config=config),
              tmp_path / "manual")
  # Degrees 000, 012, 024, 036 (depth maps ignored): k * 4 // 2 = views 0 and 2.
  seen = check_common(b, objs, lambda oid: (0, 2), config)
  for oid, split in seen.items():
    assert (split == "train") == (objs[oid][3] == "train"), oid
  assert b.info.metadata["class_names"][54] == "washer"
  check_record_order(b)
  check_pipeline(b, config)
  first = capsys.readouterr().out
  assert "preparation summary" in first

  # Idempotence: a second prepare reuses the data and reads nothing.
  stamp = {p: os.path.getmtime(p) for p in b.data_path.iterdir()}
  b2 = sn55.Shapenet55(data_dir=tmp_path / "data", config=config)
  b2._generate_examples = None  # would fail if called
  b2._scan = None
  prepare(b2, tmp_path / "manual")
  assert {p: os.path.getmtime(p) for p in b2.data_path.iterdir()} == stamp
  assert "preparation summary" not in capsys.readouterr().out
  assert len(b2.as_data_source(split="train")) == 9


def test_generic_prepare_named_config(tmp_path, capsys):
  from cmah_jax.datasets import prepare as prepare_cli  # pylint: disable=import-outside-toplevel

  make_shapenet55(tmp_path / "manual", train_per_class=1, test_per_class=2,
                  n_points=600)  # the `tiny` config keeps 512 points
  prepare_cli.main(["--dataset=shapenet55", "--config=tiny", f"--data_dir={tmp_path}/d",
                    f"--manual_dir={tmp_path}/manual"])
  out = capsys.readouterr().out
  assert "preparation summary" in out and "pairs found (points + images) 9" in out
  b = get_builder("shapenet55", str(tmp_path / "d"), "tiny")
  ex = b.as_data_source(split="train")[0]
  assert ex["images"].shape == (4, 32, 32, 3) and ex["points"].shape == (512, 3)


def constant_code_maps(query_labels, db_labels_stored, db_labels_sorted):
  """(mAP in stored order, mAP in sorted order, chance) of a constant code.

  Every code equal: all distances tie and `mean_average_precision` ranks the database in
  its order. Chance is the expectation over uniformly random orders, written out: for a
  query with r relevant items among N, E[AP] = (H_N + (r - 1) / (N - 1) (N - H_N)) / N
  (-> the class frequency r / N for large N).
  """
  from cmah_jax import metrics  # pylint: disable=import-outside-toplevel

  ql = np.asarray(query_labels)
  dl, ds = np.asarray(db_labels_stored), np.asarray(db_labels_sorted)
  assert sorted(dl) == sorted(ds)
  q_codes, d_codes = np.ones((len(ql), 16)), np.ones((len(dl), 16))
  n = len(dl)
  h = np.sum(1.0 / np.arange(1, n + 1))
  r = (ql[:, None] == dl[None, :]).sum(1)
  chance = float(np.mean((h + (r - 1) / (n - 1) * (n - h)) / n))
  np.testing.assert_allclose(
      metrics.tie_aware_mean_average_precision(q_codes, d_codes, ql, dl), chance, rtol=1e-9)
  return (metrics.mean_average_precision(q_codes, d_codes, ql, dl),
          metrics.mean_average_precision(q_codes, d_codes, ql, ds), chance)


def test_records_in_seeded_shuffle_reproducible_and_constant_code_at_chance(tmp_path):
  """Stored order = the documented shuffle (not class-sorted); same bytes on every prepare;
  a constant code scores chance mAP in that order (index-broken ties carry no class)."""
  classes = ("airplane", "bed", "car", "chair", "lamp", "sofa")
  manual = tmp_path / "manual"
  objs = make_modelnet40(manual, train_per_class=2, test_per_class=12, views=2,
                         classes=classes)
  config = cfg(num_views=2, query_fraction=0.25)  # per class: 3 queries, 9 database
  a = prepare(mn.Modelnet40(data_dir=tmp_path / "a", config=config, num_workers=1), manual)
  b = prepare(mn.Modelnet40(data_dir=tmp_path / "b", config=config, num_workers=3), manual)
  assert str(a.version) == "2.0.0" and a.data_path.name == "2.0.0"

  # Identical bytes whatever the thread count: records, info and summary.
  names = sorted(p.name for p in a.data_path.iterdir())
  assert names == sorted(p.name for p in b.data_path.iterdir())
  assert any("array_record" in n for n in names)
  for name in names:
    assert (a.data_path / name).read_bytes() == (b.data_path / name).read_bytes(), name

  check_record_order(a)
  stored = {s: [oid_of(e) for e in read_split(a, s)] for s in SPLITS}
  labels = {s: [int(e["label"]) for e in read_split(a, s)] for s in SPLITS}
  assert len(stored["database"]) == 54 and len(stored["query"]) == 18
  for split in SPLITS:  # not sorted by id, hence not by class
    assert stored[split] != sorted(stored[split])
    assert labels[split] != sorted(labels[split])
    assert labels[split] == [objs[o][0] for o in stored[split]]
  sorted_db = [objs[o][0] for o in sorted(stored["database"])]
  assert sorted_db == sorted(sorted_db)  # the old order was class-sorted

  got, old, chance = constant_code_maps(labels["query"], labels["database"], sorted_db)
  # 6 classes of 9 among 54: chance 0.223 (class frequency 1/6); stored order 0.220,
  # sorted order 0.318.
  assert abs(got - chance) < 0.05, (got, chance)
  assert abs(got - chance) < abs(old - chance), (got, old, chance)
  assert old - chance > 0.08


def test_record_order_constant_code_map_near_chance_at_scale():
  """55 unbalanced classes (5-119 objects, ids prefixed by the synset as in ShapeNet-55):
  a constant code scores chance in record order; in id order (1.0.0) far above it."""
  rng = np.random.default_rng(123)
  sizes = rng.integers(5, 120, size=55)
  ids, labels = [], []
  for lab, (synset, _) in enumerate(sn55.SYNSETS):
    for _ in range(sizes[lab]):
      ids.append(f"{synset}-{rng.bytes(8).hex()}")
      labels.append(lab)
  label_of = dict(zip(ids, labels))
  qd = query_database_split(ids, labels, 0.2, seed=0)
  query = record_order([i for i in ids if qd[i] == "query"], "query", 0)
  db = record_order([i for i in ids if qd[i] == "database"], "database", 0)
  assert db == expected_order(db, "database") and query == expected_order(query, "query")
  got, old, chance = constant_code_maps([label_of[i] for i in query],
                                        [label_of[i] for i in db],
                                        [label_of[i] for i in sorted(db)])
  # chance 0.0279; record order 0.0278; id order 0.068 (the 0.070 vs 0.025).
  assert abs(got - chance) < 0.005, (got, chance)
  assert old - chance > 0.02, (old, chance)


def test_real_builders_version_bumped_for_record_order(tmp_path):
  for cls in (snr.ShapenetRender, mn.Modelnet40, sn55.Shapenet55):
    assert str(cls.VERSION) == "2.0.0"
    assert "shuffle" in cls.RELEASE_NOTES["2.0.0"] and "1.0.0" in cls.RELEASE_NOTES
  # Data prepared by 1.0.0 (class-sorted records) is not reused.
  make_shapenet_render(tmp_path / "manual")
  b = prepare(snr.ShapenetRender(data_dir=tmp_path / "data", config=cfg()),
              tmp_path / "manual")
  os.rename(b.data_path, b.data_path.parent / "1.0.0")
  assert not snr.ShapenetRender(data_dir=tmp_path / "data", config=cfg()).is_prepared()


# ----------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------


def test_missing_root_and_subfolders(tmp_path):
  with pytest.raises(LayoutError, match=re.escape(str(tmp_path / "nowhere"))):
    prepare(snr.ShapenetRender(data_dir=tmp_path / "d1", config=cfg()), tmp_path / "nowhere")

  make_shapenet_render(tmp_path / "snr", per_class=1)
  shutil.rmtree(tmp_path / "snr" / "ShapeNetRendering")
  with pytest.raises(LayoutError, match=re.escape(str(tmp_path / "snr" /
                                                      "ShapeNetRendering"))):
    prepare(snr.ShapenetRender(data_dir=tmp_path / "d2", config=cfg()), tmp_path / "snr")

  make_modelnet40(tmp_path / "mn", train_per_class=1, test_per_class=1)
  os.remove(tmp_path / "mn" / mn.H5_DIR / "ply_data_test_0_id2file.json")
  with pytest.raises(LayoutError, match="ply_data_test_0_id2file.json"):
    prepare(mn.Modelnet40(data_dir=tmp_path / "d3", config=cfg()), tmp_path / "mn")
  shutil.rmtree(tmp_path / "mn" / mn.IMAGE_DIR)
  with pytest.raises(LayoutError, match=re.escape(str(tmp_path / "mn" / mn.IMAGE_DIR))):
    prepare(mn.Modelnet40(data_dir=tmp_path / "d4", config=cfg()), tmp_path / "mn")

  make_shapenet55(tmp_path / "sn", train_per_class=1, test_per_class=1)
  os.remove(tmp_path / "sn" / "ShapeNet-55" / "test.txt")
  with pytest.raises(LayoutError, match=re.escape(str(tmp_path / "sn" / "ShapeNet-55" /
                                                      "test.txt"))):
    prepare(sn55.Shapenet55(data_dir=tmp_path / "d5", config=cfg()), tmp_path / "sn")
  for d in ("d1", "d2", "d3", "d4", "d5"):
    assert not get_builder("shapenet55", str(tmp_path / d)).is_prepared()


def _skips(builder):
  return {(s["reason"], s["object_id"]): s for s in summary(builder)["skipped"]}


def test_shapenet_render_bad_files_are_skipped_and_named(tmp_path, capsys):
  root = tmp_path / "manual"
  objs = make_shapenet_render(root, per_class=6)
  ids = sorted(objs)
  s_dir, r_dir = root / "ShapeNet", root / "ShapeNetRendering"
  # points, no images
  shutil.rmtree(r_dir / ids[0].replace("/", os.sep))
  # images, no points
  os.remove(s_dir / f"{ids[1]}.ply")
  # unreadable PLY (garbage), truncated binary PLY, truncated ASCII PLY
  (s_dir / f"{ids[2]}.ply").write_bytes(b"not a ply file\x00\x01")
  binary = [i for i in ids[3:] if objs[i][1] % 2 == 0][0]
  ascii_ = [i for i in ids[3:] if objs[i][1] % 2 == 1][0]
  data = (s_dir / f"{binary}.ply").read_bytes()
  (s_dir / f"{binary}.ply").write_bytes(data[:len(data) - 100])
  lines = (s_dir / f"{ascii_}.ply").read_text().splitlines()
  (s_dir / f"{ascii_}.ply").write_text("\n".join(lines[:-10]) + "\n")
  # a valid PLY with too few points, one with a NaN
  rest = [i for i in ids if i not in (ids[0], ids[1], ids[2], binary, ascii_)]
  write_ply(s_dir / f"{rest[0]}.ply", raw_points(7, 10), binary=True)
  nan_pts = raw_points(8)
  nan_pts[5, 1] = np.nan
  write_ply(s_dir / f"{rest[1]}.ply", nan_pts, binary=False)
  # unreadable PNG (truncated) and one with too few views
  png = r_dir / rest[2].replace("/", os.sep) / "rendering" / "01.png"
  png.write_bytes(png.read_bytes()[:40])
  for v in (1, 2):
    os.remove(r_dir / rest[3].replace("/", os.sep) / "rendering" / f"{v:02d}.png")

  b = prepare(snr.ShapenetRender(data_dir=tmp_path / "data", config=cfg(),
                                 max_skip_fraction=0.6), root)
  skips = _skips(b)
  assert skips[("no_images", ids[0])]["path"].endswith(f"{ids[0].split('/')[1]}.ply")
  assert ("no_points", ids[1]) in skips
  for oid in (ids[2], binary, ascii_):
    assert skips[("unreadable_points", oid)]["path"] == str(s_dir / f"{oid}.ply")
  assert "truncated" in skips[("bad_points", rest[0])]["detail"]
  assert "NaN" in skips[("bad_points", rest[1])]["detail"]
  assert skips[("unreadable_image", rest[2])]["path"] == str(png)
  assert ("too_few_views", rest[3]) in skips
  assert len(skips) == 9
  written = {oid_of(e) for s in SPLITS for e in read_split(b, s)}
  assert written == set(ids) - {k[1] for k in skips}
  out = capsys.readouterr().out
  assert "skipped 9" in out and str(png) in out and rest[1] in out
  # Splits and record order are decided on the paired objects; objects skipped while
  # reading leave the others in the documented order.
  paired = sorted(set(ids) - {ids[0], ids[1], rest[3]})
  held = holdout_split(paired, [objs[i][0] for i in paired], 0.5, 0)
  test_ids = [i for i in paired if held[i] == "test"]
  qd = query_database_split(test_ids, [objs[i][0] for i in test_ids], 0.5, 0)
  planned = {s: [i for i in paired if (held[i] if held[i] == "train" else qd[i]) == s]
             for s in SPLITS}
  for split in SPLITS:
    stored = [oid_of(e) for e in read_split(b, split)]
    assert stored == [i for i in expected_order(planned[split], split) if i in written]


def test_modelnet40_bad_rows_and_files(tmp_path):
  root = tmp_path / "manual"
  objs = make_modelnet40(root, train_per_class=3, test_per_class=3, views=3)
  h5 = root / mn.H5_DIR / "ply_data_train0.h5"
  with h5py.File(h5, "a") as f:
    data = f["data"][...]
    data[1, 3, 0] = np.nan
    f["data"][...] = data
    label = f["label"][...]
    label[2, 0] = MODELNET_NAMES.index("bed")
    f["label"][...] = label
  names = json.load(open(root / mn.H5_DIR / "ply_data_train_0_id2file.json"))
  nan_id, wrong_id = names[1][:-4], names[2][:-4]
  shutil.rmtree(root / mn.IMAGE_DIR / names[0][:-4])
  b = prepare(mn.Modelnet40(data_dir=tmp_path / "data", config=cfg(num_views=2),
                            max_skip_fraction=0.5), root)
  skips = _skips(b)
  assert set(skips) == {("bad_points", nan_id), ("label_mismatch", wrong_id),
                        ("no_images", names[0][:-4])}
  assert skips[("bad_points", nan_id)]["path"] == f"{h5}[row 1]"
  assert summary(b)["ignored"]["render folders with no HDF5 row"] == 1  # wrong_id's views
  assert sum(len(read_split(b, s)) for s in SPLITS) == len(objs) - 3

  # An unreadable HDF5 file is a hard error naming it.
  (root / mn.H5_DIR / "ply_data_test0.h5").write_bytes(b"\x89HDF garbage")
  with pytest.raises(UnreadableFileError, match=re.escape(str(root / mn.H5_DIR /
                                                              "ply_data_test0.h5"))):
    prepare(mn.Modelnet40(data_dir=tmp_path / "data2", config=cfg(num_views=2)), root)


def test_shapenet55_bad_npy_png_and_lists(tmp_path):
  root = tmp_path / "manual"
  objs = make_shapenet55(root, train_per_class=4, test_per_class=3)
  ids = sorted(objs)
  pc = root / "shapenet_pc"
  (pc / f"{ids[0]}.npy").write_bytes(b"garbage")
  arr = raw_points(3)
  arr[0] = np.inf
  np.save(pc / f"{ids[1]}.npy", arr)
  np.save(pc / f"{ids[2]}.npy", raw_points(4)[:, :2])  # wrong shape
  os.remove(pc / f"{ids[3]}.npy")
  bad_png = root / "rendered_images" / ids[4] / f"{ids[4]}_r_000.png"
  bad_png.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  # A duplicate (train id repeated in test.txt) and an unknown synset.
  train_id = next(o for o in ids if objs[o][3] == "train")
  with open(root / "ShapeNet-55" / "test.txt", "a") as f:
    f.write(f"{train_id}.npy\n99999999-cafe.npy\n")
  b = prepare(sn55.Shapenet55(data_dir=tmp_path / "data", config=cfg(),
                              max_skip_fraction=0.5), root)
  skips = _skips(b)
  assert skips[("unreadable_points", ids[0])]["path"] == str(pc / f"{ids[0]}.npy")
  assert "infinite" in skips[("bad_points", ids[1])]["detail"]
  assert skips[("unreadable_points", ids[2])]["path"] == str(pc / f"{ids[2]}.npy")
  assert str(pc / f"{ids[3]}.npy") in skips[("no_points", ids[3])]["detail"]
  assert skips[("unreadable_image", ids[4])]["path"] == str(bad_png)
  assert "train.txt" in skips[("duplicate", train_id)]["detail"]
  assert ("unknown_class", "99999999-cafe") in skips
  assert len(skips) == 7
  written = {oid_of(e) for s in SPLITS for e in read_split(b, s)}
  assert written == set(ids) - {ids[0], ids[1], ids[2], ids[3], ids[4]}

  # A malformed list line is a hard error naming the file and line.
  with open(root / "ShapeNet-55" / "train.txt", "a") as f:
    f.write("not-an-entry\n")
  with pytest.raises(UnreadableFileError, match=r"train\.txt.*line 13"):
    prepare(sn55.Shapenet55(data_dir=tmp_path / "data2", config=cfg()), root)


def test_too_many_skipped_is_a_hard_error(tmp_path):
  root = tmp_path / "manual"
  objs = make_shapenet_render(root, per_class=4)  # 12 candidates; default limit 10%
  ids = sorted(objs)
  for oid in ids[:2]:  # 2 of 12 > 1.2 -> error (during reading)
    (root / "ShapeNet" / f"{oid}.ply").write_bytes(b"junk")
  with pytest.raises(TooManySkippedError, match=r"2 of 12 candidate objects") as e:
    prepare(snr.ShapenetRender(data_dir=tmp_path / "d", config=cfg()), root)
  assert str(root / "ShapeNet" / f"{ids[0]}.ply") in str(e.value)
  b = snr.ShapenetRender(data_dir=tmp_path / "d", config=cfg())
  assert not b.is_prepared()
  assert not any("incomplete" in p.name for p in (tmp_path / "d").rglob("*"))
  # One of 12 is within the limit.
  write_ply(root / "ShapeNet" / f"{ids[1]}.ply", objs[ids[1]][2], binary=True)
  prepare(snr.ShapenetRender(data_dir=tmp_path / "d", config=cfg()), root)
  # Pairing skips alone past the limit fail before anything is read.
  shutil.rmtree(root / "ShapeNetRendering" / SNR_CLASSES[0])
  with pytest.raises(TooManySkippedError, match="no_images"):
    prepare(snr.ShapenetRender(data_dir=tmp_path / "d2", config=cfg()), root)


# ----------------------------------------------------------------------------------------
# Units of datasets/real (points, splits, readers).
# ----------------------------------------------------------------------------------------


def test_fps_padding_matches_reference():
  clouds = [raw_points(i, n) for i, n in enumerate((40, 64, 33, 100))]
  clouds.append(np.repeat(raw_points(9, 5), 8, axis=0))  # duplicates: 5 distinct of 40
  got = fps_indices(clouds, 16, batch=4)
  for c, idx in zip(clouds, got):
    np.testing.assert_array_equal(idx, fps_reference(c.astype(np.float64), 16))


def test_split_rules_hand_worked():
  # One class of 10 objects, fraction 0.25 -> round(2.5) = 3 picked; of 1 -> 0; of 2 -> 1.
  ids = [f"o{i}" for i in range(10)] + ["solo"] + ["p0", "p1"]
  labels = [0] * 10 + [1] + [2, 2]
  qd = query_database_split(ids, labels, 0.25, seed=3)
  assert sum(qd[i] == "query" for i in ids[:10]) == 3
  assert qd["solo"] == "database"
  assert sum(qd[i] == "query" for i in ("p0", "p1")) == 1
  assert ({i for i in ids if qd[i] == "query"} ==
          expected_split(ids, labels, 0.25, 3, stream=1))
  # Independent of input order; different seed, different pick.
  assert query_database_split(ids[::-1], labels[::-1], 0.25, seed=3) == qd
  assert query_database_split(ids, labels, 0.25, seed=4) != qd


def test_record_order_rule():
  ids = [f"{c}/{j:02d}" for c in ("b", "a", "c") for j in range(5)]
  for split in SPLITS:
    got = record_order(ids, split, seed=7)
    assert sorted(got) == sorted(ids)
    assert got == expected_order(ids, split, seed=7)
    assert record_order(ids[::-1], split, seed=7) == got  # independent of input order
    assert record_order(ids, split, seed=8) != got
  assert len({tuple(record_order(ids, s, 7)) for s in SPLITS}) == 3  # one stream per split
  with pytest.raises(ValueError, match="duplicate"):
    record_order(["x", "x"], "train", 0)
  with pytest.raises(ValueError, match="unknown split"):
    record_order(["x"], "test", 0)


def test_select_views_natural_order_and_check_points():
  names = [f"a.{v}.png" for v in range(12)]
  assert [os.path.basename(p) for p in select_views(names[::-1], 4)] == [
      "a.0.png", "a.3.png", "a.6.png", "a.9.png"]
  with pytest.raises(BadPointCloudError, match="degenerate"):
    check_points(np.ones((50, 3)), "x", 10)
  with pytest.raises(BadPointCloudError, match=r"'obj'.*shape"):
    check_points(np.ones((50, 2)), "obj", 10)


# ----------------------------------------------------------------------------------------
# Integration: prepared by the trainer from the manual dir, one training step, retrieval.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "shapenet_render",
    # Same format and code path as shapenet_render; ~15 s each: kept out of the default run.
    pytest.param("modelnet40", marks=pytest.mark.slow),
    pytest.param("shapenet55", marks=pytest.mark.slow),
])
def test_trainer_prepares_and_trains_one_step(name, tmp_path):
  import importlib  # pylint: disable=import-outside-toplevel

  from cmah_jax import run  # pylint: disable=import-outside-toplevel

  manual = tmp_path / "manual"
  if name == "shapenet_render":  # 10 per class: 8 train, 1 query, 1 database
    make_shapenet_render(manual, per_class=10, views=4, n_points=600)
  elif name == "modelnet40":
    make_modelnet40(manual, views=5, n_points=600)
  else:
    make_shapenet55(manual, n_points=600)
  config = importlib.import_module(f"configs.{name}").get_config(
      f"runlocal,steps=1,data_dir={tmp_path / 'data'},manual_dir={manual},"
      "dataset_config=tiny")
  config.log_every_steps = 1
  result = run.run_experiment(config, str(tmp_path / "work"))
  assert int(result.state["step"]) == 1
  assert np.isfinite(result.metrics["loss/total"])
  bits = str(config.model.bits)
  report = json.load(open(tmp_path / "work" / "report.json"))
  # UCCH protocol: the whole test side (shapenet_render: 2 of 10 per class; the others 3
  # per class) against the training set as database (8 of 10 per class; 3 per class).
  assert (report["num_queries"], report["num_database"]) == (
      (6, 24) if name == "shapenet_render" else (9, 9))
  assert "the training set (UCCH protocol)" in report["protocol"]
  assert report["bits"] == config.model.bits
  for d in ("i2p", "p2i"):
    assert set(report["map"][d]) == {bits} and np.isfinite(report["map"][d][bits])
  b = get_builder(name, str(tmp_path / "data"), "tiny")
  assert b.is_prepared() and os.path.exists(b.data_path / "prepare_summary.json")


def test_suite_runs_on_a_real_dataset_config_unchanged(tmp_path):
  """`python -m cmah_jax.experiments` on a real dataset's config, as a user would run it on
  ModelNet40 or ShapeNet: it prepares the data once, runs a deep and two classic methods
  under the UCCH protocol (database = the training set) and writes the tables."""
  manual = tmp_path / "manual"
  make_shapenet_render(manual, per_class=10, views=4, n_points=600)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "cmah_jax.experiments", "--suite=smoke",
         f"--config=configs/shapenet_render.py:runlocal,steps=1,data_dir={tmp_path / 'data'},"
         f"manual_dir={manual},dataset_config=tiny",
         f"--workdir={tmp_path / 'suite'}", "--seeds=1", "--methods=cmah,cca_itq,random",
         "--jobs=2"]
  out = subprocess.run(cmd, cwd=repo, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  data = json.load(open(tmp_path / "suite" / "results.json"))
  # The CMAH run gives two rows: its learned quantiser's codes and its sign(h) codes.
  assert sorted(r["method"] for r in data["runs"]) == ["cca_itq", "cmah", "cmah_sign",
                                                       "random"]
  for r in data["runs"]:
    report = json.load(open(os.path.join(r["workdir"], "report.json")))
    assert ("itq" in report) == r["method"].startswith("cmah"), r["method"]
    assert (report["num_queries"], report["num_database"]) == (6, 24), r["method"]
    assert "the training set (UCCH protocol)" in report["protocol"], r["method"]
    assert np.isfinite(r["map"]["i2p"]) and np.isfinite(r["map"]["p2i"])
  assert "the training set (UCCH protocol)" in (tmp_path / "suite" / "results.md").read_text()

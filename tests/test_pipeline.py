"""Tests of the input pipeline (cmah_jax/input/) on the `tiny` synthetic dataset."""
import threading
from dataclasses import replace

import jax
import numpy as np
import pytest

from cmah_jax import datasets, sharding
from cmah_jax import input as P
from cmah_jax.ops.image import normalize_images

SEED = 11
CFG = P.InputSpec(batch_size=8, eval_batch_size=12, num_points=256, image_size=16, prefetch=2)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
  """The `tiny` synthetic dataset (80 train / 40 query, 4 views 32x32, 512 points)."""
  builder = datasets.get_builder("synthetic_shapes", str(tmp_path_factory.mktemp("tiny_p")),
                                 "tiny")
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope="session")
def train_source(tiny):
  return tiny.as_data_source(split="train")


class Recording:
  """A data source that records which records were read."""

  def __init__(self, source, fail_at=None):
    self.source, self.read, self.fail_at = source, [], fail_at

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    if i == self.fail_at:
      raise RuntimeError(f"broken record {i}")
    self.read.append(int(i))
    return self.source[i]


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


# ---------------------------------------------------------------------------- order


def test_epoch_order_is_a_seeded_permutation():
  p0 = P.epoch_permutation(SEED, 0, 80)
  np.testing.assert_array_equal(np.sort(p0), np.arange(80))
  np.testing.assert_array_equal(p0, P.epoch_permutation(SEED, 0, 80))
  assert not np.array_equal(p0, P.epoch_permutation(SEED, 1, 80))
  assert not np.array_equal(p0, P.epoch_permutation(SEED + 1, 0, 80))


def test_one_epoch_visits_distinct_records_and_drops_remainder():
  n, bs = 30, 8
  assert P.steps_per_epoch(n, bs) == 3
  seen = np.concatenate([P.global_batch_indices(SEED, s, n, bs) for s in range(3)])
  assert len(np.unique(seen)) == 24
  np.testing.assert_array_equal(seen, P.epoch_permutation(SEED, 0, n)[:24])
  np.testing.assert_array_equal(P.global_batch_indices(SEED, 3, n, bs),
                                P.epoch_permutation(SEED, 1, n)[:8])
  with pytest.raises(ValueError, match="input.batch_size"):
    P.steps_per_epoch(5, 8)


def test_train_batch_is_a_pure_function_of_seed_and_step(train_source):
  a = P.train_local_batch(train_source, 5, CFG, SEED)
  b = P.train_local_batch(train_source, 5, CFG, SEED)
  _equal(a, b)
  assert a["points"].shape == (8, 256, 3) and a["points"].dtype == np.float32
  assert a["images"].shape == (8, 16, 16, 3) and a["images"].dtype == np.uint8
  assert a["label"].dtype == np.int32
  idx = P.global_batch_indices(SEED, 5, len(train_source), 8)
  np.testing.assert_array_equal(a["label"], idx % 20)  # tiny: label of record i is i % 20
  c = P.train_local_batch(train_source, 6, CFG, SEED)
  assert not np.array_equal(a["points"], c["points"])


def test_two_simulated_hosts_split_the_global_batch(train_source):
  full = P.train_local_batch(train_source, 13, CFG, SEED)
  halves = []
  for host in (0, 1):
    rec = Recording(train_source)
    part = P.train_local_batch(rec, 13, CFG, SEED, process_index=host, process_count=2)
    assert part["points"].shape[0] == 4
    idx = P.global_batch_indices(SEED, 13, len(train_source), 8)[4 * host:4 * host + 4]
    assert sorted(rec.read) == sorted(idx.tolist())  # reads only its own records
    halves.append(part)
  for k in full:
    np.testing.assert_array_equal(np.concatenate([halves[0][k], halves[1][k]]), full[k])
  assert not np.array_equal(halves[0]["points"], halves[1]["points"])
  with pytest.raises(ValueError, match="input.batch_size"):
    P.train_local_batch(train_source, 0, replace(CFG, batch_size=9), SEED, 0, 2)


def test_simulated_hosts_through_the_pipeline(tiny, train_source):
  full = P.train_local_batch(train_source, 2, CFG, SEED)
  parts = []
  for host in (0, 1):
    with P.TrainPipeline(tiny, "train", CFG, None, SEED, start_step=2, process_index=host,
                         process_count=2) as it:
      parts.append(next(it))
  for k in full:
    np.testing.assert_array_equal(np.concatenate([parts[0][k], parts[1][k]]), full[k])


# ---------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("isotropic", [True, False])
def test_augmentation_ranges_against_reference(train_source, isotropic):
  cfg = replace(CFG, num_points=512, color_jitter=0.0, hflip=False, image_size=32,
                point_scale_isotropic=isotropic)
  step = 4
  batch = P.train_local_batch(train_source, step, cfg, SEED)
  idx = P.global_batch_indices(SEED, step, len(train_source), 8)
  scales, shifts = [], []
  for j in range(8):
    ex = train_source[int(idx[j])]
    x, y = ex["points"].astype(np.float64), batch["points"][j].astype(np.float64)
    # All points kept in order, so y = x * s + t per axis: solve and check the fit.
    for ax in range(3):
      s, t = np.polyfit(x[:, ax], y[:, ax], 1)
      np.testing.assert_allclose(x[:, ax] * s + t, y[:, ax], atol=1e-5)
      scales.append(s)
      shifts.append(t)
    # Reference draws, in the documented order.
    rng = np.random.default_rng([SEED, 1, step, j])
    view = rng.integers(4)
    ref_s = rng.uniform(2 / 3, 3 / 2, 3)
    if isotropic:  # the first of the three draws on every axis; the others still drawn
      ref_s = np.full(3, ref_s[0])
    ref_t = rng.uniform(-0.2, 0.2, 3)
    np.testing.assert_allclose(scales[-3:], ref_s, rtol=1e-4)
    np.testing.assert_allclose(shifts[-3:], ref_t, atol=1e-4)
    np.testing.assert_array_equal(batch["images"][j], ex["images"][view])
  assert 2 / 3 <= min(scales) and max(scales) <= 3 / 2
  assert -0.2 <= min(shifts) and max(shifts) <= 0.2


def test_point_subset_and_flip(train_source):
  cfg = replace(CFG, num_points=100, color_jitter=0.0, hflip=True, image_size=32,
             point_scale=(1.0, 1.0), point_translate=0.0)
  batch = P.train_local_batch(train_source, 0, cfg, SEED)
  idx = P.global_batch_indices(SEED, 0, len(train_source), 8)
  flips = 0
  for j in range(8):
    ex = train_source[int(idx[j])]
    stored = {tuple(p) for p in ex["points"]}
    pts = [tuple(p) for p in batch["points"][j]]
    assert len(set(pts)) == 100 and set(pts) <= stored  # a subset without replacement
    img = batch["images"][j]
    same = [np.array_equal(img, v) for v in ex["images"]]
    mirrored = [np.array_equal(img, v[:, ::-1]) for v in ex["images"]]
    assert any(same) or any(mirrored)
    flips += not any(same)
  assert 0 < flips < 8


def test_num_train_views_restricts_views(train_source):
  cfg = replace(CFG, color_jitter=0.0, hflip=False, image_size=32, num_train_views=1)
  batch = P.train_local_batch(train_source, 1, cfg, SEED)
  idx = P.global_batch_indices(SEED, 1, len(train_source), 8)
  for j in range(8):
    np.testing.assert_array_equal(batch["images"][j], train_source[int(idx[j])]["images"][0])
  with pytest.raises(ValueError, match="input.num_train_views"):
    P.train_local_batch(train_source, 1, replace(cfg, num_train_views=5), SEED)


def test_too_many_points_is_a_clear_error(train_source):
  with pytest.raises(ValueError, match="input.num_points"):
    P.train_local_batch(train_source, 0, replace(CFG, num_points=1024), SEED)


def test_resize_against_loops():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  down = P.resize_images(img, 4)
  ref = np.zeros((2, 4, 4, 3))
  for i in range(4):
    for j in range(4):
      ref[:, i, j] = img[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(float).mean((1, 2))
  np.testing.assert_array_equal(down, np.round(ref).astype(np.uint8))
  up = P.resize_images(img, 16)
  for i in range(16):
    for j in range(16):
      np.testing.assert_array_equal(up[:, i, j], img[:, i // 2, j // 2])
  assert P.resize_images(img, 8) is img
  with pytest.raises(ValueError, match="input.image_size"):
    P.resize_images(img, 6)


def test_color_jitter_hand_worked():
  img = np.array([[[100, 50, 0], [200, 150, 100]]], np.float32)
  np.testing.assert_allclose(P.color_jitter(img, np.array([1, 1, 1], np.float32)), img)
  np.testing.assert_allclose(P.color_jitter(img, np.array([2, 1, 1], np.float32)),
                             [[[200, 100, 0], [255, 255, 200]]])
  luma = img @ np.array([0.299, 0.587, 0.114], np.float32)
  flat = P.color_jitter(img, np.array([1, 0, 1], np.float32))  # contrast 0: mean grey
  np.testing.assert_allclose(flat, np.full_like(img, luma.mean()), rtol=1e-5)
  grey = P.color_jitter(img, np.array([1, 1, 0], np.float32))  # saturation 0: per-pixel grey
  np.testing.assert_allclose(grey, np.repeat(luma[..., None], 3, -1), rtol=1e-5)


def test_jitter_changes_the_images_and_no_other_draw(train_source):
  plain = P.train_local_batch(train_source, 3, replace(CFG, color_jitter=0.0), SEED)
  jit = P.train_local_batch(train_source, 3, CFG, SEED)
  np.testing.assert_array_equal(plain["points"], jit["points"])  # same other draws
  assert not np.array_equal(plain["images"], jit["images"])


# ---------------------------------------------------------------------------- devices


def test_sharded_pipeline_on_two_devices(tiny, train_source):
  mesh = sharding.make_mesh(jax.devices()[:2])
  with P.TrainPipeline(tiny, "train", CFG, mesh, SEED, start_step=7) as it:
    assert it.steps_per_epoch == 10
    batch = next(it)
    assert it.step == 8
  ref = P.train_local_batch(train_source, 7, CFG, SEED)
  assert batch["images"].dtype == np.float32 and batch["images"].shape == (8, 16, 16, 3)
  for k, v in batch.items():
    assert v.sharding.is_equivalent_to(sharding.data_sharding(mesh), v.ndim), k
    shards = sorted(v.addressable_shards, key=lambda s: s.index[0].start)
    assert [s.data.shape[0] for s in shards] == [4, 4]
  np.testing.assert_array_equal(np.asarray(batch["points"]), ref["points"])
  np.testing.assert_array_equal(np.asarray(batch["label"]), ref["label"])
  np.testing.assert_allclose(np.asarray(batch["images"]),
                             np.asarray(normalize_images(ref["images"])), atol=1e-6)


def test_batch_not_divisible_by_devices_names_the_key(tiny):
  mesh = sharding.make_mesh(jax.devices()[:4])
  with pytest.raises(ValueError, match="input.batch_size"):
    P.TrainPipeline(tiny, "train", replace(CFG, batch_size=6), mesh, SEED)
  with pytest.raises(ValueError, match="input.eval_batch_size"):
    P.eval_batches(tiny, "query", replace(CFG, eval_batch_size=10), mesh)


def test_resume_gives_identical_batches(tiny):
  with P.TrainPipeline(tiny, "train", CFG, None, SEED) as it:
    first = [next(it) for _ in range(13)]  # crosses the epoch boundary at step 10
  with P.TrainPipeline(tiny, "train", CFG, None, SEED, start_step=9) as it:
    resumed = [next(it) for _ in range(4)]
  for a, b in zip(first[9:], resumed):
    _equal(a, b)


def test_prefetch_equals_synchronous(tiny):
  with P.TrainPipeline(tiny, "train", replace(CFG, prefetch=0), None, SEED) as it:
    sync = [next(it) for _ in range(3)]
  with P.TrainPipeline(tiny, "train", replace(CFG, prefetch=3), None, SEED) as it:
    pre = [next(it) for _ in range(3)]
  for a, b in zip(sync, pre):
    _equal(a, b)


def test_worker_error_is_reraised_and_close_stops_thread(train_source):
  bad = Recording(train_source, fail_at=int(P.global_batch_indices(SEED, 1, 80, 8)[3]))
  before = threading.active_count()
  it = P.TrainPipeline(bad, "train", CFG, None, SEED)
  next(it)  # step 0 is fine
  with pytest.raises(RuntimeError, match="broken record"):
    next(it)
  it.close()
  assert threading.active_count() == before
  it2 = P.TrainPipeline(train_source, "train", replace(CFG, prefetch=2), None, SEED)
  next(it2)
  it2.close()  # worker blocked on a full queue must still stop
  assert threading.active_count() == before


# ---------------------------------------------------------------------------- eval


def test_eval_covers_every_object_once(tiny):
  src = tiny.as_data_source(split="query")
  batches = list(P.eval_batches(tiny, "query", CFG, None))
  assert len(batches) == 4  # 40 objects, batches of 12
  index = np.concatenate([b["index"] for b in batches])
  valid = np.concatenate([b["valid"] for b in batches])
  label = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(index[valid], np.arange(40))
  assert valid.sum() == 40 and (index[~valid] == -1).all() and (label[~valid] == -1).all()
  np.testing.assert_array_equal(label[valid], np.arange(40) % 20)
  # Fixed view, no augmentation; a fixed subset of the stored points.
  b = batches[1]
  for r in range(12):
    ex = src[int(b["index"][r])]
    np.testing.assert_array_equal(b["images"][r], P.resize_images(ex["images"][0], 16))
    assert {tuple(p) for p in b["points"][r]} <= {tuple(p) for p in ex["points"]}
  again = list(P.eval_batches(tiny, "query", CFG, None))
  for a, c in zip(batches, again):
    _equal(a, c)


def test_eval_sharded_and_two_simulated_hosts(tiny):
  cfg = replace(CFG, eval_batch_size=16, eval_view=2)
  mesh = sharding.make_mesh(jax.devices()[:2])
  glob = list(P.eval_batches(tiny, "query", cfg, mesh))
  hosts = [list(P.eval_batches(tiny, "query", cfg, None, process_index=h, process_count=2))
           for h in (0, 1)]
  assert len(glob) == len(hosts[0]) == 3
  # Only the model inputs go to the devices; metadata stays on the host.
  assert all(isinstance(glob[0][k], jax.Array) for k in ("points", "images"))
  assert all(isinstance(glob[0][k], np.ndarray) for k in ("label", "valid", "index"))
  for g, h0, h1 in zip(glob, *hosts):
    for k in ("points", "label", "valid", "index"):
      np.testing.assert_array_equal(np.asarray(g[k]), np.concatenate([h0[k], h1[k]]))
    np.testing.assert_allclose(np.asarray(g["images"]),
                               np.asarray(normalize_images(np.concatenate(
                                   [h0["images"], h1["images"]]))), atol=1e-6)
  assert int(np.asarray(glob[-1]["valid"]).sum()) == 40 - 32
  # The hosts' images are the stored view 2 (eval_view), resized, of each object.
  src = tiny.as_data_source(split="query")
  for h in hosts[0] + hosts[1]:
    for r in np.flatnonzero(h["valid"]):
      np.testing.assert_array_equal(
          h["images"][r], P.resize_images(src[int(h["index"][r])]["images"][2], 16))


def test_bad_config_values_name_the_key(tiny):
  with pytest.raises(ValueError, match="input.eval_view"):
    list(P.eval_batches(tiny, "query", replace(CFG, eval_view=4), None))
  with pytest.raises(ValueError, match="config.seed"):
    P.train_local_batch(tiny.as_data_source(split="train"), 0, CFG, -1)

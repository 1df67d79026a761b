"""Shared machinery of the real-dataset builders (ShapeNetRender, ModelNet40, ShapeNet-55).

Each builder lists the hand-downloaded files of its published layout (`_scan`); this module
does the rest, identically for all three:

* Readers built on maintained libraries (plyfile, Pillow, NumPy, h5py). A file that cannot
  be read raises `UnreadableFileError` naming it; a missing folder or index file raises
  `LayoutError` naming the expected path.
* Pairing checks and skip accounting. An object is *skipped and counted* when it has a point
  cloud but no images (or the reverse), fewer views than `num_views`, an unreadable point or
  image file (named), or a rejected point cloud (non-finite, fewer points than `num_points`,
  wrong shape, all points coincident; named by its id). More than `max_skip_fraction` of
  the candidate objects skipped is a hard `TooManySkippedError`. A summary (objects per
  class and split, pairs found, skips by reason with examples, ignored files) is printed
  and logged at the end of preparation and saved as `prepare_summary.json` beside the data.
* Points: `num_points` of each cloud by farthest point sampling
  (`cmah_jax.ops.pointcloud.farthest_point_sample`, first index 0) or a seeded random
  subset (`default_rng([split_seed, crc32(object_id)])`), then centred on their centroid
  and scaled into the unit sphere (farthest point at radius 1).
* Images: alpha composited onto a grey `background` (255 = white), padded to a square with
  the background colour, resized to `image_size` with Pillow's bicubic filter (antialiased
  when shrinking). `num_views` views are kept per object, evenly spaced over its views in
  natural sort order (view `k` is the `floor(k * n / num_views)`-th of n).
* Splits (`holdout_split`, `query_database_split`): per class, the object ids sorted, then
  permuted with `np.random.default_rng([split_seed, stream, label])`; the first
  `round(fraction * n)` (at least 1 and at most n - 1 when n >= 2; 0 when n == 1) are taken.
  Splits are decided on the paired objects before any file is read, so a file that turns
  out unreadable removes only its own object.

Every example has the project's format
  {"points": float32 [P, 3], "images": uint8 [V, S, S, 3], "label": int64, "object_id": str}
and the splits are "train", "query" and "database" (disjoint objects).
"""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import os
import re
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

SPLITS = ("train", "query", "database")
_HOLDOUT_STREAM = 0  # rng stream of holdout_split [ours]
_QUERY_STREAM = 1  # rng stream of query_database_split [ours]
_CHUNK = 32  # objects read (threads) and subsampled (one batched FPS call) together [ours]
_MAX_SKIP_WARNINGS = 20  # skips logged one by one; the rest only in the summary [ours]

REASONS = {
    "no_images": "point cloud but no rendered images",
    "no_points": "rendered images but no point cloud",
    "too_few_views": "fewer rendered views than config.num_views",
    "unreadable_points": "point-cloud file could not be read",
    "unreadable_image": "image file could not be read",
    "bad_points": "point cloud rejected (non-finite, too few points, wrong shape or "
                  "degenerate)",
    "unknown_class": "category not in the dataset's class list",
    "label_mismatch": "stored label disagrees with the object's category",
    "duplicate": "object listed more than once",
}


# ----------------------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------------------


class LayoutError(FileNotFoundError):
  """A folder or index file of the published layout is missing (the message names it)."""


class UnreadableFileError(ValueError):
  """A file exists but cannot be read or has the wrong content."""

  def __init__(self, path, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"Cannot read {self.path}: {reason}")


class BadPointCloudError(ValueError):
  """A point cloud was read but is unusable (NaN, truncated, wrong shape, degenerate)."""

  def __init__(self, object_id: str, reason: str, path=None):
    self.object_id = object_id
    self.reason = reason
    self.path = None if path is None else os.fspath(path)
    where = f" ({self.path})" if self.path else ""
    super().__init__(f"Point cloud of {object_id!r}{where} rejected: {reason}")


class TooManySkippedError(RuntimeError):
  """More than `max_skip_fraction` of the candidate objects were skipped."""


def require_dir(path, what: str, dataset: str) -> Path:
  """`path` as a Path if it is a directory, else a `LayoutError` naming it."""
  path = Path(path)
  if not path.is_dir():
    raise LayoutError(
        f"{dataset}: expected the {what} folder at {path}, but it "
        f"{'is not a folder' if path.exists() else 'does not exist'}. See the expected "
        f"layout in docs/real_datasets.md (or the builder's MANUAL_DOWNLOAD_INSTRUCTIONS).")
  return path


def require_file(path, what: str, dataset: str) -> Path:
  """`path` as a Path if it is a file, else a `LayoutError` naming it."""
  path = Path(path)
  if not path.is_file():
    raise LayoutError(
        f"{dataset}: expected the {what} at {path}, but it "
        f"{'is not a file' if path.exists() else 'does not exist'}. See the expected "
        f"layout in docs/real_datasets.md (or the builder's MANUAL_DOWNLOAD_INSTRUCTIONS).")
  return path


# ----------------------------------------------------------------------------------------
# Readers.
# ----------------------------------------------------------------------------------------


def read_ply_points(path) -> np.ndarray:
  """x, y, z of the `vertex` element of a binary or ASCII PLY file: float64 [N, 3]."""
  import plyfile  # pylint: disable=import-outside-toplevel

  try:
    ply = plyfile.PlyData.read(os.fspath(path))
    vertex = ply["vertex"]
    names = vertex.data.dtype.names or ()
    missing = [c for c in "xyz" if c not in names]
    if missing:
      raise ValueError(f"vertex element has no {missing} property (has {list(names)})")
    return np.stack([np.asarray(vertex[c], np.float64) for c in "xyz"], axis=-1)
  except (OSError, ValueError, KeyError, IndexError, EOFError, TypeError,
          plyfile.PlyParseError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e


def read_npy_points(path) -> np.ndarray:
  """A NumPy `.npy` array [N, C >= 3] (no pickles); the first 3 columns: float64 [N, 3]."""
  try:
    arr = np.load(os.fspath(path), allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e
  if arr.ndim != 2 or arr.shape[1] < 3 or not np.issubdtype(arr.dtype, np.number):
    raise UnreadableFileError(
        path, f"expected a numeric [N, 3] array, got {arr.dtype} {list(arr.shape)}")
  return np.asarray(arr[:, :3], np.float64)


def read_h5(path, keys: Sequence[str]) -> dict[str, np.ndarray]:
  """The named datasets of an HDF5 file, fully read: {key: array}."""
  import h5py  # pylint: disable=import-outside-toplevel

  try:
    with h5py.File(os.fspath(path), "r") as f:
      out = {}
      for k in keys:
        if k not in f:
          raise KeyError(f"no dataset {k!r} (has {sorted(f.keys())})")
        out[k] = np.asarray(f[k][...])
      return out
  except (OSError, KeyError, ValueError, TypeError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e


def read_lines(path) -> list[str]:
  """Non-empty stripped lines of a UTF-8 text file."""
  try:
    with open(path, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e


def read_json(path) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e


def load_image(path, size: int, background: int = 255) -> np.ndarray:
  """A PNG (any Pillow-readable image) as uint8 [size, size, 3].

  Transparent pixels are composited onto grey level `background`; a non-square image is
  padded to a square (centred) with that colour; then bicubic resize (antialiased when
  shrinking) to `size` x `size`.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  try:
    with Image.open(os.fspath(path)) as im:
      im.load()  # full decode now: a truncated file fails here, not later
      has_alpha = im.mode in ("RGBA", "LA", "PA") or (
          im.mode == "P" and "transparency" in im.info)
      if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (background,) * 3 + (255,))
        rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
      else:
        rgb = im.convert("RGB")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e
  w, h = rgb.size
  if w != h:
    side = max(w, h)
    square = Image.new("RGB", (side, side), (background,) * 3)
    square.paste(rgb, ((side - w) // 2, (side - h) // 2))
    rgb = square
  if rgb.size != (size, size):
    rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
  return np.asarray(rgb, np.uint8)


# ----------------------------------------------------------------------------------------
# Points.
# ----------------------------------------------------------------------------------------


def check_points(points: np.ndarray, object_id: str, min_points: int, path=None) -> np.ndarray:
  """Reject unusable clouds with `BadPointCloudError`; return float64 [N, 3]."""
  points = np.asarray(points)
  if points.ndim != 2 or points.shape[-1] != 3:
    raise BadPointCloudError(object_id, f"shape {list(points.shape)}, expected [N, 3]", path)
  points = points.astype(np.float64)
  if points.shape[0] < min_points:
    raise BadPointCloudError(
        object_id, f"truncated: {points.shape[0]} points, config.num_points needs at "
        f"least {min_points}", path)
  bad = ~np.isfinite(points).all(axis=-1)
  if bad.any():
    raise BadPointCloudError(
        object_id, f"{int(bad.sum())} of {points.shape[0]} points are NaN or infinite", path)
  if np.ptp(points, axis=0).max() <= 0:
    raise BadPointCloudError(object_id, "degenerate: all points coincide", path)
  return points


def normalize_unit_sphere_np(points: np.ndarray) -> np.ndarray:
  """Centre on the centroid, scale so the farthest point has norm 1: float32 [N, 3]."""
  p = np.asarray(points, np.float64)
  p = p - p.mean(axis=0, keepdims=True)
  radius = np.sqrt((p * p).sum(-1).max())
  return (p / max(radius, 1e-12)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _jitted_fps(num_samples: int):
  import jax  # pylint: disable=import-outside-toplevel

  from cmah_jax.ops.pointcloud import farthest_point_sample  # pylint: disable=import-outside-toplevel
  return jax.jit(lambda pts: farthest_point_sample(pts, num_samples))


def fps_indices(clouds: Sequence[np.ndarray], num_samples: int,
                batch: int = _CHUNK) -> list[np.ndarray]:
  """Farthest-point-sample indices of each cloud: a list of int [num_samples].

  Clouds are padded to a power-of-two size with copies of their point 0 and to `batch`
  clouds, so few shapes are compiled. Padding never changes the result: FPS starts at
  index 0, copies of point 0 are then at distance 0, and a distance-0 tie goes to index 0
  itself (the lowest index), so a padded index is never chosen.
  """
  import jax  # pylint: disable=import-outside-toplevel

  if not clouds:
    return []
  fn = _jitted_fps(int(num_samples))
  cpu = jax.devices("cpu")[0]
  out = []
  for start in range(0, len(clouds), batch):
    part = clouds[start:start + batch]
    size = max(num_samples, max(len(c) for c in part))
    size = 1 << (size - 1).bit_length()
    arr = np.empty((batch, size, 3), np.float32)
    for i in range(batch):
      c = part[i] if i < len(part) else part[0]
      arr[i, :len(c)] = c
      arr[i, len(c):] = c[0]
    idx = np.asarray(fn(jax.device_put(arr, cpu)))
    for i, c in enumerate(part):
      if (idx[i] >= len(c)).any():  # impossible by the argument above; guard anyway
        raise AssertionError("farthest_point_sample chose a padding point")
      out.append(idx[i])
  return out


def random_subset_indices(num: int, num_samples: int, seed: int, object_id: str) -> np.ndarray:
  """Sorted random subset without replacement from `default_rng([seed, crc32(id)])`."""
  rng = np.random.default_rng([int(seed), zlib.crc32(object_id.encode("utf-8"))])
  return np.sort(rng.choice(num, num_samples, replace=False))


def subsample_points(clouds: Sequence[np.ndarray], object_ids: Sequence[str], num_points: int,
                     method: str, seed: int) -> list[np.ndarray]:
  """`num_points` of each cloud (FPS or seeded random subset), unit-sphere normalised."""
  if method == "fps":
    indices = fps_indices(clouds, num_points)
  elif method == "random":
    indices = [random_subset_indices(len(c), num_points, seed, i)
               for c, i in zip(clouds, object_ids)]
  else:
    raise ValueError(f"Unknown subsample method {method!r} (builder config `subsample`); "
                     "use 'fps' or 'random'.")
  return [normalize_unit_sphere_np(c[i]) for c, i in zip(clouds, indices)]


# ----------------------------------------------------------------------------------------
# Views and splits.
# ----------------------------------------------------------------------------------------


def natural_key(text: str):
  """Sort key treating digit runs as numbers ("img.2" < "img.10")."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def select_views(paths: Sequence, num_views: int) -> list:
  """`num_views` of `paths` (natural order), evenly spaced: the `k*n//num_views`-th."""
  paths = sorted(paths, key=lambda p: natural_key(Path(p).name))
  n = len(paths)
  if n < num_views:
    raise ValueError(f"{n} views < num_views={num_views}")
  return [paths[k * n // num_views] for k in range(num_views)]


def _split_count(fraction: float, n: int) -> int:
  if n < 2:
    return 0
  k = int(math.floor(fraction * n + 0.5))
  return min(max(k, 1), n - 1)


def _per_class_pick(object_ids: Sequence[str], labels: Sequence[int], fraction: float,
                    seed: int, stream: int) -> set[str]:
  by_class = collections.defaultdict(list)
  for oid, lab in zip(object_ids, labels):
    by_class[int(lab)].append(oid)
  picked = set()
  for lab, ids in by_class.items():
    ids = sorted(ids)
    order = np.random.default_rng([int(seed), stream, lab]).permutation(len(ids))
    picked.update(ids[j] for j in order[:_split_count(fraction, len(ids))])
  return picked


def holdout_split(object_ids: Sequence[str], labels: Sequence[int], test_fraction: float,
                  seed: int) -> dict[str, str]:
  """{object_id: "train" | "test"}: per class, `round(test_fraction * n)` objects to test.

  Class `c`'s ids are sorted, permuted by `default_rng([seed, 0, c])`, and the first
  `round(test_fraction * n)` (clipped to [1, n-1] when n >= 2, 0 when n == 1) go to test.
  """
  test = _per_class_pick(object_ids, labels, test_fraction, seed, _HOLDOUT_STREAM)
  return {oid: ("test" if oid in test else "train") for oid in object_ids}


def query_database_split(object_ids: Sequence[str], labels: Sequence[int],
                         query_fraction: float, seed: int) -> dict[str, str]:
  """{object_id: "query" | "database"} for test objects, per class.

  Class `c`'s ids are sorted, permuted by `default_rng([seed, 1, c])`, and the first
  `round(query_fraction * n)` (clipped to [1, n-1] when n >= 2, 0 when n == 1) are queries;
  the rest form the retrieval database.
  """
  query = _per_class_pick(object_ids, labels, query_fraction, seed, _QUERY_STREAM)
  return {oid: ("query" if oid in query else "database") for oid in object_ids}


# ----------------------------------------------------------------------------------------
# Objects and the preparation report.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class ObjectSpec:
  """One candidate object as listed by a builder's `_scan` (nothing read yet).

  `points`: a file path (.ply / .npy), an in-memory array [N, 3] (ModelNet40's HDF5 rows)
  or None (no point cloud found). `points_file`: the file named in messages.
  `image_paths`: every view found (any order), empty if none. `split`: "train", "test"
  (to be divided into query/database) or None (the builder's holdout rule decides).
  """
  object_id: str
  label: int
  points: Any = None
  points_file: str | None = None
  image_paths: list = dataclasses.field(default_factory=list)
  split: str | None = None
  points_hint: str | None = None  # where the point cloud was looked for (messages)
  images_hint: str | None = None  # where the views were looked for (messages)


@dataclasses.dataclass
class Scan:
  """What `_scan` found: class names, candidate objects, early skips, ignored items."""
  class_names: list[str]
  objects: list[ObjectSpec]
  skips: list["Skip"] = dataclasses.field(default_factory=list)
  ignored: dict[str, int] = dataclasses.field(default_factory=dict)
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Skip:
  reason: str  # a key of REASONS
  object_id: str
  detail: str = ""
  path: str | None = None

  def describe(self) -> str:
    where = f" [{self.path}]" if self.path else ""
    return f"{self.object_id}{where}: {self.detail or REASONS.get(self.reason, self.reason)}"


class PrepareReport:
  """Counts of a preparation run; raises `TooManySkippedError` past `max_skip_fraction`."""

  def __init__(self, dataset: str, config_name: str, class_names: Sequence[str],
               num_candidates: int, max_skip_fraction: float,
               ignored: dict[str, int] | None = None):
    self.dataset = dataset
    self.config_name = config_name
    self.class_names = list(class_names)
    self.num_candidates = int(num_candidates)
    self.max_skip_fraction = float(max_skip_fraction)
    self.ignored = dict(ignored or {})
    self.pairs_found = 0
    self.skips: list[Skip] = []
    self.planned = collections.Counter()  # (split, label) -> paired objects assigned
    self.written = collections.Counter()  # (split, label) -> examples written

  def skip(self, s: Skip, check: bool = True):
    self.skips.append(s)
    if len(self.skips) <= _MAX_SKIP_WARNINGS:
      logging.warning("%s: skipped %s", self.dataset, s.describe())
    elif len(self.skips) == _MAX_SKIP_WARNINGS + 1:
      logging.warning("%s: further skips are listed only in the final summary.",
                      self.dataset)
    if check:
      self.check()

  def check(self):
    limit = self.max_skip_fraction * self.num_candidates
    if len(self.skips) > limit:
      raise TooManySkippedError(
          f"{self.dataset}: {len(self.skips)} of {self.num_candidates} candidate objects "
          f"skipped, more than max_skip_fraction={self.max_skip_fraction:g} allows "
          f"({limit:.1f}). Fix the files named below (or raise the limit: "
          f"get_builder(..., max_skip_fraction=F)).\n{self.format(max_examples=10)}")

  def format(self, max_examples: int = 5) -> str:
    lines = [f"== {self.dataset}/{self.config_name}: preparation summary =="]
    lines.append(f"candidate objects {self.num_candidates}; pairs found (points + images) "
                 f"{self.pairs_found}; examples written {sum(self.written.values())}; "
                 f"skipped {len(self.skips)}")
    counted = self.written if self.written else self.planned
    title = "written" if self.written else "planned"
    if counted:
      lines.append(f"objects per class ({title}): train / query / database")
      for lab, name in enumerate(self.class_names):
        n = [counted[(s, lab)] for s in SPLITS]
        if any(n):
          lines.append(f"  {lab:3d} {name:<28s} {n[0]:7d} {n[1]:7d} {n[2]:7d}")
      tot = [sum(v for (s, _), v in counted.items() if s == split) for split in SPLITS]
      lines.append(f"      {'total':<28s} {tot[0]:7d} {tot[1]:7d} {tot[2]:7d}")
    if self.skips:
      lines.append("skipped, by reason:")
      by_reason = collections.defaultdict(list)
      for s in self.skips:
        by_reason[s.reason].append(s)
      for reason, items in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {len(items):6d} {reason}: {REASONS.get(reason, reason)}")
        for s in items[:max_examples]:
          lines.append(f"           - {s.describe()}")
        if len(items) > max_examples:
          lines.append(f"           ... {len(items) - max_examples} more "
                       "(all in prepare_summary.json)")
    for what, n in sorted(self.ignored.items()):
      if n:
        lines.append(f"ignored (not candidates): {n} {what}")
    return "\n".join(lines)

  def to_json(self) -> dict:
    return {
        "dataset": self.dataset, "config": self.config_name,
        "num_candidates": self.num_candidates, "pairs_found": self.pairs_found,
        "max_skip_fraction": self.max_skip_fraction,
        "written": {split: {self.class_names[lab]: n for (s, lab), n in
                            sorted(self.written.items()) if s == split} for split in SPLITS},
        "skipped": [dataclasses.asdict(s) for s in self.skips],
        "ignored": self.ignored,
    }


# ----------------------------------------------------------------------------------------
# The builder base.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class RealDatasetConfig(tfds.core.BuilderConfig):
  """What is stored per object, and how it is derived from the downloaded files.

  Attributes:
    image_size: stored images are `image_size` x `image_size` (224 [MAE]; the pipeline
      resizes by integer factors only, e.g. 224 -> 112, 32 or 16).
    num_views: views kept per object, evenly spaced over its sorted views [ours].
    num_points: points kept per object (the pipeline draws `config.input.num_points` of
      them, so keep at least that many) [ours: 2x Point-MAE's 1024].
    subsample: "fps" (farthest point sampling [Point-MAE]) or "random" (seeded subset).
    background: grey level under transparent pixels and square padding [ours].
    split_seed: seed of the split rule and of random subsampling [ours].
    query_fraction: fraction of each class's test objects used as queries [ours].
    test_fraction: fraction of each class held out for retrieval evaluation where a
      dataset has no official split (ShapeNetRender) [ours].
    max_skip_fraction: more candidate objects skipped than this fraction is an error [ours].
    num_workers: reader threads; -1 = min(8, CPUs).
  """
  image_size: int = 224
  num_views: int = 12
  num_points: int = 2048
  subsample: str = "fps"
  background: int = 255
  split_seed: int = 0
  query_fraction: float = 0.2
  test_fraction: float = 0.2
  max_skip_fraction: float = 0.1
  num_workers: int = -1

  def validate(self) -> "RealDatasetConfig":
    for key in ("image_size", "num_views", "num_points"):
      v = getattr(self, key)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"builder config {self.name!r}: {key}={v!r} must be a positive int")
    if self.subsample not in ("fps", "random"):
      raise ValueError(f"builder config {self.name!r}: subsample={self.subsample!r} must be "
                       "'fps' or 'random'")
    for key in ("query_fraction", "test_fraction", "max_skip_fraction"):
      v = getattr(self, key)
      if not 0 <= v <= 1:
        raise ValueError(f"builder config {self.name!r}: {key}={v!r} must be in [0, 1]")
    if not 0 <= self.background <= 255:
      raise ValueError(f"builder config {self.name!r}: background={self.background!r} must "
                       "be in [0, 255]")
    return self


def standard_configs(views_available: str) -> list[RealDatasetConfig]:
  """The named configs every real dataset offers (`default` is paper scale)."""
  return [
      RealDatasetConfig(
          name="default", image_size=224, num_views=12, num_points=2048, subsample="fps",
          description=f"Paper scale: 224x224 images [MAE], 12 views of {views_available}, "
                      "2048 FPS points (the pipeline draws 1024 [Point-MAE])."),
      RealDatasetConfig(
          name="compact", image_size=224, num_views=4, num_points=2048, subsample="fps",
          description=f"Paper-scale resolution with 4 views of {views_available} (a third "
                      "of the disk of `default`)."),
      RealDatasetConfig(
          name="small", image_size=64, num_views=12, num_points=2048, subsample="fps",
          description="64x64 images, 12 views, 2048 FPS points: for the `small` and `tiny` "
                      "model variants (64 and 32 px)."),
      RealDatasetConfig(
          name="tiny", image_size=32, num_views=4, num_points=512, subsample="random",
          description="32x32 images, 4 views, 512 random points: smoke runs of the `tiny` "
                      "model."),
  ]


def _default_workers() -> int:
  return max(1, min(8, os.cpu_count() or 1))


def _batched(items: Sequence, n: int) -> Iterator[Sequence]:
  for i in range(0, len(items), n):
    yield items[i:i + n]


class RealDatasetBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the real-dataset builders: subclasses set the class attributes and `_scan`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DEFAULT_CONFIG_NAME = "default"
  DESCRIPTION = ""
  HOMEPAGE = ""
  CITATION = ""

  def __init__(self, *, file_format: str = "array_record",
               max_skip_fraction: float | None = None, num_workers: int | None = None,
               **kwargs):
    """Like any TFDS builder; ArrayRecord by default (no TensorFlow needed).

    Args:
      max_skip_fraction: overrides the config's limit on skipped objects (in [0, 1]).
      num_workers: overrides the config's number of reader threads.
    """
    super().__init__(file_format=file_format, **kwargs)
    self.builder_config.validate()
    self._max_skip_fraction = (self.builder_config.max_skip_fraction
                               if max_skip_fraction is None else float(max_skip_fraction))
    if not 0 <= self._max_skip_fraction <= 1:
      raise ValueError(f"max_skip_fraction={max_skip_fraction!r} must be in [0, 1]")
    self._num_workers = num_workers
    self.report: PrepareReport | None = None

  # --- to implement ---------------------------------------------------------------------
  @abc.abstractmethod
  def _scan(self, root: Path) -> Scan:
    """List the candidate objects under `root` (the manual dir) without reading them."""

  def _class_names_for_info(self) -> list[str] | None:
    """Class names known before scanning (None: set from the scan)."""
    return None

  # --- TFDS -----------------------------------------------------------------------------
  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    metadata = tfds.core.MetadataDict()
    names = self._class_names_for_info()
    if names is not None:
      metadata["class_names"] = list(names)
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "points": tfds.features.Tensor(shape=(cfg.num_points, 3), dtype=np.float32),
            # Raw bytes, not TFDS's default int64 list: ~10x faster to read [ours].
            "images": tfds.features.Tensor(
                shape=(cfg.num_views, cfg.image_size, cfg.image_size, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64),
            "object_id": tfds.features.Tensor(shape=(), dtype=np.str_),
        }),
        metadata=metadata,
        homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None,
        disable_shuffling=True,
    )

  def _manual_root(self, dl_manager) -> Path:
    try:
      return Path(os.fspath(dl_manager.manual_dir))
    except AssertionError as e:
      raise LayoutError(f"{self.name}: {e}") from e

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    root = self._manual_root(dl_manager)
    scan = self._scan(root)
    self.info.metadata["class_names"] = list(scan.class_names)
    self.info.metadata.update(scan.metadata)
    self.info.metadata["split_rule"] = self._split_rule_text()

    if not scan.objects and not scan.skips:
      raise LayoutError(
          f"{self.name}: no objects found under {root}. Expected layout:\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    report = PrepareReport(self.name, cfg.name, scan.class_names,
                           len(scan.objects) + len(scan.skips), self._max_skip_fraction,
                           scan.ignored)
    self.report = report
    for s in scan.skips:
      report.skip(s, check=False)

    paired = []
    for obj in scan.objects:
      if obj.points is None:
        report.skip(Skip("no_points", obj.object_id,
                         f"no point cloud at {obj.points_hint}" if obj.points_hint else "",
                         _first(sorted(obj.image_paths, key=lambda p: natural_key(
                             Path(p).name)))), False)
      elif not obj.image_paths:
        report.skip(Skip("no_images", obj.object_id,
                         f"no views found in {obj.images_hint}" if obj.images_hint else "",
                         obj.points_file), False)
      elif len(obj.image_paths) < cfg.num_views:
        report.skip(Skip("too_few_views", obj.object_id,
                         f"{len(obj.image_paths)} views found, config {cfg.name!r} keeps "
                         f"num_views={cfg.num_views}",
                         os.fspath(Path(obj.image_paths[0]).parent)), False)
      else:
        obj.image_paths = select_views(obj.image_paths, cfg.num_views)
        paired.append(obj)
    report.pairs_found = len(paired)
    report.check()

    splits = self._assign_splits(paired)
    by_split = {s: [] for s in SPLITS}
    for obj in paired:
      by_split[splits[obj.object_id]].append(obj)
    for s in SPLITS:
      by_split[s].sort(key=lambda o: o.object_id)
      for o in by_split[s]:
        report.planned[(s, o.label)] += 1
      if not by_split[s]:
        raise ValueError(
            f"{self.name}: split {s!r} would be empty ({len(paired)} paired objects found "
            f"under {root}). Check the layout (docs/real_datasets.md).\n{report.format()}")
    logging.info("%s: %d paired objects: %s", self.name, len(paired),
                 ", ".join(f"{s}={len(by_split[s])}" for s in SPLITS))
    return {s: self._generate_examples(s, by_split[s]) for s in SPLITS}

  def _split_rule_text(self) -> str:
    cfg = self.builder_config
    return (f"query/database: per class, sorted ids permuted by default_rng([{cfg.split_seed},"
            f" 1, label]); first round({cfg.query_fraction} * n) (in [1, n-1]) are queries")

  def _assign_splits(self, objects: list[ObjectSpec]) -> dict[str, str]:
    """{object_id: split}: "train" stays; "test" -> query/database; None -> holdout first."""
    cfg = self.builder_config
    out = {}
    undecided = [o for o in objects if o.split is None]
    if undecided:
      held = holdout_split([o.object_id for o in undecided], [o.label for o in undecided],
                           cfg.test_fraction, cfg.split_seed)
      for o in undecided:
        o.split = held[o.object_id]
    test = [o for o in objects if o.split == "test"]
    qd = query_database_split([o.object_id for o in test], [o.label for o in test],
                              cfg.query_fraction, cfg.split_seed)
    for o in objects:
      out[o.object_id] = "train" if o.split == "train" else qd[o.object_id]
    return out

  def _load(self, obj: ObjectSpec):
    """(points float64 [N, 3], images uint8 [V, S, S, 3]) or a `Skip`. Thread-safe."""
    cfg = self.builder_config
    try:
      if isinstance(obj.points, np.ndarray):
        raw = obj.points
      elif str(obj.points).lower().endswith(".ply"):
        raw = read_ply_points(obj.points)
      else:
        raw = read_npy_points(obj.points)
      points = check_points(raw, obj.object_id, cfg.num_points, obj.points_file)
    except UnreadableFileError as e:
      return Skip("unreadable_points", obj.object_id, e.reason, e.path)
    except BadPointCloudError as e:
      return Skip("bad_points", obj.object_id, e.reason, e.path)
    images = np.empty((cfg.num_views, cfg.image_size, cfg.image_size, 3), np.uint8)
    for v, path in enumerate(obj.image_paths):
      try:
        images[v] = load_image(path, cfg.image_size, cfg.background)
      except UnreadableFileError as e:
        return Skip("unreadable_image", obj.object_id, e.reason, e.path)
    return points, images

  def _generate_examples(self, split: str, objects: list[ObjectSpec]):
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    cfg = self.builder_config
    report = self.report
    workers = self._num_workers
    if workers is None:
      workers = cfg.num_workers
    workers = _default_workers() if workers < 0 else max(1, int(workers))
    key = 0
    chunks = list(_batched(objects, _CHUNK))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, tqdm(
        total=len(objects), desc=f"{self.name} {split}", unit=" objects",
        mininterval=1.0) as bar:
      pending = [pool.submit(self._load, o) for o in chunks[0]] if chunks else []
      for ci, chunk in enumerate(chunks):
        results = [f.result() for f in pending]
        # Read the next chunk while this one is subsampled and written.
        pending = ([pool.submit(self._load, o) for o in chunks[ci + 1]]
                   if ci + 1 < len(chunks) else [])
        good = [(o, r) for o, r in zip(chunk, results) if not isinstance(r, Skip)]
        for r in results:
          if isinstance(r, Skip):
            report.skip(r)
        points = subsample_points([r[0] for _, r in good], [o.object_id for o, _ in good],
                                  cfg.num_points, cfg.subsample, cfg.split_seed)
        for (obj, (_, images)), pts in zip(good, points):
          report.written[(split, obj.label)] += 1
          yield key, {"points": pts, "images": images, "label": np.int64(obj.label),
                      "object_id": obj.object_id}
          key += 1
        bar.update(len(chunk))

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    report = self.report
    if report is None:
      return
    report.check()
    text = report.format()
    print(text, flush=True)
    logging.info("%s", text)
    with open(os.path.join(os.fspath(self.data_dir), "prepare_summary.json"), "w",
              encoding="utf-8") as f:
      json.dump(report.to_json(), f, indent=1)


def _first(items: Iterable):
  for x in items:
    return os.fspath(x)
  return None


def list_images(folder: Path, pattern: re.Pattern | None = None) -> list[Path]:
  """PNG files directly in `folder` (matching `pattern` on the name, if given)."""
  try:
    names = os.listdir(folder)
  except (FileNotFoundError, NotADirectoryError):
    return []
  out = []
  for n in names:
    if not n.lower().endswith(".png"):
      continue
    if pattern is not None and not pattern.fullmatch(n):
      continue
    out.append(folder / n)
  return out

"""The base of the real-dataset builders (ShapeNetRender, ModelNet40, ShapeNet-55).

Each builder lists the hand-downloaded files of its published layout (`_scan`, returning a
`Scan` of `ObjectSpec`s); `RealDatasetBuilder` does the rest, identically for all three:
pairs points with views and counts skips (`skips`), assigns splits before any file is read
(`splits`), reads files with a thread pool (`readers`), subsamples and normalises points
(`points`) and writes examples in the one format of `cmah_jax.datasets.features`, each
split's records in a fixed seeded shuffle (`splits.record_order`, not sorted by id). A summary
is printed and logged at the end of preparation and saved as `prepare_summary.json` beside
the data.
"""
from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from cmah_jax.datasets.features import FLOAT_LIST, make_features
from cmah_jax.datasets.real.points import (
    CHUNK, BadPointCloudError, check_points, subsample_points)
from cmah_jax.datasets.real.readers import (
    LayoutError, UnreadableFileError, load_image, natural_key, read_npy_points,
    read_ply_points, select_views)
from cmah_jax.datasets.real.skips import PrepareReport, Skip
from cmah_jax.datasets.real.splits import (
    RECORD_ORDER_STREAM, SPLITS, holdout_split, query_database_split, record_order)


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
  skips: list[Skip] = dataclasses.field(default_factory=list)
  ignored: dict[str, int] = dataclasses.field(default_factory=dict)
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


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

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "2.0.0": "Records of every split stored in a fixed seeded shuffle "
               "(`splits.record_order`), no longer sorted by object id (which begins with "
               "the class, so index-broken Hamming ties inflated mAP). Same objects per "
               "split and same examples; record indices differ from 1.0.0.",
  }
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
        features=make_features(cfg.num_points, cfg.num_views, cfg.image_size,
                               points_encoding=FLOAT_LIST),
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
    self.info.metadata["record_order"] = self._record_order_text()

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
      # Stored in a fixed seeded shuffle, not by id (ids begin with the class, and Hamming
      # ties are broken by database index): see `splits.record_order`.
      members = {o.object_id: o for o in by_split[s]}
      by_split[s] = [members[oid] for oid in record_order(members, s, cfg.split_seed)]
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

  def _record_order_text(self) -> str:
    return (f"records of each split: sorted ids permuted by default_rng(["
            f"{self.builder_config.split_seed}, {RECORD_ORDER_STREAM}, split_index]), "
            f"split_index = {', '.join(f'{s} {i}' for i, s in enumerate(SPLITS))}")

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
    chunks = list(_batched(objects, CHUNK))
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

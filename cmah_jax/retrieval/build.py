"""Build and extend an index: read files (or a dataset split), encode, write, commit.

Bad files are never dropped silently: each is printed with its reason as it happens,
recorded in the segment's `skipped.jsonl`, and counted in the returned `BuildSummary`;
files of another modality or with an unknown extension are listed as ignored.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import importlib
import os
import shutil
import sys
from typing import Iterable, Iterator

import numpy as np

from cmah_jax.retrieval import index as index_lib
from cmah_jax.retrieval import readers
from cmah_jax.retrieval.encode import Encoder, Progress, pack_faiss


@dataclasses.dataclass
class BuildSummary:
  """What one build / add did. `failed` and `ignored` are (id, reason) pairs."""
  index: str
  modality: str
  indexed: int
  total: int
  failed: list = dataclasses.field(default_factory=list)
  ignored: list = dataclasses.field(default_factory=list)

  def report(self, max_lines: int = 50) -> str:
    lines = [f"indexed {self.indexed:,} {self.modality} into {self.index} "
             f"(index now holds {self.total:,} codes); failed {len(self.failed):,}; "
             f"ignored {len(self.ignored):,}"]
    for title, items in (("failed (not indexed)", self.failed),
                         ("ignored (not this index's modality)", self.ignored)):
      if items:
        lines.append(f"{title}: {len(items):,}")
        lines += [f"  {i}: {r}" for i, r in items[:max_lines]]
        if len(items) > max_lines:
          lines.append(f"  ... and {len(items) - max_lines:,} more (see skipped.jsonl of "
                       "the segment for failures)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Item sources: (id, path, array or BadInput), in order.
# ----------------------------------------------------------------------------------------


def read_files(files: list[tuple[str, str]], modality: str, num_points: int, image_size: int,
               workers: int | None = None) -> Iterator[tuple[str, str, object]]:
  """Read `(id, path)` files in a thread pool, yielding in input order; a bad file yields
  its `BadInput` instead of an array."""
  workers = workers or min(8, os.cpu_count() or 1)

  def load(item):
    id_, path = item
    try:
      return readers.load_file(path, modality, id_, num_points, image_size)
    except readers.BadInput as e:
      return e

  window = collections.deque()
  it = iter(files)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for item in it:
      window.append((item, pool.submit(load, item)))
      if len(window) >= 4 * workers:
        break
    while window:
      (id_, path), fut = window.popleft()
      nxt = next(it, None)
      if nxt is not None:
        window.append((nxt, pool.submit(load, nxt)))
      yield id_, path, fut.result()


def _lazy(*candidates):
  """The first importable `module:attr` of `candidates` (the data code is moving)."""
  errors = []
  for cand in candidates:
    mod, attr = cand.split(":")
    try:
      return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
      errors.append(f"{cand}: {e}")
  raise ImportError("none of " + "; ".join(errors))


def parse_dataset(spec: str) -> tuple[str, str | None, str]:
  """"NAME[/CONFIG]:SPLIT" -> (name, config or None, split)."""
  if ":" not in spec:
    raise ValueError(f"--dataset={spec!r}: expected NAME[/CONFIG]:SPLIT, e.g. "
                     "synthetic_shapes/tiny:database")
  name, split = spec.rsplit(":", 1)
  name, _, config = name.partition("/")
  if not name or not split:
    raise ValueError(f"--dataset={spec!r}: expected NAME[/CONFIG]:SPLIT")
  return name, (config or None), split


def read_dataset(spec: str, data_dir: str, modality: str, num_points: int, image_size: int,
                 eval_view: int = 0, indices=None
                 ) -> tuple[int, Iterator[tuple[str, str, np.ndarray]]]:
  """(number of objects, items) of a prepared dataset split (or of its objects `indices`),
  each object exactly as the test protocol's evaluator sees it (`eval_example`: view
  `eval_view`, the fixed point subset of its index in the split; the validation carve
  numbers its records within the carve, so it draws other subsets)."""
  name, config, split = parse_dataset(spec)
  get_builder = _lazy("cmah_jax.datasets:get_builder", "cmah_jax.data:get_builder")
  eval_example = _lazy("cmah_jax.input:eval_example", "cmah_jax.input.transforms:eval_example",
                       "cmah_jax.data.pipeline:eval_example")
  input_spec = _lazy("cmah_jax.input:InputSpec", "cmah_jax.data.pipeline:InputSpec")
  ispec = input_spec(num_points=num_points, image_size=image_size, eval_view=eval_view)
  builder = get_builder(name, data_dir, config)
  try:
    source = builder.as_data_source(split=split)
  except (KeyError, ValueError) as e:
    raise ValueError(f"cannot read split {split!r} of {name!r} in {data_dir}: {e}; prepare "
                     "it first (python -m cmah_jax.datasets.prepare)") from e
  label = f"{name}/{config}" if config else name
  order = list(range(len(source))) if indices is None else [int(i) for i in indices]

  def items():
    for start in range(0, len(order), 64):
      idx = order[start:start + 64]
      examples = (source.__getitems__(idx) if hasattr(source, "__getitems__")
                  else [source[i] for i in idx])
      for i, ex in zip(idx, examples):
        pts, img = eval_example(ex, i, ispec)
        oid = ex.get("object_id", None) if hasattr(ex, "get") else None
        if isinstance(oid, (bytes, np.bytes_)):
          oid = oid.decode("utf-8")
        yield (str(oid) if oid is not None else str(i)), f"{label}:{split}[{i}]", (
            pts if modality == "points" else img)

  return len(order), items()


# ----------------------------------------------------------------------------------------
# Encode + write.
# ----------------------------------------------------------------------------------------


def _write_items(writer: index_lib.SegmentWriter, encoder: Encoder, modality: str,
                 items: Iterable, total: int, log, progress_every: int,
                 failed: list, id_prefix: str = ""):
  """Batch the good items through the encoder into `writer`; record the bad ones."""
  progress = Progress(f"encode {modality}", total, "files", progress_every, log)
  meta = collections.deque()  # (ids, paths, files consumed) per batch in flight

  def batches():
    xs, ids, paths, consumed = [], [], [], 0
    for id_, path, x in items:
      consumed += 1
      if isinstance(x, Exception):
        failed.append((id_prefix + id_, str(x)))
        writer.skip(id_prefix + id_, path, str(x))
        if log is not None:
          print(f"skipped {id_}: {x}", file=log, flush=True)
      else:
        xs.append(x)
        ids.append(id_prefix + id_)
        paths.append(path)
      if len(xs) == encoder.batch_size:
        meta.append((ids, paths, consumed))
        yield np.stack(xs)
        xs, ids, paths, consumed = [], [], [], 0
    meta.append((ids, paths, consumed))
    yield (np.stack(xs) if xs else np.zeros((0,) + encoder.expected_shape(modality)))

  for codes in encoder.encode_batches(modality, batches()):
    ids, paths, consumed = meta.popleft()
    if len(ids):
      writer.add(pack_faiss(codes), ids, paths)
    progress.update(consumed)
  progress.close()


def _source_items(bound, modality, points, images, dataset, data_dir, workers, eval_view):
  """(total, items, ignored, source record, modality, ids or None) for exactly one input
  kind; folder items are read lazily, when iterated."""
  given = [k for k, v in (("points", points), ("images", images), ("dataset", dataset)) if v]
  if len(given) != 1:
    raise ValueError(f"give exactly one of points=DIR, images=DIR, dataset=SPEC (got {given})")
  if dataset:
    if modality not in readers.MODALITIES:
      raise ValueError(f"dataset input needs modality in {readers.MODALITIES}, got {modality!r}")
    if not data_dir:
      raise ValueError("dataset input needs an explicit data_dir")
    total, items = read_dataset(dataset, data_dir, modality, bound.num_points,
                                bound.image_size, eval_view)
    name, config, split = parse_dataset(dataset)
    source = {"kind": "dataset", "name": name, "config": config, "split": split,
              "data_dir": os.path.abspath(data_dir), "eval_view": int(eval_view)}
    return total, items, [], source, modality, None
  folder_modality = "points" if points else "images"
  if modality not in (None, folder_modality):
    raise ValueError(f"modality={modality!r} contradicts the {folder_modality} folder given")
  root = os.path.abspath(os.path.expanduser(points or images))
  files, ignored = readers.scan_folder(root, folder_modality)
  items = read_files(files, folder_modality, bound.num_points, bound.image_size, workers)
  ids = [i for i, _ in files]
  return len(files), items, ignored, {"kind": "folder", "root": root}, folder_modality, ids


def _prepare_out_dir(out: str) -> bool:
  """Make sure `out` can hold an index; True if this call created it."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise index_lib.BadIndex(f"{out} exists and is not a directory; refusing to overwrite")
  if os.path.isdir(out):
    foreign = [n for n in os.listdir(out)
               if not (n in (index_lib.MANIFEST, index_lib.LOCK)
                       or n.startswith(index_lib.SEG_PREFIX)
                       or index_lib.TMP_MARK in n)]
    if foreign:
      raise index_lib.BadIndex(f"{out} is a non-empty directory that is not an index "
                               f"(holds {sorted(foreign)[:3]}); refusing to write into it")
    return False
  os.makedirs(out)
  return True


def build_index(out: str, bound, *, points: str | None = None, images: str | None = None,
                dataset: str | None = None, data_dir: str | None = None,
                modality: str | None = None, workdir: str | None = None,
                batch_size: int = 256, mesh=None, workers: int | None = None,
                eval_view: int = 0, log=sys.stderr, progress_every: int = 10) -> BuildSummary:
  """Build (or atomically replace) the index at `out` from one folder or dataset split.

  Args:
    out: index directory (created; an existing index there is replaced at commit).
    bound: a bound model (`load_trained(workdir)` or `encode.bind(model, params)`).
    points / images: a folder, walked recursively; ids are posix paths relative to it.
    dataset, data_dir, modality: `NAME[/CONFIG]:SPLIT` of a prepared dataset and which
      tower; each object as the evaluator sees it.
    workdir: recorded in the manifest so `add` / `search` can load the model again.
    log: stream for progress and per-file reports (None: silent).
  Returns:
    the summary. Raises `ValueError` if no file could be indexed (nothing is committed).
  """
  out = os.path.abspath(os.path.expanduser(out))
  total, items, ignored, source, modality, _ = _source_items(
      bound, modality, points, images, dataset, data_dir, workers, eval_view)
  created = _prepare_out_dir(out)
  writer = None
  try:
    with index_lib.writer_lock(out):
      index_lib.collect_garbage(out, index_lib.read_manifest(out))
      encoder = Encoder(bound, batch_size, mesh)
      writer = index_lib.SegmentWriter(out, -(-bound.bits // 8))
      failed = []
      _write_items(writer, encoder, modality, items, total, log, progress_every, failed)
      if writer.count == 0:
        raise ValueError(f"no file could be indexed ({len(failed)} failed, {len(ignored)} "
                         f"ignored); nothing written to {out}")
      record = writer.finish(source, ignored=len(ignored))
      manifest = index_lib.new_manifest(
          modality, bound.bits, index_lib.fingerprint_of(bound),
          {"workdir": os.path.abspath(workdir) if workdir else None,
           "num_points": bound.num_points, "image_size": bound.image_size})
      manifest["segments"] = [record]
      manifest = index_lib.commit(out, manifest)
  except BaseException:
    if writer is not None:
      writer.abort()
    if created:
      shutil.rmtree(out, ignore_errors=True)
    raise
  return BuildSummary(out, modality, record["count"], manifest["count"], failed, ignored)


def add_to_index(path: str, bound, *, points: str | None = None, images: str | None = None,
                 id_prefix: str = "", batch_size: int = 256, mesh=None,
                 workers: int | None = None, log=sys.stderr,
                 progress_every: int = 10) -> BuildSummary:
  """Append one folder to an existing index as a new segment (committed atomically).

  The model must be the one that built the index (fingerprint), the folder of the index's
  modality, and the new ids (`id_prefix` + relative path) new to the index.
  """
  path = os.path.abspath(os.path.expanduser(path))
  index_lib.HashIndex.open(path)  # a clear error when it is not an index
  writer = None
  with index_lib.writer_lock(path):
    try:
      idx = index_lib.HashIndex.open(path)  # re-read under the lock
      idx.check_model(bound)
      folder_modality = "points" if points else "images"
      if folder_modality != idx.modality:
        raise ValueError(f"{path} is an index of {idx.modality}; cannot add {folder_modality}")
      total, items, ignored, source, modality, ids = _source_items(
          bound, None, points, images, None, None, workers, 0)
      _check_new_ids(idx, [id_prefix + i for i in ids])
      encoder = Encoder(bound, batch_size, mesh)
      writer = index_lib.SegmentWriter(path, idx.code_bytes)
      failed = []
      _write_items(writer, encoder, modality, items, total, log, progress_every, failed,
                   id_prefix)
      if writer.count == 0:
        writer.abort()
        return BuildSummary(path, modality, 0, idx.count, failed, ignored)
      record = writer.finish(dict(source, id_prefix=id_prefix), ignored=len(ignored))
      manifest = dict(idx.manifest, segments=idx.manifest["segments"] + [record])
      manifest = index_lib.commit(path, manifest)
    except BaseException:
      if writer is not None:
        writer.abort()
      raise
  return BuildSummary(path, modality, record["count"], manifest["count"], failed, ignored)


def _check_new_ids(idx: index_lib.HashIndex, ids: list[str]):
  """Raise `ValueError` naming (up to 5) of `ids` already in the index."""
  clashes = idx.existing_ids(ids)
  if clashes:
    raise ValueError(f"{len(clashes)} id(s) already in {idx.path}: {clashes[:5]}; "
                     "pass id_prefix (--prefix) to make the new ids distinct")

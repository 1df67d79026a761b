"""Host-local batches (NumPy only; pure functions of their arguments).

Sources are random-access (`len`, `[i]`): a TFDS builder split read through
`as_data_source()` (ArrayRecord, no TensorFlow) or any sequence of examples in the project's
format {"points": float32 [P, 3], "images": uint8 [V, H, W, 3], "label": int, ...}.
Example `j` (global row) of train step `s` is augmented with `default_rng([seed, 1, s, j])`,
independent of the number of hosts and of prefetching. Eval batches are padded at the end
with wrapped-around copies marked `valid=False`, `index=-1`, `label=-1`, so every object of
the split is encoded exactly once.
"""
from __future__ import annotations

import numpy as np

from cmah_jax.input.order import check_seed, global_batch_indices, host_rows
from cmah_jax.input.spec import InputSpec, check_spec
from cmah_jax.input.transforms import (augment_example_with_view, augment_second_view,
                                       eval_example)


def as_source(source_or_builder, split: str | None = None):
  """A random-access source (`len`, `[i]`) for a builder split, or `source` itself."""
  if hasattr(source_or_builder, "as_data_source"):
    if split is None:
      raise ValueError("A split name is required to read from a builder.")
    try:
      return source_or_builder.as_data_source(split=split)
    except (KeyError, ValueError) as e:
      raise ValueError(f"Cannot read split {split!r} of {source_or_builder.name!r} in "
                       f"{source_or_builder.data_dir}: {e}. Prepare it first with "
                       "`python -m cmah_jax.datasets.prepare`.") from e
  return source_or_builder


class SubsetSource:
  """The records `indices` of `source`, renumbered 0..len-1 (random access)."""

  def __init__(self, source, indices):
    self.source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]

  def __getitems__(self, ids):
    return _read(self.source, self.indices[np.asarray(ids, np.int64)])


class ConcatSource:
  """The records of `sources` one after another, numbered 0..len-1 (random access)."""

  def __init__(self, *sources):
    if not sources:
      raise ValueError("ConcatSource needs at least one source")
    self.sources = sources
    self.starts = np.cumsum([0] + [len(s) for s in sources])

  def __len__(self) -> int:
    return int(self.starts[-1])

  def _locate(self, i: int) -> tuple[int, int]:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"ConcatSource: record {i} of {len(self)}")
    part = int(np.searchsorted(self.starts, i, side="right")) - 1
    return part, i - int(self.starts[part])

  def __getitem__(self, i):
    part, j = self._locate(i)
    return self.sources[part][j]

  def split_index(self, i: int) -> int:
    """Record `i`'s index within its own part (its split): what keys its fixed eval point
    subset (`eval_subset_index`), so an object is evaluated as it is in its split."""
    part, j = self._locate(i)
    return eval_subset_index(self.sources[part], j)

  def __getitems__(self, ids):
    """Records `ids` in their order, each part read in one call."""
    located = [self._locate(i) for i in ids]
    out = [None] * len(located)
    for part in sorted({p for p, _ in located}):
      slots = [k for k, (p, _) in enumerate(located) if p == part]
      for k, record in zip(slots, _read(self.sources[part],
                                        np.array([located[k][1] for k in slots]))):
        out[k] = record
    return out


def eval_subset_index(source, i: int) -> int:
  """The index that keys record `i`'s fixed eval point subset (`eval_example`): its index
  within its split, also when `source` joins splits (`ConcatSource`). A `SubsetSource`
  (the validation carve) numbers its own records, as every carve run was evaluated."""
  return int(source.split_index(i)) if hasattr(source, "split_index") else int(i)


def num_examples(builder, split: str) -> int:
  """Number of examples in `split` of a prepared builder (or len of a source)."""
  if hasattr(builder, "info"):
    return int(builder.info.splits[split].num_examples)
  return len(builder)


def _read(source, indices: np.ndarray) -> list:
  indices = [int(i) for i in indices]
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(indices))
  return [source[i] for i in indices]


def train_local_batch(source, step: int, spec: InputSpec, seed: int, process_index: int = 0,
                      process_count: int = 1, rows: slice | None = None) -> dict:
  """This host's part of the global train batch of `step`.

  Args:
    source: random-access examples (e.g. `builder.as_data_source(split="train")`).
    rows: global rows to produce; default `host_rows(batch_size, process_index, count)`.
  Returns:
    {"points": float32 [b, N, 3], "images": uint8 [b, S, S, 3], "label": int32 [b],
    "index": int32 [b] (record index in `source`)} with b = batch_size / process_count;
    with `spec.second_view` also "images_second": uint8 [b, S, S, 3], another view of each
    object drawn from `default_rng([seed, 2, step, j])` (`augment_second_view`).
  """
  spec = check_spec(spec)
  seed = check_seed(seed)
  if rows is None:
    rows = host_rows(spec.batch_size, process_index, process_count)
  indices = global_batch_indices(seed, step, len(source), spec.batch_size)[rows]
  examples = _read(source, indices)
  points, images, labels, second = [], [], [], []
  for j, ex in zip(range(rows.start, rows.stop), examples):
    p, im, view = augment_example_with_view(
        ex, np.random.default_rng([seed, 1, int(step), j]), spec)
    points.append(p)
    images.append(im)
    labels.append(int(ex["label"]))
    if spec.second_view:
      rng = np.random.default_rng([seed, 2, int(step), j])
      second.append(augment_second_view(ex, view, rng, spec))
  batch = {"points": np.stack(points), "images": np.stack(images),
           "label": np.asarray(labels, np.int32), "index": np.asarray(indices, np.int32)}
  if spec.second_view:
    batch["images_second"] = np.stack(second)
  return batch


def num_eval_batches(n: int, batch_size: int) -> int:
  return -(-n // batch_size)


def eval_local_batch(source, batch_index: int, spec: InputSpec, process_index: int = 0,
                     process_count: int = 1, rows: slice | None = None) -> dict:
  """This host's part of eval batch `batch_index` (global rows b*B ... (b+1)*B - 1).

  Returns {"points" float32 [b, N, 3], "images" uint8 [b, S, S, 3], "label" int32 [b],
  "valid" bool [b], "index" int32 [b]}; padding rows have valid False, index and label -1.
  """
  spec = check_spec(spec)
  bs = spec.eval_batch_size
  if rows is None:
    rows = host_rows(bs, process_index, process_count, "input.eval_batch_size")
  n = len(source)
  pos = batch_index * bs + np.arange(rows.start, rows.stop)
  valid = pos < n
  examples = _read(source, pos % n)
  points, images = [], []
  for p, ex in zip(pos, examples):
    pt, im = eval_example(ex, eval_subset_index(source, int(p % n)), spec)
    points.append(pt)
    images.append(im)
  labels = np.asarray([int(ex["label"]) for ex in examples], np.int32)
  return {"points": np.stack(points), "images": np.stack(images),
          "label": np.where(valid, labels, -1).astype(np.int32), "valid": valid,
          "index": np.where(valid, pos, -1).astype(np.int32)}

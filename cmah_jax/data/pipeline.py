"""Input pipeline for every dataset: seeded, per-host sharded, augmented, prefetched batches.

Reads any TFDS builder split through `as_data_source()` (ArrayRecord, random access, no
TensorFlow) or any sequence of examples in the project's format
  {"points": float32 [P, 3], "images": uint8 [V, H, W, 3], "label": int, "object_id": str}.

Train order. The global batch of step `s` is a pure function of `(seed, s)`: epoch
`e = s // steps_per_epoch` visits the split in the order `permutation(seed, e)` and drops the
remainder, so a run resumed at `start_step` sees exactly the batches it would have seen.
Each host reads only its contiguous rows of the global batch (`host_rows`), and example `j`
(global row) of step `s` is augmented with `default_rng([seed, 1, s, j])`, independent of
the number of hosts and of prefetching.

Train augmentation, in this order of random draws per example:
  view ~ U{0..V'-1} (V' = input.num_train_views or V)                          [paper]
  point subset: N = input.num_points of the P stored points, without replacement
    (all points in stored order and no draw when P == N; an error when P < N)   [Point-MAE]
  per-axis scale ~ U[input.point_scale], translate ~ U[+-input.point_translate]  [Point-MAE]
  horizontal flip with probability 1/2 (input.hflip)                            [ours]
  colour jitter of strength s = input.color_jitter: brightness, contrast and saturation
    factors ~ U[max(0, 1-s), 1+s], applied in that fixed order                  [ours]
Images are resized to input.image_size when the stored size differs: block-mean (area)
down-sampling or nearest up-sampling by an integer factor; other ratios are an error.

Host batches hold uint8 images; after assembly with `jax.make_array_from_process_local_data`
on `NamedSharding(mesh, P("data"))` the images are normalised on device with
`cmah_jax.ops.image.normalize_images` (4x less host-to-device traffic than float32).

Eval: fixed view input.eval_view, no augmentation, a fixed per-object point subset; the
last batch is padded with wrapped-around copies marked `valid=False`, `index=-1`,
`label=-1`, so every object of the split is encoded exactly once.
"""
from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
from typing import Any, Callable, Iterable, Mapping

import numpy as np

EVAL_SUBSET_SEED = 20240811  # fixed point subset of each eval object [ours]


# ----------------------------------------------------------------------------------------
# Config and sources.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """The `config.input` fields the pipeline reads (defaults and their sources)."""
  batch_size: int = 128  # [Point-MAE]
  eval_batch_size: int = 256  # [ours]
  num_points: int = 1024  # [Point-MAE]
  image_size: int = 64  # [ours] (224 at paper scale [MAE])
  eval_view: int = 0  # [ours]
  point_scale: tuple[float, float] = (2 / 3, 3 / 2)  # [Point-MAE]
  point_translate: float = 0.2  # [Point-MAE]
  hflip: bool = True  # [ours]
  color_jitter: float = 0.4  # [ours]
  prefetch: int = 2  # [ours]
  num_train_views: int | None = None  # None = all views [ours]

  @classmethod
  def from_config(cls, input_config: Any) -> "InputSpec":
    """From a ConfigDict / mapping / InputSpec; missing fields take the defaults above."""
    if isinstance(input_config, InputSpec):
      return input_config
    values = {}
    for field in dataclasses.fields(cls):
      if isinstance(input_config, Mapping):
        found = field.name in input_config
        value = input_config[field.name] if found else None
      else:
        found = hasattr(input_config, field.name)
        value = getattr(input_config, field.name, None)
      if found:
        values[field.name] = value
    if "point_scale" in values:
      values["point_scale"] = tuple(float(x) for x in values["point_scale"])
    spec = cls(**values)
    spec.validate()
    return spec

  def validate(self):
    for key in ("batch_size", "eval_batch_size", "num_points", "image_size"):
      if int(getattr(self, key)) <= 0:
        raise ValueError(f"config.input.{key}={getattr(self, key)} must be positive.")
    lo, hi = self.point_scale
    if not 0 < lo <= hi:
      raise ValueError(f"config.input.point_scale={self.point_scale} needs 0 < low <= high.")
    if self.point_translate < 0 or self.color_jitter < 0 or self.prefetch < 0:
      raise ValueError("config.input.point_translate, color_jitter and prefetch must be >= 0.")


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
                       "`python -m cmah_jax.data.prepare`.") from e
  return source_or_builder


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


def _check_seed(seed: int) -> int:
  if int(seed) < 0:
    raise ValueError(f"config.seed={seed} must be a non-negative integer.")
  return int(seed)


# ----------------------------------------------------------------------------------------
# Order and sharding (pure functions of their arguments).
# ----------------------------------------------------------------------------------------


def steps_per_epoch(num_examples_: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped)."""
  if batch_size > num_examples_:
    raise ValueError(f"config.input.batch_size={batch_size} exceeds the {num_examples_} "
                     "training examples; choose a smaller batch.")
  return num_examples_ // batch_size


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """Order of the split in `epoch`: int64 [n], from `default_rng([seed, 0, epoch])`."""
  return np.random.default_rng([_check_seed(seed), 0, int(epoch)]).permutation(n)


def global_batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
  """Record indices of the global batch of `step`: int64 [batch_size]."""
  spe = steps_per_epoch(n, batch_size)
  epoch, pos = divmod(int(step), spe)
  return epoch_permutation(seed, epoch, n)[pos * batch_size:(pos + 1) * batch_size]


def host_rows(batch_size: int, process_index: int, process_count: int,
              key: str = "input.batch_size") -> slice:
  """Contiguous rows of the global batch read by host `process_index` of `process_count`."""
  if batch_size % process_count:
    raise ValueError(f"config.{key}={batch_size} is not divisible by the {process_count} "
                     "processes (hosts).")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} outside [0, {process_count}).")
  per_host = batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


def _mesh_rows(mesh, batch_size: int, key: str) -> slice:
  """The rows of a `[batch_size, ...]` array sharded on `mesh` held by this process."""
  from cmah_jax import sharding  # pylint: disable=import-outside-toplevel
  sharding.check_batch_divisible(batch_size, mesh, key)
  index_map = sharding.data_sharding(mesh).addressable_devices_indices_map((batch_size,))
  spans = sorted({(s[0].indices(batch_size)[0], s[0].indices(batch_size)[1])
                  for s in index_map.values()})
  start, stop = spans[0][0], spans[-1][1]
  covered = sum(b - a for a, b in spans)
  if covered != stop - start:
    raise ValueError("This process's devices hold non-contiguous rows of the batch; build "
                     "the mesh with cmah_jax.sharding.make_mesh() (devices in process order).")
  return slice(start, stop)


# ----------------------------------------------------------------------------------------
# Per-example transforms (NumPy).
# ----------------------------------------------------------------------------------------


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 [..., H, W, 3] -> uint8 [..., size, size, 3] by an integer factor.

  Block-mean (area) when shrinking, nearest (pixel repeat) when enlarging.
  """
  h, w = images.shape[-3:-1]
  if (h, w) == (size, size):
    return images
  out = images
  for axis, n in ((-3, h), (-2, w)):
    if n % size == 0:
      f = n // size
      shape = out.shape[:axis] + (size, f) + out.shape[axis:][1:]
      out = out.reshape(shape).astype(np.float32).mean(axis=axis)
    elif size % n == 0:
      out = np.repeat(out, size // n, axis=axis)
    else:
      raise ValueError(f"config.input.image_size={size} is not an integer factor or multiple "
                       f"of the stored image size {h}x{w}.")
  return np.clip(np.round(out), 0, 255).astype(np.uint8) if out.dtype != np.uint8 else out


def color_jitter(image: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """Brightness, contrast, saturation (in that order) of float32 [H, W, 3] in [0, 255].

  `factors` float [3] = (b, c, s), 1 = identity: x <- b x; x <- c (x - m) + m with m the
  mean grey level; x <- s (x - g) + g with g the per-pixel grey (ITU-R 601 luma); the result
  is clipped to [0, 255] once at the end. All three steps are affine, so they are fused.
  """
  b, c, s = (float(f) for f in factors)
  grey = image @ np.array([0.299, 0.587, 0.114], np.float32)  # [H, W]
  offset = b * float(grey.mean()) * (1 - c)
  # After brightness+contrast: x1 = b c x + offset, grey1 = b c grey + offset;
  # after saturation: s x1 + (1 - s) grey1.
  out = image * (b * c * s) + ((b * c * (1 - s)) * grey + offset)[..., None]
  return np.clip(out, 0, 255)


def augment_example(example: Mapping, rng: np.random.Generator,
                    spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
  """One training example -> (points float32 [N, 3], image uint8 [S, S, 3]).

  The random draws are always made in the same order, whatever the flags, so turning one
  augmentation off leaves the others unchanged.
  """
  images = np.asarray(example["images"])
  points = np.asarray(example["points"], np.float32)
  num_views = images.shape[0]
  views = num_views if spec.num_train_views is None else int(spec.num_train_views)
  if not 0 < views <= num_views:
    raise ValueError(f"config.input.num_train_views={spec.num_train_views} outside "
                     f"[1, {num_views}] (views stored per object).")
  view = int(rng.integers(views))
  subset = _subset(points.shape[0], spec.num_points, rng)
  scale = rng.uniform(spec.point_scale[0], spec.point_scale[1], 3).astype(np.float32)
  shift = rng.uniform(-spec.point_translate, spec.point_translate, 3).astype(np.float32)
  flip = rng.random() < 0.5
  s = spec.color_jitter
  factors = rng.uniform(max(0.0, 1 - s), 1 + s, 3).astype(np.float32)

  pts = (points if subset is None else points[subset]) * scale + shift
  image = resize_images(images[view], spec.image_size)
  if spec.hflip and flip:
    image = image[:, ::-1]
  if s > 0:
    image = np.round(color_jitter(image.astype(np.float32), factors)).astype(np.uint8)
  return pts.astype(np.float32), np.ascontiguousarray(image)


def _subset(num_stored: int, num_points: int, rng: np.random.Generator):
  """Indices of `num_points` of `num_stored` points without replacement; None (keep all, no
  random draw) when they are equal."""
  if num_stored < num_points:
    raise ValueError(f"config.input.num_points={num_points} exceeds the {num_stored} points "
                     "stored per object.")
  if num_stored == num_points:
    return None
  return rng.choice(num_stored, num_points, replace=False)


def eval_example(example: Mapping, index: int, spec: InputSpec):
  """(points float32 [N, 3], image uint8 [S, S, 3]) of an eval object: fixed view, no
  augmentation, a fixed point subset drawn from `default_rng([EVAL_SUBSET_SEED, index])`."""
  images = np.asarray(example["images"])
  if not 0 <= spec.eval_view < images.shape[0]:
    raise ValueError(f"config.input.eval_view={spec.eval_view} outside [0, {images.shape[0]})"
                     " (views stored per object).")
  points = np.asarray(example["points"], np.float32)
  subset = _subset(points.shape[0], spec.num_points,
                   np.random.default_rng([EVAL_SUBSET_SEED, int(index)]))
  pts = points if subset is None else points[np.sort(subset)]
  return pts, resize_images(images[spec.eval_view], spec.image_size)


# ----------------------------------------------------------------------------------------
# Host-local batches (NumPy only; pure functions of their arguments).
# ----------------------------------------------------------------------------------------


def train_local_batch(source, step: int, input_config, seed: int, process_index: int = 0,
                      process_count: int = 1, rows: slice | None = None) -> dict:
  """This host's part of the global train batch of `step`.

  Args:
    source: random-access examples (e.g. `builder.as_data_source(split="train")`).
    rows: global rows to produce; default `host_rows(batch_size, process_index, count)`.
  Returns:
    {"points": float32 [b, N, 3], "images": uint8 [b, S, S, 3], "label": int32 [b]} with
    b = batch_size / process_count.
  """
  spec = InputSpec.from_config(input_config)
  seed = _check_seed(seed)
  if rows is None:
    rows = host_rows(spec.batch_size, process_index, process_count)
  indices = global_batch_indices(seed, step, len(source), spec.batch_size)[rows]
  examples = _read(source, indices)
  points, images, labels = [], [], []
  for j, ex in zip(range(rows.start, rows.stop), examples):
    p, im = augment_example(ex, np.random.default_rng([seed, 1, int(step), j]), spec)
    points.append(p)
    images.append(im)
    labels.append(int(ex["label"]))
  return {"points": np.stack(points), "images": np.stack(images),
          "label": np.asarray(labels, np.int32)}


def num_eval_batches(n: int, batch_size: int) -> int:
  return -(-n // batch_size)


def eval_local_batch(source, batch_index: int, input_config, process_index: int = 0,
                     process_count: int = 1, rows: slice | None = None) -> dict:
  """This host's part of eval batch `batch_index` (global rows b*B ... (b+1)*B - 1).

  Returns {"points" float32 [b, N, 3], "images" uint8 [b, S, S, 3], "label" int32 [b],
  "valid" bool [b], "index" int32 [b]}; padding rows have valid False, index and label -1.
  """
  spec = InputSpec.from_config(input_config)
  bs = spec.eval_batch_size
  if rows is None:
    rows = host_rows(bs, process_index, process_count, "input.eval_batch_size")
  n = len(source)
  pos = batch_index * bs + np.arange(rows.start, rows.stop)
  valid = pos < n
  examples = _read(source, pos % n)
  points, images = [], []
  for p, ex in zip(pos, examples):
    pt, im = eval_example(ex, int(p % n), spec)
    points.append(pt)
    images.append(im)
  labels = np.asarray([int(ex["label"]) for ex in examples], np.int32)
  return {"points": np.stack(points), "images": np.stack(images),
          "label": np.where(valid, labels, -1).astype(np.int32), "valid": valid,
          "index": np.where(valid, pos, -1).astype(np.int32)}


# ----------------------------------------------------------------------------------------
# Background prefetch and device assembly.
# ----------------------------------------------------------------------------------------


class _Failure:

  def __init__(self, exc: BaseException):
    self.exc = exc


_END = object()


class BatchIterator:
  """Iterates `finish(produce(i))` for i in `steps`; `produce` runs `depth` items ahead in
  a thread, `finish` in the consumer's thread.

  `depth=0` computes synchronously. An exception in the worker is re-raised by `next()`.
  Stop the thread with `close()` or by using the iterator as a context manager. Keep JAX
  calls in `finish`: with several processes, JAX computations dispatched from two threads
  could run their cross-process collectives in different orders on different hosts.
  """

  def __init__(self, produce: Callable[[int], Any], steps: Iterable[int], depth: int,
               finish: Callable[[Any], Any] | None = None):
    self._produce = produce
    self._finish = finish or (lambda item: item)
    self._steps = iter(steps)
    self._depth = int(depth)
    self._closed = False
    self._stop = threading.Event()
    self._thread = None
    if self._depth > 0:
      self._queue = queue.Queue(maxsize=self._depth)
      self._thread = threading.Thread(target=self._work, daemon=True,
                                      name="cmah-input-prefetch")
      self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _work(self):
    try:
      for i in self._steps:
        if self._stop.is_set() or not self._put(self._produce(i)):
          return
      self._put(_END)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      self._put(_Failure(e))

  def __iter__(self):
    return self

  def __next__(self):
    if self._closed:
      raise StopIteration
    if self._thread is None:
      try:
        i = next(self._steps)
      except StopIteration:
        self._closed = True
        raise
      return self._finish(self._produce(i))
    item = self._queue.get()
    if item is _END:
      self.close()
      raise StopIteration
    if isinstance(item, _Failure):
      self.close()
      raise item.exc
    return self._finish(item)

  def close(self):
    """Stops the worker thread (waits for the batch in progress) and drops queued batches."""
    self._closed = True
    self._stop.set()
    if self._thread is not None:
      while self._thread.is_alive():
        try:
          self._queue.get(timeout=0.05)
        except queue.Empty:
          pass
      self._thread.join()
      self._thread = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class _Assembler:
  """Host-local NumPy batch -> global jax.Arrays on `NamedSharding(mesh, P("data"))`."""

  def __init__(self, mesh, batch_size: int):
    import jax  # pylint: disable=import-outside-toplevel
    from cmah_jax import sharding  # pylint: disable=import-outside-toplevel
    from cmah_jax.ops.image import normalize_images  # pylint: disable=import-outside-toplevel
    self._jax = jax
    self._sharding = sharding.data_sharding(mesh)
    self._batch_size = batch_size
    self._normalize = jax.jit(normalize_images)

  def __call__(self, local: dict) -> dict:
    out = {}
    for key, value in local.items():
      shape = (self._batch_size,) + value.shape[1:]
      out[key] = self._jax.make_array_from_process_local_data(self._sharding, value, shape)
    out["images"] = self._normalize(out["images"])
    return out


def _resolve_hosts(mesh, batch_size, process_index, process_count, key):
  """Rows of the global batch this host produces, from the mesh or the overrides."""
  if mesh is None:
    pi = 0 if process_index is None else process_index
    pc = 1 if process_count is None else process_count
    return host_rows(batch_size, pi, pc, key)
  import jax  # pylint: disable=import-outside-toplevel
  if process_count is not None and process_count != jax.process_count():
    raise ValueError(f"process_count={process_count} differs from jax.process_count()="
                     f"{jax.process_count()}; simulated hosts need mesh=None (host batches).")
  if process_index is not None and process_index != jax.process_index():
    raise ValueError(f"process_index={process_index} differs from jax.process_index()="
                     f"{jax.process_index()}; simulated hosts need mesh=None (host batches).")
  host_rows(batch_size, jax.process_index(), jax.process_count(), key)  # divisibility
  return _mesh_rows(mesh, batch_size, key)


class TrainPipeline:
  """Infinite iterator over training batches, starting at `start_step`.

  With a `mesh`: global batches of jax.Arrays sharded on `"data"`:
    {"points": float32 [B, N, 3], "images": float32 [B, S, S, 3] (normalised),
     "label": int32 [B]}.
  With `mesh=None`: this host's NumPy batch (`train_local_batch`, uint8 images); the
  `process_index` / `process_count` overrides (default 0 / 1) simulate hosts.

  Attributes: `steps_per_epoch`, `num_examples`, `step` (of the next batch).
  Use as a context manager or call `close()` to stop the prefetch thread.
  """

  def __init__(self, source_or_builder, split: str, input_config, mesh, seed: int,
               start_step: int = 0, process_index: int | None = None,
               process_count: int | None = None):
    self.spec = InputSpec.from_config(input_config)
    self.seed = _check_seed(seed)
    self.source = as_source(source_or_builder, split)
    self.num_examples = len(self.source)
    self.steps_per_epoch = steps_per_epoch(self.num_examples, self.spec.batch_size)
    self.rows = _resolve_hosts(mesh, self.spec.batch_size, process_index, process_count,
                               "input.batch_size")
    self._assemble = None if mesh is None else _Assembler(mesh, self.spec.batch_size)
    self.step = int(start_step)
    self._batches = BatchIterator(self._produce, itertools.count(self.step),
                                  self.spec.prefetch, finish=self._assemble)

  def _produce(self, step: int):
    return train_local_batch(self.source, step, self.spec, self.seed, rows=self.rows)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._batches)
    self.step += 1
    return batch

  def close(self):
    self._batches.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def eval_batches(builder, split: str, input_config, mesh, process_index: int | None = None,
                 process_count: int | None = None) -> BatchIterator:
  """Iterator over the eval batches of `split`, each object exactly once.

  With a `mesh`: global jax.Arrays {"points" float32 [B, N, 3], "images" float32 [B, S, S, 3]
  (normalised), "label" int32 [B], "valid" bool [B], "index" int32 [B]} with
  B = input.eval_batch_size; with `mesh=None`: this host's NumPy batches (uint8 images).
  Padding rows (valid False) carry index -1 and label -1. Close it (or exhaust it, or use
  it as a context manager) to stop the prefetch thread.
  """
  spec = InputSpec.from_config(input_config)
  source = as_source(builder, split)
  rows = _resolve_hosts(mesh, spec.eval_batch_size, process_index, process_count,
                        "input.eval_batch_size")
  assemble = None if mesh is None else _Assembler(mesh, spec.eval_batch_size)

  def produce(b):
    return eval_local_batch(source, b, spec, rows=rows)

  return BatchIterator(produce, range(num_eval_batches(len(source), spec.eval_batch_size)),
                       spec.prefetch, finish=assemble)

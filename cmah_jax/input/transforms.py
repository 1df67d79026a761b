"""Per-example transforms (NumPy): training augmentation and the fixed eval view.

Train augmentation, in this order of random draws per example:
  view ~ U{0..V'-1} (V' = input.num_train_views or V)                          [paper]
  point subset: N = input.num_points of the P stored points, without replacement
    (all points in stored order and no draw when P == N; an error when P < N)   [Point-MAE]
  per-axis scale ~ U[input.point_scale], translate ~ U[+-input.point_translate]  [Point-MAE]
    (input.point_scale_isotropic: the first of the three factors for every axis  [ours])
  horizontal flip with probability 1/2 (input.hflip)                            [ours]
  colour jitter of strength s = input.color_jitter: brightness, contrast and saturation
    factors ~ U[max(0, 1-s), 1+s], applied in that fixed order                  [ours]
  only when input.random_crop_min_scale = m < 1 (drawn last, so the draws above are the
  same with the crop on or off): area fraction ~ U[m, 1], log aspect ratio ~
  U[log 3/4, log 4/3], top-left corner uniform where the box fits; the box is resized
  bilinearly to input.image_size, before flip and jitter [ours, after SimCLR/CLIP]
With input.second_view (set by `config.resolve` when `loss.pairs` has "image_views"), a
second image of each object from a separate stream, so the draws above are unchanged:
  view ~ U over the other training views, flip, jitter factors, then the crop as above
  (when on) [ours, after CMC, Tian et al. ECCV 2020]
Images are resized to input.image_size when the stored size differs: block-mean (area)
down-sampling or nearest up-sampling by an integer factor; other ratios are an error.

Eval: fixed view input.eval_view, no augmentation, a fixed per-object point subset.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from cmah_jax.input.spec import InputSpec

EVAL_SUBSET_SEED = 20240811  # fixed point subset of each eval object [ours]


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


CROP_ASPECT_RATIO = (3 / 4, 4 / 3)  # [SimCLR; torchvision RandomResizedCrop]


def crop_box(rng: np.random.Generator, height: int, width: int, min_scale: float
             ) -> tuple[float, float, float, float]:
  """A random box (top, left, box_height, box_width) in pixels, floats, inside an
  `height x width` image: area fraction ~ U[min_scale, 1], log aspect ~ U[log 3/4, log 4/3];
  a side that would not fit is clipped to the image (so the area may be a little less)."""
  area = rng.uniform(min_scale, 1.0) * height * width
  log_ratio = rng.uniform(np.log(CROP_ASPECT_RATIO[0]), np.log(CROP_ASPECT_RATIO[1]))
  ratio = float(np.exp(log_ratio))                           # width / height
  box_h = min(float(np.sqrt(area / ratio)), float(height))
  box_w = min(float(np.sqrt(area * ratio)), float(width))
  top = rng.uniform(0.0, height - box_h)
  left = rng.uniform(0.0, width - box_w)
  return float(top), float(left), box_h, box_w


def crop_and_resize(image: np.ndarray, box: tuple[float, float, float, float], size: int
                    ) -> np.ndarray:
  """Bilinear resampling of the box (top, left, height, width; pixels, pixel edges at
  integers) of `image` [H, W, C] to `[size, size, C]` float32, sampling at pixel centres
  (half-pixel convention, as PIL's resize with a box when enlarging); samples beyond the
  outermost pixel centres take the edge value."""
  top, left, box_h, box_w = box
  h, w = image.shape[:2]
  def axis(start, length, n):
    coords = start + (np.arange(size, dtype=np.float64) + 0.5) * (length / size) - 0.5
    coords = np.clip(coords, 0.0, n - 1.0)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, (coords - lo).astype(np.float32)
  y0, y1, wy = axis(top, box_h, h)
  x0, x1, wx = axis(left, box_w, w)
  img = image.astype(np.float32)
  rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]   # [size, W, C]
  return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def augment_example(example: Mapping, rng: np.random.Generator,
                    spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
  """One training example -> (points float32 [N, 3], image uint8 [S, S, 3]).

  The random draws are always made in the same order, whatever the flags, so turning one
  augmentation off leaves the others unchanged.
  """
  points, image, _ = augment_example_with_view(example, rng, spec)
  return points, image


def augment_example_with_view(example: Mapping, rng: np.random.Generator, spec: InputSpec
                              ) -> tuple[np.ndarray, np.ndarray, int]:
  """`augment_example`, also returning the drawn view's index (int)."""
  images = np.asarray(example["images"])
  points = np.asarray(example["points"], np.float32)
  views = _train_views(images.shape[0], spec)
  view = int(rng.integers(views))
  subset = _subset(points.shape[0], spec.num_points, rng)
  scale = rng.uniform(spec.point_scale[0], spec.point_scale[1], 3).astype(np.float32)
  if spec.point_scale_isotropic:
    scale = np.full(3, scale[0], np.float32)
  shift = rng.uniform(-spec.point_translate, spec.point_translate, 3).astype(np.float32)
  pts = (points if subset is None else points[subset]) * scale + shift
  return pts.astype(np.float32), _augment_image(images[view], rng, spec), view


def augment_second_view(example: Mapping, first_view: int, rng: np.random.Generator,
                        spec: InputSpec) -> np.ndarray:
  """A second training image of `example`, uint8 [S, S, 3]: a view drawn uniformly from the
  training views other than `first_view`, with its own flip, colour jitter and (when on)
  crop, drawn in that order from `rng` (a stream separate from `augment_example`'s)."""
  images = np.asarray(example["images"])
  views = _train_views(images.shape[0], spec)
  if views < 2:
    raise ValueError(f"config.loss.pairs has 'image_views', which needs two different "
                     f"training views per object; there are {views} (config.input."
                     f"num_train_views={spec.num_train_views}, {images.shape[0]} stored)")
  view = int(rng.integers(views - 1))
  view += view >= first_view               # uniform over the views other than the first
  return _augment_image(images[view], rng, spec)


def _train_views(num_stored: int, spec: InputSpec) -> int:
  """The number of stored views training draws from (`input.num_train_views` or all)."""
  views = num_stored if spec.num_train_views is None else int(spec.num_train_views)
  if not 0 < views <= num_stored:
    raise ValueError(f"config.input.num_train_views={spec.num_train_views} outside "
                     f"[1, {num_stored}] (views stored per object).")
  return views


def _augment_image(stored: np.ndarray, rng: np.random.Generator, spec: InputSpec
                   ) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [S, S, 3]. Draws from `rng`, in this order, whatever the
  flags: the flip, the three jitter factors, then (only when on) the crop box. Applies the
  crop (or the resize), then the flip and the jitter."""
  flip = rng.random() < 0.5
  s = spec.color_jitter
  factors = rng.uniform(max(0.0, 1 - s), 1 + s, 3).astype(np.float32)
  if spec.random_crop_min_scale < 1.0:
    box = crop_box(rng, stored.shape[0], stored.shape[1], float(spec.random_crop_min_scale))
    image = np.clip(np.round(crop_and_resize(stored, box, spec.image_size)), 0, 255
                    ).astype(np.uint8)
  else:
    image = resize_images(stored, spec.image_size)
  if spec.hflip and flip:
    image = image[:, ::-1]
  if s > 0:
    image = np.round(color_jitter(image.astype(np.float32), factors)).astype(np.uint8)
  return np.ascontiguousarray(image)


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

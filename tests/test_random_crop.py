"""The random resized crop of the image (`input.random_crop_min_scale`): bilinear resampling
against PIL, the box's ranges, and the draw order that leaves every other augmentation as
it was."""
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from cmah_jax.input import transforms
from cmah_jax.input.spec import InputSpec

SPEC = InputSpec(batch_size=8, eval_batch_size=8, num_points=64, image_size=32)


def _image(seed, size=32):
  return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_whole_image_at_its_own_size_is_the_identity():
  img = _image(0)
  out = transforms.crop_and_resize(img, (0.0, 0.0, 32.0, 32.0), 32)
  np.testing.assert_array_equal(out, img.astype(np.float32))


@pytest.mark.parametrize("box", [(3.0, 5.0, 20.0, 24.0), (0.0, 0.0, 16.0, 16.0),
                                 (7.25, 2.5, 22.5, 17.75)])
def test_enlarging_matches_pil_bilinear(box):
  img = _image(1)
  top, left, h, w = box
  ref = np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR,
                                               box=(left, top, left + w, top + h)), np.float32)
  got = transforms.crop_and_resize(img, box, 32)
  # PIL works in fixed point on uint8 and rounds: one grey level apart at most.
  assert np.abs(np.round(got) - ref).max() <= 1.0


def test_box_fits_with_area_and_aspect_in_range():
  rng = np.random.default_rng(3)
  areas, ratios = [], []
  for _ in range(2000):
    top, left, h, w = transforms.crop_box(rng, 64, 64, 0.5)
    assert 0 <= top and top + h <= 64 + 1e-9 and 0 <= left and left + w <= 64 + 1e-9
    areas.append(h * w / 64 ** 2)
    ratios.append(w / h)
  areas, ratios = np.array(areas), np.array(ratios)
  assert areas.min() >= 0.5 * (3 / 4) - 1e-9 and areas.max() <= 1 + 1e-9
  assert ratios.min() >= 3 / 4 - 1e-9 and ratios.max() <= 4 / 3 + 1e-9
  # The unclipped boxes (most of them) have area ~ U[0.5, 1]: the mean is near 0.75.
  assert 0.70 < float(np.mean(areas)) < 0.76


def test_crop_is_drawn_last_so_other_draws_do_not_move():
  example = {"images": np.stack([_image(s) for s in range(4)]),
             "points": np.random.default_rng(9).normal(size=(100, 3)).astype(np.float32)}
  spec = replace(SPEC, hflip=False, color_jitter=0.0)
  cropped = replace(spec, random_crop_min_scale=0.5)
  for seed in range(6):
    p0, im0 = transforms.augment_example(example, np.random.default_rng(seed), spec)
    p1, im1 = transforms.augment_example(example, np.random.default_rng(seed), cropped)
    np.testing.assert_array_equal(p0, p1)
    # Reference: replay the documented draws, then the box, on the chosen view.
    rng = np.random.default_rng(seed)
    view = int(rng.integers(4))
    rng.choice(100, 64, replace=False), rng.uniform(size=3), rng.uniform(size=3)
    rng.random(), rng.uniform(size=3)
    np.testing.assert_array_equal(im0, example["images"][view])
    box = transforms.crop_box(rng, 32, 32, 0.5)
    want = np.clip(np.round(transforms.crop_and_resize(example["images"][view], box, 32)),
                   0, 255).astype(np.uint8)
    np.testing.assert_array_equal(im1, want)
    assert not np.array_equal(im0, im1)


def test_bad_scale_names_the_field():
  with pytest.raises(ValueError, match="random_crop_min_scale"):
    replace(SPEC, random_crop_min_scale=0.0).validate()
  with pytest.raises(ValueError, match="random_crop_min_scale"):
    replace(SPEC, random_crop_min_scale=1.5).validate()

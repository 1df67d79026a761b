"""Round 21's second image view (`loss.pairs` with "image_views"): the pipeline draws another
view of each object from its own stream, the model encodes it masked (its visible patches,
beside the first view's masked pass), and L_c adds the image-image InfoNCE between the
first view's full-pass codes and the second view's."""
import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import config as config_lib
from cmah_jax import losses
from cmah_jax.input import transforms
from cmah_jax.input.batches import train_local_batch
from cmah_jax.input.spec import InputSpec
from cmah_jax.models import build, hash_features
from test_losses import _fake_outputs, np_contrastive

SPEC = InputSpec(batch_size=6, eval_batch_size=6, num_points=32, image_size=16)
PAIRS = "full_full,masked_point_full_image,image_views"


def _example(seed, views=5):
  """Views whose pixels all differ, so an output image names the view it came from."""
  rng = np.random.default_rng(seed)
  return {"images": rng.integers(0, 256, (views, 16, 16, 3), dtype=np.uint8),
          "points": rng.normal(size=(40, 3)).astype(np.float32), "label": seed % 3}


def _which_view(example, image):
  """The stored view that `image` is exactly (no flip, jitter or crop), or None."""
  matches = [v for v, stored in enumerate(example["images"])
             if np.array_equal(stored, image)]
  assert len(matches) <= 1
  return matches[0] if matches else None


def test_second_view_is_another_stored_view_uniformly():
  """Without flip and jitter the second image is exactly one of the stored views, never
  the first, and each of the other V - 1 views comes up about equally often (4 views from
  4,000 draws: 1,000 each, 5 binomial std ~ 137)."""
  example = _example(0)
  plain = dataclasses.replace(SPEC, hflip=False, color_jitter=0.0, num_train_views=5)
  counts = np.zeros((5, 5), int)
  rng = np.random.default_rng(1)
  for draw in range(4000):
    first = draw % 5
    second = _which_view(example, transforms.augment_second_view(example, first, rng, plain))
    assert second is not None and second != first
    counts[first, second] += 1
  assert np.all(np.diag(counts) == 0)
  off = counts[~np.eye(5, dtype=bool)]
  assert off.sum() == 4000 and np.all(np.abs(off - 200) < 5 * np.sqrt(200 * 0.75))
  # `num_train_views=2` leaves exactly one other view.
  two = dataclasses.replace(plain, num_train_views=2)
  for first in (0, 1):
    assert _which_view(example, transforms.augment_second_view(example, first, rng, two)) \
        == 1 - first
  with pytest.raises(ValueError, match="needs two different training views per object; "
                     r"there are 1 \(config.input.num_train_views=1"):
    transforms.augment_second_view(example, 0, rng, dataclasses.replace(plain,
                                                                        num_train_views=1))


def test_second_view_gets_its_own_flip_and_jitter():
  """With flip and jitter on, over many draws some second images are mirrored stored views
  and most are not exact copies of any view (jitter); the image is uint8 [S, S, 3]."""
  example = _example(2)
  rng = np.random.default_rng(3)
  flipped = exact = 0
  for _ in range(200):
    img = transforms.augment_second_view(example, 0, rng, SPEC)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    exact += _which_view(example, img) is not None
    plain = transforms.augment_second_view(
        example, 0, np.random.default_rng(rng.integers(1 << 30)),
        dataclasses.replace(SPEC, color_jitter=0.0))
    flipped += _which_view(example, plain[:, ::-1]) is not None
  assert exact < 20 and 60 < flipped < 140
  # By hand, in the documented order from the same seed: the view among the others, the
  # flip, the three jitter factors (the stored size is the model's: no resize, no crop).
  for seed in range(8):
    first = seed % 5
    hand = np.random.default_rng(seed)
    view = int(hand.integers(4))
    view += view >= first
    flip = hand.random() < 0.5
    factors = hand.uniform(0.6, 1.4, 3).astype(np.float32)
    want = example["images"][view][:, ::-1] if flip else example["images"][view]
    want = np.round(transforms.color_jitter(want.astype(np.float32), factors)).astype(np.uint8)
    got = transforms.augment_second_view(example, first, np.random.default_rng(seed), SPEC)
    np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}")


def test_train_batch_adds_the_second_view_and_leaves_the_first_as_it_was():
  """`second_view=True`: points, images, labels and indices are byte-identical to the
  batch without it; "images_second" row j is a different stored view of row j's object."""
  source = [_example(s) for s in range(10)]
  plain = dataclasses.replace(SPEC, hflip=False, color_jitter=0.0)
  for spec in (SPEC, plain):
    one = train_local_batch(source, 3, spec, seed=7)
    two = train_local_batch(source, 3, dataclasses.replace(spec, second_view=True), seed=7)
    assert "images_second" not in one
    assert set(two) == set(one) | {"images_second"}
    for key in one:
      np.testing.assert_array_equal(two[key], one[key], err_msg=key)
    assert two["images_second"].shape == one["images"].shape
    assert two["images_second"].dtype == np.uint8
  for j, index in enumerate(two["index"]):
    first = _which_view(source[index], two["images"][j])
    second = _which_view(source[index], two["images_second"][j])
    assert None not in (first, second) and first != second


def test_model_encodes_the_second_view_masked():
  """`second_images`: "image/h_second" is exactly the one-view call's masked image code
  of those images under the documented key `fold_in(mask_key, 2)`; every other output is
  as without them (tiny has no dropout, so passes are deterministic)."""
  model, variables = build("tiny", 16, jax.random.key(0))
  rng = np.random.default_rng(0)
  s, n = model.config.image_size, model.config.num_points
  images, second = (jnp.asarray(rng.normal(size=(4, s, s, 3)), jnp.float32) for _ in "ab")
  points = jnp.asarray(rng.normal(size=(4, n, 3)), jnp.float32)
  mask_key, dropout = jax.random.key(3), {"dropout": jax.random.key(4)}
  call = dict(train=True, rngs=dropout)
  out = model.apply(variables, images, points, second_images=second, mask_key=mask_key,
                    **call)
  ref = model.apply(variables, images, points, mask_key=mask_key, **call)
  assert set(out) == set(ref) | {"image/h_second"}
  for key in ref:
    np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
  masked_second = model.apply(variables, second, points, mask_key=jax.random.fold_in(
      mask_key, 2), **call)["image/h_masked"]
  np.testing.assert_allclose(out["image/h_second"], masked_second, rtol=1e-5, atol=1e-6)
  full_second = hash_features(model, variables, images=second)["image/h"]
  assert not np.allclose(out["image/h_second"], full_second, atol=1e-3)  # masked, not full
  with pytest.raises(ValueError, match="second_images is for training"):
    model.apply(variables, images, points, train=False, second_images=second)
  with pytest.raises(ValueError, match="second_images batch 3 differs from images batch 4"):
    model.apply(variables, images, points, second_images=second[:3], mask_key=mask_key,
                **call)


def test_image_views_pair_adds_the_image_image_info_nce():
  """L_c with the pair = the other pairs + InfoNCE(image/h, image/h_second) (NumPy
  reference); without "image/h_second" the loss names the missing key."""
  out = _fake_outputs(seed=11)
  out["image/h_second"] = jnp.asarray(np.random.default_rng(12).normal(size=(4, 8)),
                                      jnp.float32)
  np_out = {k: np.asarray(v, np.float64) for k, v in out.items()}
  tau = 0.2
  want = (np_contrastive(np_out["point/h"], np_out["image/h"], tau)
          + np_contrastive(np_out["point/h_masked"], np_out["image/h"], tau)
          + np_contrastive(np_out["image/h"], np_out["image/h_second"], tau))
  spec = losses.LossSpec(temperature=tau, pairs=PAIRS, lambda_r=0.0)
  _, terms = losses.cmah_loss(out, spec)
  np.testing.assert_allclose(terms["loss/contrastive"], want, rtol=1e-5)
  del out["image/h_second"]
  with pytest.raises(KeyError, match="image/h_second"):
    losses.cmah_loss(out, spec)


def _config(pairs=None, **input_changes):
  c = importlib.import_module("configs.default").get_config()
  if pairs is not None:
    c.loss.pairs = pairs
  for key, value in input_changes.items():
    c.input[key] = value
  return c


def test_the_pair_switches_the_second_view_on_and_only_it():
  """`input.second_view` follows `loss.pairs` (a new fingerprint with the pair, today's
  without it); set by hand it is refused, naming the key."""
  default = config_lib.resolve(_config())
  with_pair = config_lib.resolve(_config(PAIRS))
  assert not default.input.second_view and with_pair.input.second_view
  assert "second_view" not in default.fingerprint_dict()["input"]
  assert with_pair.fingerprint() != default.fingerprint()
  assert dataclasses.replace(with_pair.input, second_view=False) == default.input
  with pytest.raises(ValueError, match="config.input.second_view is derived from "
                     "config.loss.pairs"):
    config_lib.resolve(_config(second_view=True))
  # A resolved config round-trips through a run's config.json.
  assert config_lib.ExperimentConfig.from_dict(with_pair.to_dict()) == with_pair


def test_train_step_reads_the_second_view(tmp_path):
  """A runlocal run with the pair reads the pipeline's second view: at step 0 (same params,
  same first views, same masks) its L_c exceeds the run without the pair by an
  image-image InfoNCE over the batch of 8 (near log 8 at initialisation), and its L_3D is
  the same."""
  from cmah_jax import train  # pylint: disable=import-outside-toplevel
  from cmah_jax.metric_writer import read_jsonl  # pylint: disable=import-outside-toplevel
  from tiny_runs import tiny_config  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path / "data")
  logged = {}
  for name, pairs in (("plain", None), ("views", PAIRS)):
    cfg = tiny_config(data_dir, steps=2)
    if pairs:
      cfg.loss.pairs = pairs
    train.train_and_evaluate(cfg, str(tmp_path / name))
    rows = [r for r in read_jsonl(str(tmp_path / name / "metrics.jsonl"))
            if "loss/contrastive" in r]
    logged[name] = rows[0]
  extra = logged["views"]["loss/contrastive"] - logged["plain"]["loss/contrastive"]
  assert 0.5 * np.log(8) < extra < 1.5 * np.log(8)
  np.testing.assert_allclose(logged["views"]["loss/point_recon"],
                             logged["plain"]["loss/point_recon"], rtol=1e-5)
  # The band above holds at initialisation whatever the second images are; the step must
  # read the batch's own: the same run with them put in reverse batch order logs another
  # L_c at step 0 (a step that read the first view twice, or no second view, would not).
  from cmah_jax.input import pipeline  # pylint: disable=import-outside-toplevel
  real_next = pipeline.TrainPipeline.__next__

  def reversed_second(self):
    batch = real_next(self)
    return dict(batch, images_second=batch["images_second"][::-1])

  with pytest.MonkeyPatch.context() as m:
    m.setattr(pipeline.TrainPipeline, "__next__", reversed_second)
    cfg = tiny_config(data_dir, steps=2)
    cfg.loss.pairs = PAIRS
    train.train_and_evaluate(cfg, str(tmp_path / "reversed"))
  rows = [r for r in read_jsonl(str(tmp_path / "reversed" / "metrics.jsonl"))
          if "loss/contrastive" in r]
  assert abs(rows[0]["loss/contrastive"] - logged["views"]["loss/contrastive"]) > 1e-3
  np.testing.assert_allclose(rows[0]["loss/point_recon"], logged["views"]["loss/point_recon"],
                             rtol=1e-5)

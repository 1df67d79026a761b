"""`benchmarks/bench_model.py --variants`: how a variant's spec is read (no model is built)."""
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_model():
  spec = importlib.util.spec_from_file_location(
      "bench_model", os.path.join(REPO, "benchmarks", "bench_model.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bench_model = _bench_model()
DEFAULT_PAIRS = ("full_full", "masked_point_full_image")  # LossSpec's default, typed here


def test_default_pairs_are_the_ones_the_specs_below_edit():
  assert bench_model.LOSS_SPEC.pairs == DEFAULT_PAIRS


@pytest.mark.parametrize("spec, pairs", [
    ("small", DEFAULT_PAIRS),
    ("small:+image_views", DEFAULT_PAIRS + ("image_views",)),
    ("small:-masked_point_full_image", ("full_full",)),
    ("small:-masked_point_full_image:+full_masked", ("full_full", "full_masked")),
])
def test_pairs_are_added_and_removed_in_order(spec, pairs):
  name, overrides, loss_spec = bench_model.parse_variant(spec)
  assert (name, overrides, loss_spec.pairs) == ("small", {}, pairs)


def test_overrides_are_python_literals():
  name, overrides, _ = bench_model.parse_variant(
      "base:masked_views=2:image_stem_dims=(32,):point_mask_ratio=0.4")
  assert name == "base"
  assert overrides == {"masked_views": 2, "image_stem_dims": (32,), "point_mask_ratio": 0.4}
  # A bare word is a string field's value; quoted, the same.
  for value in ("code", "'code'"):
    assert bench_model.parse_variant(f"small:fusion_context={value}")[1] == {
        "fusion_context": "code"}


@pytest.mark.parametrize("spec, named", [
    ("small:-image_views", "'image_views'"),         # not among the pairs
    ("small:-full_full:-masked_point_full_image", "small:-full_full"),  # no pair left
    ("small:masked_views", "'masked_views'"),       # not FIELD=VALUE
])
def test_a_bad_spec_exits_naming_it(spec, named):
  with pytest.raises(SystemExit, match=named):
    bench_model.parse_variant(spec)

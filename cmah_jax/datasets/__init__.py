"""Offline datasets of cmah_jax: the registry of TFDS builders, one per dataset.

Every builder yields examples of one format (`features.make_features`)
  {"points": float32 [P, 3], "images": uint8 [V, H, W, 3], "label": int64, "object_id": bytes}
with class names in `info.metadata["class_names"]`, is prepared once (`prepare`) and is
read through `as_data_source()` (ArrayRecord, no TensorFlow).
"""
from __future__ import annotations

import importlib
import os

# name -> "module:BuilderClass"; modules are imported lazily so that a missing optional
# reader (h5py, plyfile) only matters for the dataset that needs it.
_BUILDERS = {
    "synthetic_shapes": "cmah_jax.datasets.synthetic_shapes.builder:SyntheticShapes",
    "shapenet_render": "cmah_jax.datasets.real.shapenet_render:ShapenetRender",
    "modelnet40": "cmah_jax.datasets.real.modelnet40:Modelnet40",
    "shapenet55": "cmah_jax.datasets.real.shapenet55:Shapenet55",
}


def available_datasets() -> list[str]:
  return sorted(_BUILDERS)


def builder_class(name: str):
  """The TFDS builder class registered under `name` (see `available_datasets()`)."""
  if name not in _BUILDERS:
    raise ValueError(
        f"Unknown dataset {name!r} (config.dataset.name); known: {available_datasets()}")
  module_name, cls_name = _BUILDERS[name].split(":")
  return getattr(importlib.import_module(module_name), cls_name)


def get_builder(name: str, data_dir: str, config: str | None = None, **kwargs):
  """The TFDS builder for dataset `name`, rooted at an explicit `data_dir`.

  Args:
    name: a registered dataset name, e.g. "synthetic_shapes".
    data_dir: where prepared data lives (made absolute; never TFDS's default).
    config: builder config name (e.g. "default", "tiny"); None for the builder default.
    **kwargs: passed to the builder constructor.
  """
  if not data_dir:
    raise ValueError("An explicit data_dir is required (config.dataset.data_dir).")
  cls = builder_class(name)
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if config is not None:
    names = [c.name for c in (cls.BUILDER_CONFIGS or [])]
    if names and config not in names:
      raise ValueError(
          f"Unknown config {config!r} for dataset {name!r} (config.dataset.config); "
          f"known: {names}")
    return cls(data_dir=data_dir, config=config, **kwargs)
  return cls(data_dir=data_dir, **kwargs)


def class_names(builder) -> list[str] | None:
  """Class names of `builder` (label = position), or None if it has none.

  Read from `info.metadata["class_names"]`, else from a `ClassLabel` label feature.
  """
  info = builder.info
  names = info.metadata.get("class_names") if info.metadata else None
  if names is None and hasattr(info.features["label"], "names"):
    names = info.features["label"].names
  return list(names) if names is not None else None

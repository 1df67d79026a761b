"""The one example format of every cmah_jax dataset, as TFDS features.

  {"points": float32 [P, 3], "images": uint8 [V, S, S, 3], "label": int64, "object_id": bytes}

Only `Tensor` features, so preparing and reading (ArrayRecord through `as_data_source()`)
need no TensorFlow. Class names are not a feature: builders store them in
`info.metadata["class_names"]` (read back with `cmah_jax.datasets.class_names`).
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

BYTES = tfds.features.Encoding.BYTES
# Real datasets (1.0.0, 2.0.0) store points as a float list; kept so data prepared by them stays
# readable (decoding follows the builder's features, not the files).
FLOAT_LIST = tfds.features.Encoding.NONE


def make_features(num_points: int, num_views: int, image_size: int, *,
                  points_encoding: tfds.features.Encoding = BYTES
                  ) -> tfds.features.FeaturesDict:
  """Features of examples with `num_points` points and `num_views` square views.

  Images are raw bytes, not TFDS's default int64 list: ~10x faster to read [ours].
  `points_encoding`: BYTES (raw bytes) or FLOAT_LIST; both decode to float32 [P, 3].
  """
  return tfds.features.FeaturesDict({
      "points": tfds.features.Tensor(shape=(num_points, 3), dtype=np.float32,
                                     encoding=points_encoding),
      "images": tfds.features.Tensor(shape=(num_views, image_size, image_size, 3),
                                     dtype=np.uint8, encoding=BYTES),
      "label": tfds.features.Tensor(shape=(), dtype=np.int64),
      "object_id": tfds.features.Tensor(shape=(), dtype=np.str_),
  })

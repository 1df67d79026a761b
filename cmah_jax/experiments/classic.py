"""Methods without deep learning, evaluated under the same protocol as a trained run:
random codes (chance) and CCA-ITQ on hand-crafted features [Gong & Lazebnik 2013].

Every object is read as the evaluator reads it (`cmah_jax.input.eval_example`: the fixed
eval view at the model's image size, the fixed subset of the model's number of points), so
the codes describe the same inputs the trained methods see. CCA-ITQ fits on the protocol's
training objects (labels unused), one (view, point cloud) pair per stored view, then
encodes queries and database. Its settings (global HOG normalisation, every view, ridge
1e-3, directions scaled by correlation^2) were chosen on a validation carve of the train
split (`benchmarks/baseline_cca_itq.py --validate`), never on query/database.
"""
from __future__ import annotations

import time

import numpy as np

from cmah_jax import config as config_lib
from cmah_jax.baselines import CcaItq, image_features, point_features, random_codes
from cmah_jax.evaluate import retrieval_metrics
from cmah_jax.input import eval_example, eval_subset_index, resize_images
from cmah_jax.protocol import retrieval_sources

FEATURE_SEED = 0  # pair/triple sampling of the point descriptors [ours]
IMAGE_NORM = "global"  # HOG normalisation, chosen on validation (see the module docstring)


def load_objects(source, spec, all_views: bool = False) -> dict:
  """{"points": float32 [n, N, 3], "images": uint8 [n, S, S, 3], "label": int32 [n]} of
  every record of `source`, as the evaluator sees them; with `all_views`, "images" is
  `[n, V, S, S, 3]` (every stored view, resized the same way)."""
  points, images, labels = [], [], []
  for i in range(len(source)):
    ex = source[i]
    p, im = eval_example(ex, eval_subset_index(source, i), spec)
    if all_views:
      im = np.stack([resize_images(v, spec.image_size) for v in np.asarray(ex["images"])])
    points.append(p)
    images.append(im)
    labels.append(int(ex["label"]))
  return {"points": np.stack(points), "images": np.stack(images),
          "label": np.asarray(labels, np.int32)}


def _features(objs: dict) -> tuple[np.ndarray, np.ndarray]:
  return (image_features(objs["images"], norm=IMAGE_NORM),
          point_features(objs["points"], seed=FEATURE_SEED))


def run_classic(method: str, cfg: config_lib.ExperimentConfig, builder) -> dict:
  """Codes and retrieval metrics of a classic `method` ("random" | "cca_itq").

  Returns:
    the evaluator's result dict (`evaluate.retrieval_metrics`) with "protocol",
    "train_seconds" (fit time) and "steps" = 0.
  """
  bits, seed = cfg.model.bits, cfg.seed
  sources = retrieval_sources(builder, cfg.eval)
  query = load_objects(sources.query, cfg.input)
  database = load_objects(sources.database, cfg.input)
  t0 = time.perf_counter()
  if method == "random":
    rng_q, rng_d = seed * 2 + 1, seed * 2 + 2
    codes = {"query": {"image": random_codes(len(query["label"]), bits, rng_q),
                       "point": random_codes(len(query["label"]), bits, rng_q + 1000)},
             "database": {"image": random_codes(len(database["label"]), bits, rng_d),
                          "point": random_codes(len(database["label"]), bits, rng_d + 1000)}}
  elif method == "cca_itq":
    train = load_objects(sources.train, cfg.input, all_views=True)
    n, v = train["images"].shape[:2]
    img_f = image_features(train["images"].reshape((n * v,) + train["images"].shape[2:]),
                           norm=IMAGE_NORM)
    pts_f = np.repeat(point_features(train["points"], seed=FEATURE_SEED), v, axis=0)
    model = CcaItq().fit(img_f, pts_f, bits=bits, seed=seed)
    codes = {}
    for role, objs in (("query", query), ("database", database)):
      img_f, pts_f = _features(objs)
      codes[role] = {"image": model.encode_images(img_f), "point": model.encode_points(pts_f)}
  else:
    raise ValueError(f"unknown classic method {method!r}; known: ['cca_itq', 'random']")
  fit_seconds = time.perf_counter() - t0
  q = dict(codes["query"], label=query["label"])
  d = dict(codes["database"], label=database["label"])
  res = retrieval_metrics(q, d, ks=cfg.eval.precision_ks, seed=seed,
                          radius=cfg.eval.hamming_radius)
  res.update(protocol=sources.description, train_seconds=fit_seconds, steps=0)
  return res

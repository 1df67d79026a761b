"""Cross-modal retrieval evaluation [UCCH protocol].

Queries come from the `query` split, the database from the `database` split. Each tower
encodes its modality alone (`train=False`: no masking, no dropout), over sharded, padded
batches; every object is encoded exactly once. Then, on the host:
mAP@all for image->point (i2p) and point->image (p2i), precision@k, PR curves, and the mAP
of random codes (chance) for scale.
"""
from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from cmah_jax import metrics
from cmah_jax import sharding as shd
from cmah_jax.data import pipeline

DIRECTIONS = {"i2p": ("image", "point"), "p2i": ("point", "image")}


def _gather(x) -> np.ndarray:
  """A global (possibly multi-host) array as one host NumPy array on every process."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def make_encoder(model, mesh):
  """Jitted `(params, images, points) -> {"image": codes, "point": codes}`, `[B, K]` each,
  sharded on the batch; each tower runs alone (`train=False`)."""

  @functools.partial(jax.jit, out_shardings=shd.data_sharding(mesh))
  def encode(params, images, points):
    out = model.apply({"params": params}, images=images, points=points, train=False)
    return {"image": out["image/code"], "point": out["point/code"]}

  return encode


def encode_split(encoder, params, builder, split: str, input_config, mesh):
  """Codes of both modalities for every object of `split`, in split order.

  Args:
    encoder: from `make_encoder(model, mesh)`.
  Returns:
    dict with "image" and "point" codes `[n, K]` float32 {-1, +1}, and "label" `[n]` int.
  """
  params = jax.device_put(params, shd.replicated(mesh))
  chunks = {"image": [], "point": [], "label": [], "index": [], "valid": []}
  for batch in pipeline.eval_batches(builder, split, input_config, mesh):
    codes = encoder(params, batch["images"], batch["points"])
    for k in ("image", "point"):
      chunks[k].append(_gather(codes[k]))
    for k in ("label", "index", "valid"):
      chunks[k].append(_gather(batch[k]))
  cat = {k: np.concatenate(v) for k, v in chunks.items()}
  valid = cat["valid"].astype(bool)
  order = np.argsort(cat["index"][valid], kind="stable")
  out = {k: cat[k][valid][order] for k in ("image", "point", "label")}
  n = len(out["label"])
  if not np.array_equal(cat["index"][valid][order], np.arange(n)):
    raise RuntimeError(f"eval pipeline of split {split!r} did not cover each object once")
  return out


def retrieval_metrics(query: dict, database: dict, ks=(1, 10, 50, 100), seed: int = 0):
  """Metrics of both directions from encoded splits (see `encode_split`)."""
  bits = query["image"].shape[1]
  res = {"bits": bits, "num_queries": len(query["label"]),
         "num_database": len(database["label"]),
         "map": {}, "precision_at_k": {}, "pr_curve": {}}
  for name, (qm, dm) in DIRECTIONS.items():
    args = (query[qm], database[dm], query["label"], database["label"])
    res["map"][name] = {str(bits): metrics.mean_average_precision(*args)}
    res["precision_at_k"][name] = {
        str(k): v for k, v in metrics.precision_at_k(*args, ks=ks).items()}
    radii, prec, rec = metrics.precision_recall_curve(*args)
    res["pr_curve"][name] = {"radius": radii.tolist(),
                             "precision": [None if np.isnan(p) else float(p) for p in prec],
                             "recall": rec.tolist()}
  rng = np.random.default_rng(seed)
  rand_q = np.where(rng.random(query["image"].shape) < 0.5, -1, 1)
  rand_d = np.where(rng.random(database["point"].shape) < 0.5, -1, 1)
  res["chance_map"] = metrics.mean_average_precision(rand_q, rand_d, query["label"],
                                                     database["label"])
  return res


def evaluate_retrieval(model, params, builder, input_config,
                       config: ml_collections.ConfigDict, mesh):
  """Encode the query and database splits and compute every retrieval metric.

  Returns:
    a JSON-friendly dict (see `retrieval_metrics`) plus "arrays" (host codes and labels of
    both splits, for figures; not meant for JSON).
  """
  encoder = make_encoder(model, mesh)
  query = encode_split(encoder, params, builder, "query", input_config, mesh)
  database = encode_split(encoder, params, builder, "database", input_config, mesh)
  res = retrieval_metrics(query, database, ks=tuple(config.eval.precision_ks),
                          seed=config.seed)
  res["arrays"] = {"query": query, "database": database}
  return res


def flat_metrics(results: dict) -> dict:
  """`{"map/i2p/64": x, ..., "chance_map": x}` scalars for the metrics log."""
  out = {}
  for d, by_bits in results["map"].items():
    for bits, v in by_bits.items():
      out[f"map/{d}/{bits}"] = v
  for d, by_k in results["precision_at_k"].items():
    for k, v in by_k.items():
      out[f"precision_at_{k}/{d}"] = v
  out["chance_map"] = results["chance_map"]
  return out


def summary(results: dict) -> str:
  parts = [f"mAP {d} {b} bits = {v:.4f}" for d, by_bits in results["map"].items()
           for b, v in by_bits.items()]
  return ", ".join(parts) + f" (chance {results['chance_map']:.4f})"

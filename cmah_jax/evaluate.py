"""Cross-modal retrieval evaluation [UCCH protocol]: `RetrievalEvaluator`.

Queries come from the `query` split, the database from `database_split` (default the
held-out `database` split). Each tower encodes its modality alone (`train=False`: no
masking, no dropout), over sharded, padded batches; every object is encoded exactly once.
The encoder is jitted once, in the constructor: periodic evaluations reuse the compiled
program. Batch metadata (label, valid, index) never leaves the host; each process keeps its
own rows, and processes exchange codes and metadata once per split. Then, on the host:
mAP@all for image->point (i2p) and point->image (p2i), precision@k, PR curves, and the mAP
of random codes (chance) for scale.
"""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from cmah_jax import metrics
from cmah_jax import sharding as shd
from cmah_jax.input import InputSpec, eval_batches, local_rows

DIRECTIONS = {"i2p": ("image", "point"), "p2i": ("point", "image")}


def _gather_hosts(x: np.ndarray) -> np.ndarray:
  """Concatenate every process's host rows (in process order); identity on one process."""
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def retrieval_metrics(query: dict, database: dict, ks=(1, 10, 50, 100), seed: int = 0):
  """Metrics of both directions from encoded splits (see `RetrievalEvaluator.encode`)."""
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


class RetrievalEvaluator:
  """Encodes the query and database splits and scores retrieval; built once per run.

  Args:
    model: the `CMAH` module.
    builder: a prepared TFDS builder (or anything `cmah_jax.input.eval_batches` reads).
    spec: the resolved input spec (eval batch size, sizes, eval view).
    mesh: the device mesh; batches are sharded on its `"data"` axis.
    precision_ks: the k of precision@k.
    seed: seeds the chance (random codes) baseline.
    query_split, database_split: split names.

  `trace_count` counts traces of the encoder (1 after any number of evaluations).
  """

  def __init__(self, model, builder, spec: InputSpec, mesh, *, precision_ks=(1, 10, 50, 100),
               seed: int = 0, query_split: str = "query", database_split: str = "database"):
    self.model, self.builder, self.spec, self.mesh = model, builder, spec, mesh
    self.precision_ks = tuple(int(k) for k in precision_ks)
    self.seed = int(seed)
    self.splits = {"query": query_split, "database": database_split}
    self.trace_count = 0
    self._replicated = shd.replicated(mesh)

    def encode(params, images, points):
      self.trace_count += 1  # Python side effect: runs once per trace
      out = model.apply({"params": params}, images=images, points=points, train=False)
      return {"image": out["image/code"], "point": out["point/code"]}

    self._encode = jax.jit(encode, out_shardings=shd.data_sharding(mesh))

  def encode(self, params, split: str) -> dict:
    """Codes of both modalities for every object of `split`, in split order.

    Returns:
      {"image": [n, K] float32 {-1, +1}, "point": [n, K] float32, "label": [n] int32}.
    """
    params = jax.device_put(params, self._replicated)
    chunks = {"image": [], "point": [], "label": [], "index": [], "valid": []}
    for batch in eval_batches(self.builder, split, self.spec, self.mesh):
      codes = self._encode(params, batch["images"], batch["points"])
      for k in ("image", "point"):
        chunks[k].append(local_rows(codes[k]))
      for k in ("label", "index", "valid"):
        chunks[k].append(batch[k])
    cat = {k: _gather_hosts(np.concatenate(v)) for k, v in chunks.items()}
    valid = cat["valid"].astype(bool)
    order = np.argsort(cat["index"][valid], kind="stable")
    out = {k: cat[k][valid][order] for k in ("image", "point", "label")}
    if not np.array_equal(cat["index"][valid][order], np.arange(len(out["label"]))):
      raise RuntimeError(f"eval pipeline of split {split!r} did not cover each object once")
    return out

  def evaluate(self, params) -> dict:
    """Encode both splits and compute every retrieval metric.

    Returns:
      a JSON-friendly dict (see `retrieval_metrics`) plus "arrays" (host codes and labels
      of both splits, for figures; not meant for JSON).
    """
    query = self.encode(params, self.splits["query"])
    database = self.encode(params, self.splits["database"])
    res = retrieval_metrics(query, database, ks=self.precision_ks, seed=self.seed)
    res["arrays"] = {"query": query, "database": database}
    return res

  def run(self, params) -> Iterator[tuple[str, float]]:
    """Yield `(name, value)` scalar metrics (`map/i2p/64`, `precision_at_10/p2i`, ...)."""
    yield from flat_metrics(self.evaluate(params)).items()


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

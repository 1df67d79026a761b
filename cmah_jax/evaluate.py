"""Cross-modal retrieval evaluation [UCCH protocol]: `RetrievalEvaluator`.

Queries and database come from `cmah_jax.protocol.retrieval_sources` (by default the `query`
split against the held-out `database` split). Each tower encodes its modality alone (`train=False`: no
masking, no dropout), over sharded, padded batches; every object is encoded exactly once.
The encoder is jitted once, in the constructor: periodic evaluations reuse the compiled
program. Batch metadata (label, valid, index) never leaves the host; each process keeps its
own rows, and processes exchange codes and metadata once per split. Then, on the host:
mAP@all for image->point (i2p) and point->image (p2i), both with ties broken by database
index and tie-aware (the expectation over orders within tied distances, McSherry & Najork
2008), precision@k, precision within Hamming radius r, PR curves, how the codes use their
bits (`metrics.code_usage`), and the mAP of random codes (chance) for scale. With a
`quantizer.Quantizer` (fitted on the training split's continuous codes by
`fit_quantizer`) the same metrics of the requantised codes `sign((h - mean) R)` are added
under "itq".
"""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from cmah_jax import metrics
from cmah_jax import quantizer as quantizer_lib
from cmah_jax import sharding as shd
from cmah_jax.config import EvalSpec
from cmah_jax.input import InputSpec, eval_batches, local_rows
from cmah_jax.protocol import RetrievalSources, retrieval_sources

DIRECTIONS = {"i2p": ("image", "point"), "p2i": ("point", "image")}


def _gather_hosts(x: np.ndarray) -> np.ndarray:
  """Concatenate every process's host rows (in process order); identity on one process."""
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def retrieval_metrics(query: dict, database: dict, ks=(1, 10, 50, 100), seed: int = 0,
                      radius: int = 2):
  """Metrics of both directions from encoded splits (see `RetrievalEvaluator.encode`)."""
  bits = query["image"].shape[1]
  res = {"bits": bits, "num_queries": len(query["label"]),
         "num_database": len(database["label"]),
         "map": {}, "map_tie_aware": {}, "precision_within_radius": {"radius": radius},
         "precision_at_k": {}, "pr_curve": {}}
  for name, (qm, dm) in DIRECTIONS.items():
    args = (query[qm], database[dm], query["label"], database["label"])
    res["map"][name] = {str(bits): metrics.mean_average_precision(*args)}
    res["map_tie_aware"][name] = {str(bits): metrics.tie_aware_mean_average_precision(*args)}
    res["precision_within_radius"][name] = metrics.precision_within_radius(*args, radius)
    res["precision_at_k"][name] = {
        str(k): v for k, v in metrics.precision_at_k(*args, ks=ks).items()}
    radii, prec, rec = metrics.precision_recall_curve(*args)
    res["pr_curve"][name] = {"radius": radii.tolist(),
                             "precision": [None if np.isnan(p) else float(p) for p in prec],
                             "recall": rec.tolist()}
  res["code_usage"] = {role: {m: metrics.code_usage(codes[m]) for m in ("image", "point")}
                       for role, codes in (("query", query), ("database", database))}
  rng = np.random.default_rng(seed)
  rand_q = np.where(rng.random(query["image"].shape) < 0.5, -1, 1)
  rand_d = np.where(rng.random(database["point"].shape) < 0.5, -1, 1)
  res["chance_map"] = metrics.mean_average_precision(rand_q, rand_d, query["label"],
                                                     database["label"])
  return res


class RetrievalEvaluator:
  """Encodes the queries and the database and scores retrieval; built once per run.

  Args:
    model: the `CMAH` module.
    data: `RetrievalSources` (see `cmah_jax.protocol`), or a prepared builder (then the
      test protocol of `eval_spec`).
    spec: the resolved input spec (eval batch size, sizes, eval view).
    mesh: the device mesh; batches are sharded on its `"data"` axis.
    eval_spec: precision@k's k, the Hamming radius, the protocol.
    seed: seeds the chance (random codes) baseline.
    outputs: `(name, model output key)` pairs that `encode` gathers (default: the codes, as
      "image" and "point", and the continuous codes, as "image/h" and "point/h";
      `evaluate` needs all four).

  `trace_count` counts traces of the encoder (1 after any number of evaluations).
  """

  def __init__(self, model, data, spec: InputSpec, mesh, *,
               eval_spec: EvalSpec = EvalSpec(), seed: int = 0,
               outputs=(("image", "image/code"), ("point", "point/code"),
                        ("image/h", "image/h"), ("point/h", "point/h"))):
    self.model, self.spec, self.mesh, self.eval_spec = model, spec, mesh, eval_spec
    self.sources = (data if isinstance(data, RetrievalSources)
                    else retrieval_sources(data, eval_spec))
    self.seed = int(seed)
    self.trace_count = 0
    self._replicated = shd.replicated(mesh)

    outputs = dict(outputs)

    def encode(params, images, points):
      self.trace_count += 1  # Python side effect: runs once per trace
      out = model.apply({"params": params}, images=images, points=points, train=False)
      return {name: out[key] for name, key in outputs.items()}

    self._encode = jax.jit(encode, out_shardings=shd.data_sharding(mesh))

  def encode(self, params, source) -> dict:
    """Codes of both modalities for every object of `source` ("query", "database", or a
    random-access source), in source order.

    Returns:
      {"image": [n, K] float32 {-1, +1}, "point": [n, K] float32, "label": [n] int32}
      (with other `outputs`, their names in place of "image" and "point").
    """
    params = jax.device_put(params, self._replicated)
    chunks: dict = {"label": [], "index": [], "valid": []}
    name = source if isinstance(source, str) else "source"
    if isinstance(source, str):
      source = {"query": self.sources.query, "database": self.sources.database,
              "train": self.sources.train}[source]
    for batch in eval_batches(source, None, self.spec, self.mesh):
      outputs = self._encode(params, batch["images"], batch["points"])
      for k, v in outputs.items():
        chunks.setdefault(k, []).append(local_rows(v))
      for k in ("label", "index", "valid"):
        chunks[k].append(batch[k])
    cat = {k: _gather_hosts(np.concatenate(v)) for k, v in chunks.items()}
    valid = cat["valid"].astype(bool)
    order = np.argsort(cat["index"][valid], kind="stable")
    out = {k: cat[k][valid][order] for k in cat if k not in ("index", "valid")}
    if not np.array_equal(cat["index"][valid][order], np.arange(len(source))):
      raise RuntimeError(f"eval pipeline of {name!r} did not cover each of its "
                         f"{len(source)} objects once ({int(valid.sum())} rows)")
    return out

  @classmethod
  def for_run(cls, trained, builder=None, **kwargs) -> "RetrievalEvaluator":
    """The evaluator of a loaded run (`inference.load_trained`): its dataset (`builder`, or
    prepared here), protocol, input spec and seed, on a mesh of every device; `kwargs` as
    the constructor's."""
    cfg = trained.config
    if builder is None:
      from cmah_jax.datasets import prepare as prepare_lib  # pylint: disable=import-outside-toplevel (tfds)
      builder = prepare_lib.prepare_on_every_process(cfg.dataset)
    sources = retrieval_sources(builder, cfg.eval)
    return cls(trained.model, sources, cfg.input, shd.make_mesh(None), eval_spec=cfg.eval,
               seed=cfg.seed, **kwargs)

  def fit_quantizer(self, params) -> quantizer_lib.Quantizer:
    """ITQ quantiser (seeded by the run's seed) of the continuous codes of the protocol's
    training objects (the train split, or the validation carve's fitting part); never of
    queries or database."""
    train = self.encode(params, "train")
    return quantizer_lib.fit_quantizer(train["point/h"], train["image/h"], seed=self.seed)

  def evaluate(self, params, quantizer: quantizer_lib.Quantizer | None = None) -> dict:
    """Encode both splits and compute every retrieval metric.

    Returns:
      a JSON-friendly dict (see `retrieval_metrics`) plus "arrays" (host codes and labels
      of both splits, for figures; not meant for JSON); with a `quantizer`, also "itq":
      the metrics of `quantizer.quantize(h)` in place of the network's codes.
    """
    query = self.encode(params, "query")
    database = self.encode(params, "database")
    res = self._score(query, database)
    if quantizer is not None:
      res["itq"] = self._score(quantizer_lib.quantize_split(query, quantizer),
                               quantizer_lib.quantize_split(database, quantizer))
    res["arrays"] = {"query": query, "database": database}
    return res

  def _score(self, query: dict, database: dict) -> dict:
    res = retrieval_metrics(query, database, ks=self.eval_spec.precision_ks, seed=self.seed,
                            radius=self.eval_spec.hamming_radius)
    res["protocol"] = self.sources.description
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
  for d, by_bits in results["map_tie_aware"].items():
    for bits, v in by_bits.items():
      out[f"map_tie_aware/{d}/{bits}"] = v
  radius = results["precision_within_radius"]["radius"]
  for d in DIRECTIONS:
    out[f"precision_within_{radius}/{d}"] = results["precision_within_radius"][d]
  for d, by_k in results["precision_at_k"].items():
    for k, v in by_k.items():
      out[f"precision_at_{k}/{d}"] = v
  out["chance_map"] = results["chance_map"]
  if "itq" in results:
    out.update({f"itq/{k}": v for k, v in flat_metrics(results["itq"]).items()
                if k != "chance_map"})
  return out


def summary(results: dict) -> str:
  parts = [f"mAP {d} {b} bits = {v:.4f}" for d, by_bits in results["map"].items()
           for b, v in by_bits.items()]
  text = ", ".join(parts) + f" (chance {results['chance_map']:.4f})"
  if "itq" in results:
    text += "; ITQ codes: " + ", ".join(
        f"mAP {d} = {v:.4f}" for d, by_bits in results["itq"]["map"].items()
        for v in by_bits.values())
  return text

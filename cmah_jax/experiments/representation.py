"""Where retrieval loses: the binary codes against the continuous codes they come from.

  python -m cmah_jax.experiments.representation --workdir=work/suite/runs/cmah/b64-s0-...

For a trained run, on its own evaluation protocol (query split against its database), mAP@all
(ties by database index) in four directions, image -> point cloud, point cloud -> image,
image -> image and point cloud -> point cloud, ranked two ways:
- `code`: Hamming distance of the +-1 codes (what the run's report scores cross-modally);
- `continuous`: cosine similarity of the continuous codes h = tanh(...) they are the sign of.

`continuous - code` is what binarisation costs; a gap to the supervised bound that the
continuous codes share is a gap in the representation, not in the quantiser; the
within-modality directions say which tower is the weaker. Written to
`<workdir>/representation.json` and printed.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from cmah_jax import metrics

DIRECTIONS = {"i2p": ("image", "point"), "p2i": ("point", "image"),
              "i2i": ("image", "image"), "p2p": ("point", "point")}


def similarity_map(similarity, query_labels, db_labels) -> float:
  """mAP@all of rankings by decreasing similarity, ties broken by database index.

  Queries with no relevant database item are left out (as `metrics.mean_average_precision`).

  Args:
    similarity: `[q, n]` float, larger = closer.
    query_labels: `[q]` int; db_labels: `[n]` int (relevant = same label).
  Returns:
    float in [0, 1]; 0.0 if every query is left out.
  """
  s = np.asarray(similarity, np.float64)
  ql, dl = np.asarray(query_labels), np.asarray(db_labels)
  if s.ndim != 2 or s.shape != (ql.shape[0], dl.shape[0]):
    raise ValueError(f"similarity {s.shape} must be [q, n] = [{ql.shape[0]}, {dl.shape[0]}]")
  order = np.argsort(-s, axis=1, kind="stable")
  rel = (dl[order] == ql[:, None]).astype(np.float64)
  hits = np.cumsum(rel, axis=1)
  num_rel = hits[:, -1]
  ap = np.sum(rel * hits / np.arange(1, s.shape[1] + 1), axis=1)
  keep = num_rel > 0
  return float(np.mean(ap[keep] / num_rel[keep])) if keep.any() else 0.0


def cosine_similarity(a, b) -> np.ndarray:
  """`[q, K]`, `[n, K]` float -> `[q, n]` float64 cosine (a zero row scores 0)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  return a @ b.T


def representation_maps(query: dict, database: dict) -> dict:
  """{direction: {"code": mAP by Hamming distance, "continuous": mAP by cosine of h}}.

  Args:
    query, database: {"image/code", "point/code": [n, K] +-1, "image/h", "point/h": [n, K]
      float, "label": [n] int}.
  """
  out = {}
  for name, (src, dst) in DIRECTIONS.items():
    out[name] = {
        "code": metrics.mean_average_precision(query[f"{src}/code"], database[f"{dst}/code"],
                                               query["label"], database["label"]),
        "continuous": similarity_map(cosine_similarity(query[f"{src}/h"],
                                                       database[f"{dst}/h"]),
                                     query["label"], database["label"])}
  return out


def encode_run(workdir: str) -> tuple[dict, dict, str]:
  """Codes and continuous codes of the run's query and database splits, on its protocol.

  Returns:
    (query, database, protocol description); query/database as `representation_maps` takes.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from cmah_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from cmah_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  from cmah_jax import train  # pylint: disable=import-outside-toplevel
  from cmah_jax.evaluate import RetrievalEvaluator  # pylint: disable=import-outside-toplevel
  from cmah_jax.inference import load_trained  # pylint: disable=import-outside-toplevel
  from cmah_jax.protocol import retrieval_sources  # pylint: disable=import-outside-toplevel

  cfg = config_lib.resolve(train.read_config(workdir))
  trained = load_trained(workdir)
  mesh = shd.make_mesh(None)
  sources = retrieval_sources(train.prepare_dataset(cfg.dataset), cfg.eval)
  evaluator = RetrievalEvaluator(trained.model, sources, cfg.input, mesh, eval_spec=cfg.eval,
                                 seed=cfg.seed)
  model = trained.model

  def encode(params, images, points):
    out = model.apply({"params": params}, images=images, points=points, train=False)
    return {k: out[k] for k in ("image/code", "point/code", "image/h", "point/h")}

  # The evaluator's batching, sharding and ordering, with both outputs of the hash heads.
  evaluator.encode_fn = jax.jit(encode, out_shardings=shd.data_sharding(mesh))
  return (evaluator.encode(trained.params, "query"),
          evaluator.encode(trained.params, "database"), sources.description)


def main(argv):
  del argv
  for workdir in flags.FLAGS.workdir:
    workdir = os.path.abspath(os.path.expanduser(workdir))
    query, database, protocol = encode_run(workdir)
    maps = representation_maps(query, database)
    with open(os.path.join(workdir, "representation.json"), "w") as f:
      json.dump({"protocol": protocol, "map": maps}, f, indent=2)
    print(f"{workdir}\n  {protocol}\n  direction  code   continuous  cost of binarising")
    for name, m in maps.items():
      print(f"  {name:9}  {m['code']:.3f}  {m['continuous']:.3f}       "
            f"{m['continuous'] - m['code']:+.3f}")


if __name__ == "__main__":
  # Defined here, not at import: `gradients` (imported beside this module) owns --workdir.
  flags.DEFINE_list("workdir", None, "Finished (or checkpointed) training runs, comma-separated.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)

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
        "continuous": metrics.similarity_mean_average_precision(
            cosine_similarity(query[f"{src}/h"], database[f"{dst}/h"]),
            query["label"], database["label"])}
  return out


def encode_run(workdir: str) -> tuple[dict, dict, str]:
  """Codes and continuous codes of the run's query and database splits, on its protocol.

  Returns:
    (query, database, protocol description); query/database as `representation_maps` takes.
  """
  from cmah_jax.evaluate import RetrievalEvaluator  # pylint: disable=import-outside-toplevel
  from cmah_jax.inference import load_trained  # pylint: disable=import-outside-toplevel

  trained = load_trained(workdir, codes="sign")
  # The evaluator's batching, sharding and ordering, with both outputs of the hash heads.
  evaluator = RetrievalEvaluator.for_run(
      trained, outputs=[(k, k) for k in ("image/code", "point/code", "image/h", "point/h")])
  return (evaluator.encode(trained.params, "query"),
          evaluator.encode(trained.params, "database"), evaluator.sources.description)


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

"""Exact Hamming k-NN over an on-disk index, chunk by chunk, and file queries.

Order of results: distance ascending, ties by index row ascending (the order codes were
added: a build writes its files in id order, each `add` appends). This equals the first k
columns of a stable argsort of all distances, computed without ever holding all of them
or all codes: the index is read in chunks of `chunk_rows` codes from its memory map, each
chunk's exact top-k comes from `cmah_jax.ops.hashing.hamming_topk` (itself ordered by
(distance, index)), and the partial lists are merged by (distance, row). Any k best of the
whole index are among the k best of their own chunk, so the merge is exact.

Queries are encoded by the tower of their own modality: an image query goes through the
image tower, a point cloud / mesh through the point tower. Against an index of the other
modality that is cross-modal retrieval (what the model is trained for); against an index
of the same modality it is allowed (the codes share one Hamming space) but the model was
not trained for it.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from cmah_jax.ops.hashing import hamming_topk
from cmah_jax.retrieval import readers
from cmah_jax.retrieval.encode import Encoder, pack_faiss
from cmah_jax.retrieval.index import HashIndex

DEFAULT_CHUNK_ROWS = 1 << 22  # 4 Mi codes (32 MiB at 64 bits) per device call [ours]


def merge_topk(dist_a, rows_a, dist_b, rows_b, k: int):
  """Best k of two partial lists per query by (distance, row): `[q, ka]` + `[q, kb]` ->
  `[q, min(k, ka + kb)]` (distances int32, rows int64)."""
  d = np.concatenate([dist_a, dist_b], axis=1)
  r = np.concatenate([rows_a, rows_b], axis=1)
  order = np.lexsort((r, d), axis=-1)[:, :k]
  return np.take_along_axis(d, order, 1), np.take_along_axis(r, order, 1)


def search_codes(index: HashIndex, queries: np.ndarray, k: int,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS):
  """The k nearest index codes of each packed query (exact; order in the module doc).

  Args:
    index: an open index; queries: uint8 [q, code_bytes] in faiss order (`pack_faiss`).
    k: results per query; fewer when the index holds fewer codes.
    chunk_rows: codes per device call (memory knob; the results never depend on it).
  Returns:
    distances int32 [q, min(k, n)], rows int64 [q, min(k, n)].
  """
  queries = np.ascontiguousarray(queries, np.uint8)
  if queries.ndim != 2 or queries.shape[1] != index.code_bytes:
    raise ValueError(f"queries have shape {queries.shape}; the index needs "
                     f"[q, {index.code_bytes}] packed codes ({index.bits} bits)")
  if index.count == 0:
    raise ValueError(f"index {index.path} is empty")
  if k < 1:
    raise ValueError(f"k={k} must be >= 1")
  k = min(int(k), index.count)
  q = queries.shape[0]
  best_d = np.zeros((q, 0), np.int32)
  best_r = np.zeros((q, 0), np.int64)
  qj = jnp.asarray(queries)
  pending = None  # (start, device result): the device works while the host reads ahead
  for start, chunk in index.chunks(chunk_rows):
    res = hamming_topk(qj, jnp.asarray(np.asarray(chunk)), k=min(k, len(chunk)))
    if pending is not None:
      best_d, best_r = _merge_pending(pending, best_d, best_r, k)
    pending = (start, res)
  if pending is not None:
    best_d, best_r = _merge_pending(pending, best_d, best_r, k)
  return best_d, best_r


def _merge_pending(pending, best_d, best_r, k):
  start, (d, i) = pending
  d, i = jax.device_get((d, i))
  return merge_topk(best_d, best_r, np.asarray(d, np.int32),
                    np.asarray(i, np.int64) + start, k)


def encode_files(bound, files: list[str], encoder: Encoder | None = None) -> np.ndarray:
  """Query files -> packed codes uint8 [q, ceil(K / 8)], each by its own modality's tower.

  Raises `readers.BadInput` naming the first unusable file and its reason.
  """
  unknown = [f for f in files if readers.modality_of(f) is None]
  if unknown:  # before any file is read or encoded
    raise readers.BadInput(f"query {unknown[0]}: extension is not one of "
                           f"{', '.join(readers.POINT_EXTS + readers.IMAGE_EXTS)}")
  encoder = encoder or Encoder(bound, batch_size=min(64, max(1, len(files))))
  out = np.zeros((len(files), -(-bound.bits // 8)), np.uint8)
  for modality in readers.MODALITIES:
    pos = [j for j, f in enumerate(files) if readers.modality_of(f) == modality]
    if not pos:
      continue
    xs = []
    for j in pos:
      try:
        xs.append(readers.load_file(files[j], modality, os.path.basename(files[j]),
                                    bound.num_points, bound.image_size))
      except readers.BadInput as e:
        raise readers.BadInput(f"query {files[j]}: {e}") from e
    out[pos] = pack_faiss(encoder.encode(modality, np.stack(xs)))
  return out


def search_files(index: HashIndex, bound, files: list[str], k: int = 10,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, check_model: bool = True,
                 encoder: Encoder | None = None) -> list[dict]:
  """Search with query files; refuses a model other than the index's (fingerprint).

  Returns:
    `[{"query": file, "results": [{"id", "path", "distance"}, ...]}, ...]` in query order,
    results in the order of the module doc.
  """
  if check_model:
    index.check_model(bound)
  codes = encode_files(bound, files, encoder)
  dist, rows = search_codes(index, codes, k, chunk_rows)
  entries = index.entries(rows.reshape(-1))
  out = []
  for j, f in enumerate(files):
    res = [{"id": e["id"], "path": e["path"], "distance": int(d)}
           for e, d in zip(entries[j * rows.shape[1]:(j + 1) * rows.shape[1]], dist[j])]
    out.append({"query": f, "results": res})
  return out


def format_results(results: list[dict], index: HashIndex | None = None) -> str:
  """The ranked table (rank, Hamming distance, id) of each query, as plain text."""
  lines = []
  for r in results:
    kind = readers.modality_of(r["query"])
    head = f"query {r['query']} ({kind}"
    if index is not None:
      head += f" -> index of {index.count:,} {index.modality}, {index.bits} bits"
    lines.append(head + ")")
    lines.append(f"{'rank':>6}  {'distance':>8}  id")
    for rank, e in enumerate(r["results"], 1):
      lines.append(f"{rank:>6}  {e['distance']:>8}  {e['id']}")
  return "\n".join(lines)

"""Retrieval metrics over Hamming rankings (host-side NumPy) [UCCH/DCMH protocol].

Codes are `{-1, +1}` arrays `[n, K]`. The database is ranked for each query by Hamming
distance with a **stable** sort, so ties keep database order. Labels are either class ids
`[n]` (relevant = equal) or multi-hot `[n, C]` (relevant = at least one shared label).
"""
from __future__ import annotations

import numpy as np

_QUERY_CHUNK = 256  # queries per block: bounds memory at [chunk, n_db]


def _as_codes(codes, name: str) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise ValueError(f"{name} must be [n, K] codes in {{-1, +1}}, got shape {codes.shape}")
  return np.where(codes >= 0, 1, -1).astype(np.int32)


def _check(query_codes, db_codes, query_labels, db_labels):
  q = _as_codes(query_codes, "query_codes")
  d = _as_codes(db_codes, "db_codes")
  if q.shape[1] != d.shape[1]:
    raise ValueError(f"code lengths differ: queries {q.shape} vs database {d.shape}")
  ql, dl = np.asarray(query_labels), np.asarray(db_labels)
  if len(ql) != len(q) or len(dl) != len(d):
    raise ValueError(
        f"labels do not match codes: {len(ql)} query labels for {len(q)} codes, "
        f"{len(dl)} database labels for {len(d)} codes")
  if ql.ndim != dl.ndim or ql.ndim not in (1, 2):
    raise ValueError(f"labels must both be [n] or both [n, C], got {ql.shape}, {dl.shape}")
  return q, d, ql, dl


def hamming_distances(query_codes, db_codes) -> np.ndarray:
  """`[q, K]`, `[n, K]` {-1,+1} -> `[q, n]` int32 Hamming distances, `(K - <q, d>) / 2`."""
  q = _as_codes(query_codes, "query_codes")
  d = _as_codes(db_codes, "db_codes")
  return (q.shape[1] - q @ d.T) // 2


def _relevance(ql, dl) -> np.ndarray:
  """`[q, n]` bool: same class (int labels) or any shared label (multi-hot)."""
  if ql.ndim == 1:
    return ql[:, None] == dl[None, :]
  return (ql.astype(np.float32) @ dl.astype(np.float32).T) > 0


def _ranked_relevance(q, d, ql, dl):
  """Yield `(distances_sorted [c, n], relevant_sorted [c, n] bool)` per query block."""
  for s in range(0, len(q), _QUERY_CHUNK):
    dist = hamming_distances(q[s:s + _QUERY_CHUNK], d)
    order = np.argsort(dist, axis=1, kind="stable")
    rel = _relevance(ql[s:s + _QUERY_CHUNK], dl)
    yield np.take_along_axis(dist, order, 1), np.take_along_axis(rel, order, 1)


def mean_average_precision(query_codes, db_codes, query_labels, db_labels,
                           top_k: int | None = None) -> float:
  """mAP@top_k (mAP@all when `top_k` is None).

  AP of a query = mean, over the relevant items within the top k, of the precision at
  their rank. Queries with no relevant item within the top k are left out of the mean
  (as in the DCMH/UCCH evaluation code). Returns 0.0 if every query is left out.

  Args:
    query_codes: `[q, K]` {-1, +1}.
    db_codes: `[n, K]` {-1, +1}.
    query_labels: `[q]` int or `[q, C]` multi-hot.
    db_labels: `[n]` int or `[n, C]` multi-hot.
    top_k: rank cut-off, or None for the whole database.
  """
  q, d, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  k = d.shape[0] if top_k is None else min(int(top_k), d.shape[0])
  aps = []
  for _, rel in _ranked_relevance(q, d, ql, dl):
    rel = rel[:, :k].astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, k + 1)
    num_rel = hits[:, -1]
    ap = np.sum(rel * hits / ranks, axis=1)
    keep = num_rel > 0
    aps.append(ap[keep] / num_rel[keep])
  aps = np.concatenate(aps)
  return float(aps.mean()) if aps.size else 0.0


def precision_at_k(query_codes, db_codes, query_labels, db_labels, ks=(1, 10, 50, 100)):
  """Mean fraction of relevant items among the top k, for each k.

  Returns:
    dict `{k: precision}` (k clipped to the database size).
  """
  q, d, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  ks = [min(int(k), d.shape[0]) for k in ks]
  sums = {k: 0.0 for k in ks}
  for _, rel in _ranked_relevance(q, d, ql, dl):
    for k in ks:
      sums[k] += float(rel[:, :k].mean(axis=1).sum())
  return {k: sums[k] / len(q) for k in ks}


def precision_recall_curve(query_codes, db_codes, query_labels, db_labels):
  """Precision and recall of Hamming-ball retrieval, one point per radius r = 0..K.

  At radius r a query retrieves every database item within distance r. Precision is
  averaged over queries that retrieve at least one item (NaN at a radius where none
  does); recall over queries with at least one relevant item in the database.

  Returns:
    radii `[K + 1]` int, precision `[K + 1]` float64, recall `[K + 1]` float64.
  """
  q, d, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  nbits = q.shape[1]
  radii = np.arange(nbits + 1)
  prec_sum = np.zeros(nbits + 1)
  prec_cnt = np.zeros(nbits + 1)
  rec_sum = np.zeros(nbits + 1)
  rec_cnt = 0
  for s in range(0, len(q), _QUERY_CHUNK):
    dist = hamming_distances(q[s:s + _QUERY_CHUNK], d)  # [c, n]
    rel = _relevance(ql[s:s + _QUERY_CHUNK], dl)
    # Per query, counts of items (and relevant items) at each distance, then cumulative.
    rows = np.repeat(np.arange(len(dist)), dist.shape[1])
    retrieved = np.zeros((len(dist), nbits + 1))
    relevant = np.zeros((len(dist), nbits + 1))
    np.add.at(retrieved, (rows, dist.ravel()), 1)
    np.add.at(relevant, (rows, dist.ravel()), rel.ravel())
    retrieved, relevant = np.cumsum(retrieved, 1), np.cumsum(relevant, 1)
    total_rel = rel.sum(axis=1)
    has = retrieved > 0
    prec_sum += np.where(has, relevant / np.maximum(retrieved, 1), 0).sum(0)
    prec_cnt += has.sum(0)
    ok = total_rel > 0
    rec_sum += (relevant[ok] / total_rel[ok, None]).sum(0)
    rec_cnt += int(ok.sum())
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = np.where(prec_cnt > 0, prec_sum / np.maximum(prec_cnt, 1), np.nan)
  recall = rec_sum / max(rec_cnt, 1)
  return radii, precision, recall

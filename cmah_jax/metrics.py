"""Retrieval metrics over Hamming rankings (host-side NumPy) [UCCH/DCMH protocol].

Codes are `{-1, +1}` arrays `[n, K]`. The database is ranked for each query by Hamming
distance with `cmah_jax.ops.hashing.hamming_topk` (the retrieval path users call), whose
ties keep database order (a stable sort). Labels are either class ids
`[n]` (relevant = equal) or multi-hot `[n, C]` (relevant = at least one shared label).
"""
from __future__ import annotations

import numpy as np

from cmah_jax.ops.hashing import hamming_topk, pack_codes

_QUERY_CHUNK = 256  # queries per block: bounds memory at [chunk, n_db]


def _as_codes(codes, name: str) -> np.ndarray:
  """`[n, K]` codes -> {-1, +1} int32 (`>= 0` is +1, so real-valued codes are signed).
  Raises ValueError on another rank, or on {0, 1} bits, which would all read as +1."""
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise ValueError(f"{name} must be [n, K] codes in {{-1, +1}}, got shape {codes.shape}")
  if codes.size and codes.min() == 0 and np.isin(codes, (0, 1)).all():
    raise ValueError(f"{name} are {{0, 1}} bits; the metrics take {{-1, +1}} codes "
                     "(pass 2 * bits - 1)")
  return np.where(codes >= 0, 1, -1).astype(np.int32)


def _require_both(num_queries: int, num_db: int, given: str) -> None:
  """ValueError naming the empty side when there are no queries or no database items."""
  if not num_queries or not num_db:
    raise ValueError(f"no {'queries' if not num_queries else 'database items'} to score: "
                     f"{given}")


def _check(query_codes, db_codes, query_labels, db_labels):
  q = _as_codes(query_codes, "query_codes")
  d = _as_codes(db_codes, "db_codes")
  if q.shape[1] != d.shape[1]:
    raise ValueError(f"code lengths differ: queries {q.shape} vs database {d.shape}")
  _require_both(len(q), len(d), f"query codes {q.shape}, database codes {d.shape}")
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


def rank_database(query_codes, db_codes, k: int | None = None):
  """The `k` (default all) nearest database codes of each query, by `hamming_topk`.

  Args:
    query_codes: `[q, K]` {-1, +1}; db_codes: `[n, K]` {-1, +1}.
  Returns:
    distances `[q, k]` int32 ascending and indices `[q, k]` int32 (ties: lower index
    first), as NumPy.
  """
  q = _as_codes(query_codes, "query_codes")
  d = _as_codes(db_codes, "db_codes")
  k = d.shape[0] if k is None else min(int(k), d.shape[0])
  dist, idx = hamming_topk(pack_codes(q), pack_codes(d), k=k)
  return np.asarray(dist), np.asarray(idx)


def _ranked_relevance(q, d, ql, dl):
  """Yield `(distances_sorted [c, n], relevant_sorted [c, n] bool)` per query block."""
  packed_db = pack_codes(d)
  for s in range(0, len(q), _QUERY_CHUNK):
    dist, order = hamming_topk(pack_codes(q[s:s + _QUERY_CHUNK]), packed_db, k=len(d))
    order = np.asarray(order)
    rel = _relevance(ql[s:s + _QUERY_CHUNK], dl)
    yield np.asarray(dist), np.take_along_axis(rel, order, 1)


def mean_average_precision(query_codes, db_codes, query_labels, db_labels,
                           top_k: int | None = None) -> float:
  """mAP@top_k (mAP@all when `top_k` is None).

  AP of a query = mean, over the relevant items within the top k, of the precision at
  their rank. Queries with no relevant item within the top k are left out of the mean
  (as HashNet's mAP@k code does; DCMH's and UCCH's `calc_map` instead count a query with
  no relevant item in the whole database as 0, which at mAP@all differs only where such
  a query exists). Returns 0.0 if every query is left out.

  Args:
    query_codes: `[q, K]` {-1, +1}.
    db_codes: `[n, K]` {-1, +1}.
    query_labels: `[q]` int or `[q, C]` multi-hot.
    db_labels: `[n]` int or `[n, C]` multi-hot.
    top_k: rank cut-off (>= 1), or None for the whole database.
  """
  q, d, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  if top_k is not None and int(top_k) < 1:
    raise ValueError(f"top_k must be >= 1 or None (the whole database), got {top_k}")
  k = d.shape[0] if top_k is None else min(int(top_k), d.shape[0])
  aps = np.concatenate([_average_precisions(rel[:, :k])
                        for _, rel in _ranked_relevance(q, d, ql, dl)])
  return float(aps.mean()) if aps.size else 0.0


def _average_precisions(rel) -> np.ndarray:
  """`[c, k]` bool relevance in rank order -> AP `[c']` of the rows with a relevant item."""
  rel = rel.astype(np.float64)
  hits = np.cumsum(rel, axis=1)
  num_rel = hits[:, -1]
  ap = np.sum(rel * hits / np.arange(1, rel.shape[1] + 1), axis=1)
  keep = num_rel > 0
  return ap[keep] / num_rel[keep]


def similarity_mean_average_precision(similarity, query_labels, db_labels) -> float:
  """mAP@all of rankings by decreasing real-valued similarity (e.g. the cosine of
  continuous codes), ties broken by database index; queries with no relevant item are left
  out, as in `mean_average_precision`, which this equals on `similarity = q @ d.T` of +-1
  codes.

  Args:
    similarity: `[q, n]` float, larger = closer.
    query_labels: `[q]` int or `[q, C]` multi-hot; db_labels: `[n]` or `[n, C]`.
  Returns:
    float in [0, 1]; 0.0 if every query is left out.
  """
  s = np.asarray(similarity, np.float64)
  ql, dl = np.asarray(query_labels), np.asarray(db_labels)
  if s.ndim != 2 or s.shape != (len(ql), len(dl)):
    raise ValueError(f"similarity {s.shape} must be [q, n] = [{len(ql)}, {len(dl)}]")
  _require_both(len(ql), len(dl), f"similarity {s.shape}")
  aps = []
  for start in range(0, len(ql), _QUERY_CHUNK):
    block = s[start:start + _QUERY_CHUNK]
    order = np.argsort(-block, axis=1, kind="stable")
    rel = np.take_along_axis(_relevance(ql[start:start + _QUERY_CHUNK], dl), order, 1)
    aps.append(_average_precisions(rel))
  aps = np.concatenate(aps)
  return float(aps.mean()) if aps.size else 0.0


def precision_at_k(query_codes, db_codes, query_labels, db_labels, ks=(1, 10, 50, 100)):
  """Mean fraction of relevant items among the top k, for each k.

  Returns:
    dict `{k: precision}` (k clipped to the database size).
  """
  q, d, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  if any(int(k) < 1 for k in ks):
    raise ValueError(f"precision_at_k: every k must be >= 1, got {list(ks)}")
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


def _harmonic(n: int) -> np.ndarray:
  """`[n + 1]` float64 harmonic numbers H(0..n), H(m) = sum_{i <= m} 1 / i."""
  return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def _distance_histograms(dist: np.ndarray, rel: np.ndarray, nbits: int):
  """`[c, n]` distances and relevance -> per-query counts of items and of relevant items at
  each distance 0..K, both `[c, K + 1]` float64."""
  c = dist.shape[0]
  flat = (np.arange(c)[:, None] * (nbits + 1) + dist).ravel()
  items = np.bincount(flat, minlength=c * (nbits + 1)).reshape(c, nbits + 1)
  hits = np.bincount(flat, weights=rel.ravel().astype(np.float64),
                     minlength=c * (nbits + 1)).reshape(c, nbits + 1)
  return items.astype(np.float64), hits


def tie_aware_mean_average_precision(query_codes, db_codes, query_labels,
                                     db_labels) -> float:
  """mAP@all where each AP is its expectation over all orderings of tied Hamming distances.

  A Hamming ranking only orders the database partially: items at the same distance tie.
  Tie-aware AP [McSherry & Najork 2008] is the mean of AP over every ordering within tie
  groups, so it does not depend on database order (`mean_average_precision` breaks ties by
  database index instead); each query's is `tie_aware_average_precisions`. Queries with no
  relevant item are left out, as in `mean_average_precision`; returns 0.0 if every query is.

  Args:
    query_codes: `[q, K]` {-1, +1}.
    db_codes: `[n, K]` {-1, +1}.
    query_labels: `[q]` int or `[q, C]` multi-hot.
    db_labels: `[n]` int or `[n, C]` multi-hot.
  """
  aps = tie_aware_average_precisions(query_codes, db_codes, query_labels, db_labels)
  aps = aps[~np.isnan(aps)]
  return float(aps.mean()) if aps.size else 0.0


def tie_aware_average_precisions(query_codes, db_codes, query_labels,
                                 db_labels) -> np.ndarray:
  """Each query's tie-aware AP@all: its expectation over all orderings of tied distances.

  Closed form, for a tie group of `n` items, `r` of them relevant, preceded by `N` items of
  which `R` are relevant: position `p` (1..n) of the group is relevant with probability
  `r / n`, and given that, the relevant items before it in the group number
  `(p - 1)(r - 1)/(n - 1)` in expectation (hypergeometric), so the group adds

    sum_p (r/n) (R + 1 + (p - 1)(r - 1)/(n - 1)) / (N + p)
      = (r/n) [(R + 1) dH + (r - 1)/(n - 1) (n - (N + 1) dH)],  dH = H(N + n) - H(N),

  with H the harmonic numbers ((r - 1)/(n - 1) read as 0 when n = 1). AP = the sum over
  groups / the number of relevant items. Computed from per-query histograms over
  distances 0..K, so the cost is that of the distance matrix, one query block at a time.

  Args: as `tie_aware_mean_average_precision`.
  Returns:
    `[q]` float64; NaN for a query with no relevant item in the database.
  """
  q, d, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  nbits = q.shape[1]
  harm = _harmonic(d.shape[0])
  aps = []
  for s in range(0, len(q), _QUERY_CHUNK):
    dist = hamming_distances(q[s:s + _QUERY_CHUNK], d)
    rel = _relevance(ql[s:s + _QUERY_CHUNK], dl)
    n, r = _distance_histograms(dist, rel, nbits)  # [c, K + 1] each
    before_n = np.cumsum(n, 1) - n  # N: items ranked before each group
    before_r = np.cumsum(r, 1) - r  # R: relevant items before each group
    dh = harm[(before_n + n).astype(np.int64)] - harm[before_n.astype(np.int64)]
    frac = np.divide(r - 1, n - 1, out=np.zeros_like(r), where=n > 1)
    group = np.divide(r, n, out=np.zeros_like(r), where=n > 0) * (
        (before_r + 1) * dh + frac * (n - (before_n + 1) * dh))
    total = r.sum(1)
    aps.append(np.divide(group.sum(1), total, out=np.full_like(total, np.nan),
                         where=total > 0))
  return np.concatenate(aps) if aps else np.zeros((0,), np.float64)


def expected_top_k_labels(query_codes, db_codes, db_labels, k, num_classes: int) -> np.ndarray:
  """How many of each class a query's k nearest database items hold, in expectation over
  all orderings of tied Hamming distances (items nearer than the k-th count 1; the items
  tied at the k-th's distance share the places left equally).

  Args:
    query_codes: `[q, K]` {-1, +1}; db_codes: `[n, K]` {-1, +1}.
    db_labels: `[n]` int class ids in [0, num_classes).
    k: int, or `[q]` ints, each in [1, n] (e.g. the number of a query's relevant items:
      its R-precision neighbourhood).
  Returns:
    `[q, num_classes]` float64; each row sums to its k.
  """
  q = _as_codes(query_codes, "query_codes")
  d = _as_codes(db_codes, "db_codes")
  dl = np.asarray(db_labels)
  if dl.ndim != 1 or len(dl) != len(d):
    raise ValueError(f"db_labels must be [n] = [{len(d)}] class ids, got {dl.shape}")
  if dl.size and not (0 <= dl.min() and dl.max() < num_classes):
    raise ValueError(f"db_labels must lie in [0, {num_classes}), got {dl.min()}..{dl.max()}")
  ks = np.broadcast_to(np.asarray(k, np.int64), (len(q),))
  if ks.size and not (1 <= ks.min() and ks.max() <= len(d)):
    raise ValueError(f"k must lie in [1, {len(d)}] (the database size), got "
                     f"{ks.min()}..{ks.max()}")
  onehot = np.eye(num_classes)[dl]  # [n, C]
  out = []
  for s in range(0, len(q), _QUERY_CHUNK):
    dist = hamming_distances(q[s:s + _QUERY_CHUNK], d)
    kk = ks[s:s + _QUERY_CHUNK]
    cutoff = np.take_along_axis(np.sort(dist, axis=1), (kk - 1)[:, None], 1)  # [c, 1]
    nearer = dist < cutoff
    tied = dist == cutoff
    share = (kk - nearer.sum(1)) / tied.sum(1)  # places left per tied item
    weight = nearer + tied * share[:, None]
    out.append(weight @ onehot)
  return np.concatenate(out) if out else np.zeros((0, num_classes))


def _ball_counts(query_codes, db_codes, query_labels, db_labels, radius: int):
  """Per query: items and relevant items within Hamming distance <= radius, `[q]` each."""
  q, d, ql, dl = _check(query_codes, db_codes, query_labels, db_labels)
  if int(radius) < 0:
    raise ValueError(f"radius={radius} must be >= 0")
  retrieved, hits = [], []
  for s in range(0, len(q), _QUERY_CHUNK):
    inside = hamming_distances(q[s:s + _QUERY_CHUNK], d) <= int(radius)
    rel = _relevance(ql[s:s + _QUERY_CHUNK], dl)
    retrieved.append(inside.sum(1))
    hits.append((inside & rel).sum(1))
  return np.concatenate(retrieved), np.concatenate(hits)


def precision_within_radius(query_codes, db_codes, query_labels, db_labels,
                            radius: int = 2) -> float:
  """Mean over queries of the precision of the Hamming ball of `radius` (2 in the hashing
  literature: ITQ [Gong & Lazebnik 2013], DCMH).

  A query whose ball holds no database item counts as precision 0 (the usual convention of
  that literature: an empty lookup retrieves nothing useful), and every query is in the
  mean. `empty_ball_fraction` gives how many queries that was.

  Args:
    query_codes: `[q, K]` {-1, +1}.
    db_codes: `[n, K]` {-1, +1}.
    query_labels: `[q]` int or `[q, C]` multi-hot.
    db_labels: `[n]` int or `[n, C]` multi-hot.
    radius: largest Hamming distance retrieved (inclusive).
  """
  retrieved, hits = _ball_counts(query_codes, db_codes, query_labels, db_labels, radius)
  prec = np.divide(hits, retrieved, out=np.zeros(len(hits)), where=retrieved > 0)
  return float(prec.mean()) if prec.size else 0.0


def empty_ball_fraction(query_codes, db_codes, radius: int = 2) -> float:
  """Fraction of queries with no database item within Hamming distance <= radius (those
  count as precision 0 in `precision_within_radius`)."""
  q = _as_codes(query_codes, "query_codes")
  d = _as_codes(db_codes, "db_codes")
  dummy_q, dummy_d = np.zeros(len(q), np.int64), np.zeros(len(d), np.int64)
  retrieved, _ = _ball_counts(q, d, dummy_q, dummy_d, radius)
  return float(np.mean(retrieved == 0)) if retrieved.size else 0.0


def code_usage(codes) -> dict:
  """How well `[n, K]` {-1, +1} codes use their K bits (hashing's bit balance and
  independence criteria, e.g. Spectral Hashing, Weiss et al. NIPS 2008).

  Returns:
    {"distinct": int, number of different codes among the n (at most min(n, 2^K));
     "majority_fraction": float, mean over bits of the share of the more common value
       (0.5 = every bit balanced, 1.0 = every bit constant);
     "bit_entropy": float, mean over bits of the binary entropy in bits (1.0 = balanced);
     "mean_abs_correlation": float, mean |Pearson r| over pairs of distinct bits, a
       constant bit counting as uncorrelated (0.0 = independent, 1.0 = copies)}.
  """
  c = _as_codes(codes, "codes")
  n, k = c.shape
  if n == 0:
    raise ValueError("codes must hold at least one code, got shape (0, K)")
  distinct = len(np.unique(c, axis=0))
  p = (c > 0).mean(axis=0)                                   # [K] share of +1
  majority = np.maximum(p, 1.0 - p)
  with np.errstate(divide="ignore", invalid="ignore"):
    ent = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(p < 1, (1 - p) * np.log2(1 - p),
                                                             0.0))
  if k > 1:
    x = c.astype(np.float64) - c.mean(axis=0)
    sd = np.sqrt((x * x).mean(axis=0))
    scale = np.outer(sd, sd)
    corr = (x.T @ x / n) / np.where(scale > 0, scale, np.inf)  # constant bit: r = 0
    mean_abs_corr = float(np.abs(corr[~np.eye(k, dtype=bool)]).mean())
  else:
    mean_abs_corr = 0.0
  return {"distinct": int(distinct), "majority_fraction": float(majority.mean()),
          "bit_entropy": float(ent.mean()), "mean_abs_correlation": mean_abs_corr}

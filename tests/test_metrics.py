"""Retrieval metrics against a hand-worked ranking and a brute-force reference."""
import itertools

import numpy as np
import pytest

from cmah_jax import metrics

# Hand-worked example (see test_map_hand_worked for the rankings).
Q = np.array([[1, 1, 1, 1], [-1, -1, -1, -1], [1, 1, -1, -1]])
QL = np.array([0, 2, 1])
D = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [-1, 1, 1, 1], [1, 1, 1, 1], [-1, -1, -1, -1]])
DL = np.array([1, 0, 1, 0, 0])


def test_map_hand_worked():
  # q0: distances 0,1,1,0,4 -> stable order d0,d3,d1,d2,d4 -> relevant 0,1,1,0,1
  #     AP = (1/2 + 2/3 + 3/5) / 3.  q1: no relevant item -> left out.
  # q2: distances 2,1,3,2,2 -> order d1,d0,d3,d4,d2 -> relevant 0,1,0,0,1 -> (1/2 + 2/5) / 2.
  ap0 = (1 / 2 + 2 / 3 + 3 / 5) / 3
  ap2 = (1 / 2 + 2 / 5) / 2
  assert metrics.mean_average_precision(Q, D, QL, DL) == pytest.approx((ap0 + ap2) / 2)
  # top 3: q0 relevant 0,1,1 -> (1/2 + 2/3) / 2; q2 relevant 0,1,0 -> 1/2.
  assert metrics.mean_average_precision(Q, D, QL, DL, top_k=3) == pytest.approx(
      ((1 / 2 + 2 / 3) / 2 + 1 / 2) / 2)
  # Multi-hot labels give the same numbers.
  onehot = np.eye(3)
  assert metrics.mean_average_precision(Q, D, onehot[QL], onehot[DL]) == pytest.approx(
      (ap0 + ap2) / 2)


def test_precision_at_k_hand_worked():
  p = metrics.precision_at_k(Q, D, QL, DL, ks=(1, 3, 5))
  assert p[1] == pytest.approx(0.0)
  assert p[3] == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)
  assert p[5] == pytest.approx((3 / 5 + 0 + 2 / 5) / 3)


def test_pr_curve_hand_worked():
  radii, prec, rec = metrics.precision_recall_curve(Q, D, QL, DL)
  np.testing.assert_array_equal(radii, np.arange(5))
  # r=0: q0 retrieves d0,d3 (1 relevant of 3); q1 retrieves d4 (0 of 0); q2 nothing.
  assert prec[0] == pytest.approx((1 / 2 + 0) / 2)
  assert rec[0] == pytest.approx((1 / 3 + 0) / 2)  # recall over q0 and q2 only
  # r=4: everything retrieved.
  assert prec[4] == pytest.approx((3 / 5 + 0 + 2 / 5) / 3)
  assert rec[4] == pytest.approx(1.0)


def _map_reference(q, d, ql, dl, top_k=None):
  aps = []
  for i in range(len(q)):
    dist = [(int(np.sum(q[i] != d[j])), j) for j in range(len(d))]
    ranked = [j for _, j in sorted(dist)][: top_k or len(d)]
    hits, ps = 0, []
    for r, j in enumerate(ranked, 1):
      if ql[i] == dl[j]:
        hits += 1
        ps.append(hits / r)
    if ps:
      aps.append(np.mean(ps))
  return np.mean(aps)


@pytest.mark.parametrize("top_k", [None, 7])
def test_map_matches_brute_force(top_k):
  rng = np.random.default_rng(0)
  q = np.where(rng.random((300, 8)) < 0.5, -1, 1)
  d = np.where(rng.random((40, 8)) < 0.5, -1, 1)
  ql, dl = rng.integers(0, 4, 300), rng.integers(0, 4, 40)
  got = metrics.mean_average_precision(q, d, ql, dl, top_k=top_k)  # >1 query chunk
  assert got == pytest.approx(_map_reference(q, d, ql, dl, top_k))


def test_perfect_and_errors():
  codes = np.array([[1, 1], [-1, -1], [1, -1]])
  labels = np.array([0, 1, 2])
  assert metrics.mean_average_precision(codes, codes, labels, labels) == 1.0
  with pytest.raises(ValueError, match="labels do not match codes"):
    metrics.mean_average_precision(codes, codes, labels[:2], labels)
  with pytest.raises(ValueError, match="code lengths differ"):
    metrics.mean_average_precision(codes, codes[:, :1], labels, labels)


def test_bad_codes_and_cut_offs_are_named():
  """{0, 1} bits would all read as +1 (every code the same): refused, as are cut-offs
  below 1 and empty query sets, each with a message naming what is wrong."""
  bits = (Q > 0).astype(np.int32)
  for score in (lambda: metrics.mean_average_precision(bits, D, QL, DL),
                lambda: metrics.tie_aware_mean_average_precision(Q, (D > 0) * 1, QL, DL),
                lambda: metrics.code_usage(bits)):
    with pytest.raises(ValueError, match=r"\{0, 1\} bits.*2 \* bits - 1"):
      score()
  # The same codes as {-1, +1} (2 * bits - 1) score as the hand-worked example.
  assert metrics.mean_average_precision(2 * bits - 1, D, QL, DL) == pytest.approx(
      metrics.mean_average_precision(Q, D, QL, DL))
  for top_k in (0, -2):
    with pytest.raises(ValueError, match=f"top_k must be >= 1 or None.*got {top_k}"):
      metrics.mean_average_precision(Q, D, QL, DL, top_k=top_k)
  with pytest.raises(ValueError, match=r"every k must be >= 1, got \[1, 0\]"):
    metrics.precision_at_k(Q, D, QL, DL, ks=(1, 0))
  with pytest.raises(ValueError, match="no queries to score"):
    metrics.precision_at_k(Q[:0], D, QL[:0], DL)
  with pytest.raises(ValueError, match="no database items to score"):
    metrics.mean_average_precision(Q, D[:0], QL, DL[:0])
  with pytest.raises(ValueError, match="no queries to score"):
    metrics.similarity_mean_average_precision(np.zeros((0, 5)), QL[:0], DL)


# ---------------------------------------------------------------------------------------
# Tie-aware mAP [McSherry & Najork 2008] and precision within a Hamming radius.
# ---------------------------------------------------------------------------------------


def _codes_at(distances, nbits):
  """A query of all +1 and database codes at the given Hamming distances from it."""
  q = np.ones((1, nbits), np.int32)
  d = np.ones((len(distances), nbits), np.int32)
  for j, k in enumerate(distances):
    d[j, :k] = -1
  return q, d


def test_tie_aware_map_hand_worked():
  # 1 query; distances [0, 1, 1, 1, 2], relevance [1, 0, 1, 1, 0]; 3 relevant in all.
  # d=0: the relevant item is at rank 1 -> 1/1.
  # d=1: ranks 2..4 hold {0, 1, 1}; the 3 distinct orders are equally likely (the 3! orders
  #   of the items fall 2 on each):
  #   (0,1,1): relevant at ranks 3, 4 -> 2/3 + 3/4 = 17/12
  #   (1,0,1): ranks 2, 4           -> 2/2 + 3/4 = 21/12
  #   (1,1,0): ranks 2, 3           -> 2/2 + 3/3 = 24/12
  #   expected: (17 + 21 + 24) / 36 = 31/18.
  # d=2: nothing relevant. AP = (1 + 31/18) / 3 = 49/54.
  q, d = _codes_at([0, 1, 1, 1, 2], 4)
  dl = np.array([1, 0, 1, 1, 0])
  got = metrics.tie_aware_mean_average_precision(q, d, np.array([1]), dl)
  assert got == pytest.approx(49 / 54)
  # (The closed form in the docstring gives the same for the d=1 group, N=1, R=1, n=3,
  # r=2: dH = 1/2 + 1/3 + 1/4 = 13/12; (2/3) [2 dH + (1/2)(3 - 2 dH)] = 31/18.)
  # Index-tie-broken order 1,0,1,1,0 gives (1 + 2/3 + 3/4) / 3 instead.
  assert metrics.mean_average_precision(q, d, np.array([1]), dl) == pytest.approx(
      (1 + 2 / 3 + 3 / 4) / 3)


def _ap(rel_in_order):
  hits, total = 0, 0.0
  for rank, r in enumerate(rel_in_order, 1):
    if r:
      hits += 1
      total += hits / rank
  return total / hits


def _tie_aware_reference(q, d, ql, dl):
  """Mean over queries of the mean AP over every permutation within each tie group."""
  aps = []
  for i in range(len(q)):
    dist = np.sum(q[i] != d, axis=1)
    rel = (ql[i] == dl).astype(int)
    if not rel.any():
      continue
    groups = [list(rel[dist == k]) for k in np.unique(dist)]
    orders = [[]]
    for g in groups:  # every combination of per-group permutations
      orders = [o + list(p) for o in orders for p in itertools.permutations(g)]
    aps.append(np.mean([_ap(o) for o in orders]))
  return np.mean(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tie_aware_map_matches_permutation_enumeration(seed):
  rng = np.random.default_rng(seed)
  q = np.where(rng.random((4, 3)) < 0.5, -1, 1)
  d = np.where(rng.random((7, 3)) < 0.5, -1, 1)  # 3 bits, 7 items: many ties
  ql, dl = rng.integers(0, 2, 4), rng.integers(0, 2, 7)
  got = metrics.tie_aware_mean_average_precision(q, d, ql, dl)
  assert got == pytest.approx(_tie_aware_reference(q, d, ql, dl), abs=1e-12)
  onehot = np.eye(2)
  assert metrics.tie_aware_mean_average_precision(
      q, d, onehot[ql], onehot[dl]) == pytest.approx(got, abs=1e-12)


def test_tie_aware_map_equals_map_without_ties():
  # Database items at distinct distances 0..9 from each query: no ties, so both agree.
  rng = np.random.default_rng(3)
  q, d = _codes_at(rng.permutation(10), 12)
  q = np.concatenate([q, -q])  # the second query sees distances 12 - k: distinct too
  ql, dl = np.array([0, 1]), rng.integers(0, 2, 10)
  assert metrics.tie_aware_mean_average_precision(q, d, ql, dl) == pytest.approx(
      metrics.mean_average_precision(q, d, ql, dl), abs=1e-12)


def test_tie_aware_map_invariant_to_database_order():
  rng = np.random.default_rng(4)
  q = np.where(rng.random((300, 6)) < 0.5, -1, 1)  # > 1 query block
  d = np.where(rng.random((200, 6)) < 0.5, -1, 1)
  ql, dl = rng.integers(0, 5, 300), rng.integers(0, 5, 200)
  perm = rng.permutation(200)
  tie = metrics.tie_aware_mean_average_precision(q, d, ql, dl)
  assert metrics.tie_aware_mean_average_precision(q, d[perm], ql, dl[perm]) == pytest.approx(
      tie, abs=1e-12)
  broken = metrics.mean_average_precision(q, d, ql, dl)
  assert abs(metrics.mean_average_precision(q, d[perm], ql, dl[perm]) - broken) > 1e-6


def test_tie_aware_map_no_relevant_and_perfect():
  codes = np.array([[1, 1], [-1, -1], [1, -1]])
  labels = np.array([0, 1, 2])
  assert metrics.tie_aware_mean_average_precision(codes, codes, labels, labels) == 1.0
  assert metrics.tie_aware_mean_average_precision(codes, codes, labels, labels + 5) == 0.0
  # All codes equal: AP of a query with r relevant among n is the expected AP of a random
  # order, e.g. n=2, r=1: (1/1 + 1/2) / 2.
  same = np.ones((2, 2))
  assert metrics.tie_aware_mean_average_precision(
      same[:1], same, np.array([0]), np.array([0, 1])) == pytest.approx(3 / 4)


def _precision_within_radius_loop(q, d, ql, dl, radius):
  precs = []
  for i in range(len(q)):
    inside = [j for j in range(len(d)) if np.sum(q[i] != d[j]) <= radius]
    precs.append(np.mean([ql[i] == dl[j] for j in inside]) if inside else 0.0)
  return np.mean(precs)


@pytest.mark.parametrize("radius", [0, 2, 3])
def test_precision_within_radius_matches_loop(radius):
  rng = np.random.default_rng(5)
  q = np.where(rng.random((300, 8)) < 0.5, -1, 1)
  d = np.where(rng.random((30, 8)) < 0.5, -1, 1)
  ql, dl = rng.integers(0, 3, 300), rng.integers(0, 3, 30)
  got = metrics.precision_within_radius(q, d, ql, dl, radius=radius)
  assert got == pytest.approx(_precision_within_radius_loop(q, d, ql, dl, radius))
  empty = np.mean([np.all(np.sum(qi != d, axis=1) > radius) for qi in q])
  assert metrics.empty_ball_fraction(q, d, radius=radius) == pytest.approx(empty)
  assert 0 < metrics.empty_ball_fraction(q, d, radius=0) < 1  # both cases exercised


def test_precision_within_radius_hand_worked():
  # Module example (Q, D, QL, DL above), radius 1: q0 (label 0) gets d0, d1, d2, d3, of which
  # d1, d3 have label 0 -> 2/4; q1 gets d4 (label 0 != 2) -> 0; q2 gets d1 (label 0 != 1)
  # -> 0. Mean (1/2 + 0 + 0) / 3 = 1/6.
  assert metrics.precision_within_radius(Q, D, QL, DL, radius=1) == pytest.approx(1 / 6)
  assert metrics.empty_ball_fraction(Q, D, radius=0) == pytest.approx(1 / 3)  # q2
  with pytest.raises(ValueError, match="radius"):
    metrics.precision_within_radius(Q, D, QL, DL, radius=-1)


def test_code_usage_hand_worked():
  codes = np.array([[1, 1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]])
  u = metrics.code_usage(codes)
  assert u["distinct"] == 3                      # (1,1,-1) twice
  # +1 shares 3/4, 3/4, 0: majority 3/4, 3/4, 1.
  assert u["majority_fraction"] == pytest.approx((0.75 + 0.75 + 1.0) / 3)
  h = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
  assert u["bit_entropy"] == pytest.approx(2 * h / 3)
  # Bits 0 and 1: r = -1/3 (cov -1/4, var 3/4 each); bit 2 is constant: 0 with both.
  assert u["mean_abs_correlation"] == pytest.approx((2 / 3) / 6)


def test_code_usage_matches_numpy_corrcoef_and_set_count():
  rng = np.random.default_rng(3)
  codes = np.where(rng.random((200, 8)) < np.linspace(0.2, 0.8, 8), 1, -1)
  codes[:, 5] = codes[:, 4]                      # one copied bit
  u = metrics.code_usage(codes)
  r = np.corrcoef(codes.T.astype(float))
  assert u["mean_abs_correlation"] == pytest.approx(np.abs(r[~np.eye(8, dtype=bool)]).mean())
  assert u["distinct"] == len({tuple(c) for c in codes.tolist()})
  assert metrics.code_usage(np.ones((5, 4)))["distinct"] == 1
  assert metrics.code_usage(np.ones((5, 4)))["majority_fraction"] == 1.0
  with pytest.raises(ValueError, match="codes"):
    metrics.code_usage(np.ones(4))


def test_similarity_map_by_hand_with_a_tie():
  # One query of label 0; similarities 0.9 (label 1), 0.5 (0), 0.9 (0), 0.1 (1). By
  # decreasing similarity, ties by index: items 0, 2, 1, 3 -> relevance 0, 1, 1, 0, so
  # AP = (1/2 + 2/3) / 2.
  ap = metrics.similarity_mean_average_precision([[0.9, 0.5, 0.9, 0.1]], [0], [1, 0, 0, 1])
  assert ap == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-12)
  # A query with no relevant item is left out of the mean.
  assert metrics.similarity_mean_average_precision(
      [[0.9, 0.5, 0.9, 0.1], [1, 2, 3, 4]], [0, 7], [1, 0, 0, 1]) == pytest.approx(ap, abs=1e-12)
  with pytest.raises(ValueError, match=r"\[q, n\] = \[1, 3\]"):
    metrics.similarity_mean_average_precision([[0.1, 0.2]], [0], [0, 1, 1])


@pytest.mark.parametrize("multi_hot", [False, True])
def test_similarity_map_of_codes_is_the_hamming_map(multi_hot):
  """On +-1 codes the inner product is K - 2 * Hamming distance: the same ranking, with the
  same index tie-break, as `mean_average_precision`'s `hamming_topk` path. 300 queries span
  two query blocks."""
  rng = np.random.default_rng(0)
  q = np.where(rng.random((300, 8)) < 0.5, -1.0, 1.0)
  d = np.where(rng.random((90, 8)) < 0.5, -1.0, 1.0)
  if multi_hot:
    ql, dl = rng.random((300, 5)) < 0.3, rng.random((90, 5)) < 0.3
  else:
    ql, dl = rng.integers(0, 4, 300), rng.integers(0, 4, 90)
  assert metrics.similarity_mean_average_precision(q @ d.T, ql, dl) == pytest.approx(
      metrics.mean_average_precision(q, d, ql, dl), abs=1e-12)


def _naive_scores(q, d, ql, dl, ks, radius):
  """Per-query loops in plain NumPy/Python: Hamming distance by counting differing bits,
  relevance by equal class or any shared label, ties by database index."""
  def relevant(i, j):
    return bool(np.any(ql[i] & dl[j])) if ql.ndim == 2 else ql[i] == dl[j]

  nbits = q.shape[1]
  aps, prec_k = [], {k: [] for k in ks}
  pr_prec = [[] for _ in range(nbits + 1)]
  pr_rec = [[] for _ in range(nbits + 1)]
  ball = []
  for i in range(len(q)):
    dist = np.array([int(np.sum(q[i] != d[j])) for j in range(len(d))])
    rel = np.array([relevant(i, j) for j in range(len(d))])
    ranked = rel[np.argsort(dist, kind="stable")]
    if ranked.any():
      hits = np.flatnonzero(ranked)
      aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
    for k in ks:
      prec_k[k].append(ranked[:k].mean())
    for r in range(nbits + 1):
      inside = dist <= r
      if inside.any():
        pr_prec[r].append(rel[inside].mean())
      if rel.any():
        pr_rec[r].append(rel[inside].sum() / rel.sum())
    inside = dist <= radius
    ball.append(rel[inside].mean() if inside.any() else 0.0)
  return (np.mean(aps), {k: np.mean(v) for k, v in prec_k.items()},
          np.array([np.mean(v) if v else np.nan for v in pr_prec]),
          np.array([np.mean(v) for v in pr_rec]), np.mean(ball))


@pytest.mark.parametrize("multi_hot", [False, True])
def test_metrics_match_per_query_loops_over_several_chunks(multi_hot):
  """300 queries (two of the metrics' 256-query chunks), 6-bit codes (many ties), against
  `_naive_scores`; multi-hot labels overlap, and one query and one item have none."""
  rng = np.random.default_rng(11)
  q = np.where(rng.random((300, 6)) < 0.5, 1, -1)
  d = np.where(rng.random((90, 6)) < 0.5, 1, -1)
  if multi_hot:
    ql = (rng.random((300, 4)) < 0.35).astype(np.int32)
    dl = (rng.random((90, 4)) < 0.35).astype(np.int32)
    ql[7], dl[3] = 0, 0
  else:
    ql, dl = rng.integers(0, 5, 300), rng.integers(0, 5, 90)
  ks = (1, 7, 50, 90)
  want_map, want_pk, want_prec, want_rec, want_ball = _naive_scores(q, d, ql, dl, ks, 2)
  assert metrics.mean_average_precision(q, d, ql, dl) == pytest.approx(want_map, rel=1e-12)
  got_pk = metrics.precision_at_k(q, d, ql, dl, ks=ks)
  assert got_pk == pytest.approx(want_pk, rel=1e-12)
  radii, prec, rec = metrics.precision_recall_curve(q, d, ql, dl)
  np.testing.assert_array_equal(radii, np.arange(7))
  np.testing.assert_allclose(prec, want_prec, rtol=1e-12)
  np.testing.assert_allclose(rec, want_rec, rtol=1e-12)
  assert metrics.precision_within_radius(q, d, ql, dl, 2) == pytest.approx(want_ball, rel=1e-12)
  dist, idx = metrics.rank_database(q, d, k=10)
  naive = np.array([[np.sum(q[i] != d[j]) for j in range(len(d))] for i in range(len(q))])
  np.testing.assert_array_equal(idx, np.argsort(naive, axis=1, kind="stable")[:, :10])
  np.testing.assert_array_equal(dist, np.sort(naive, axis=1)[:, :10])

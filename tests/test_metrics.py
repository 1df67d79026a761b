"""Retrieval metrics against a hand-worked ranking and a brute-force reference."""
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

"""Per-query tie-aware AP, the expected class mix of the k nearest, and the per-class study,
against brute force over every ordering of tied distances."""
import itertools

import numpy as np
import pytest

from cmah_jax import metrics
from cmah_jax.experiments import per_class


def _orders(dist_row):
  """Every database order a Hamming ranking allows: ascending distance, any order within
  a tie group."""
  groups = [list(np.flatnonzero(dist_row == v)) for v in np.unique(dist_row)]
  for parts in itertools.product(*(itertools.permutations(g) for g in groups)):
    yield [i for part in parts for i in part]


def _brute_ap(dist_row, rel_row):
  aps = []
  for order in _orders(dist_row):
    rel = rel_row[order]
    if not rel.any():
      return np.nan
    hits = np.cumsum(rel)
    aps.append(np.sum(rel * hits / np.arange(1, len(rel) + 1)) / rel.sum())
  return np.mean(aps)


def _brute_top_k(dist_row, db_labels, k, num_classes):
  counts = [np.bincount(db_labels[order[:k]], minlength=num_classes)
            for order in _orders(dist_row)]
  return np.mean(counts, axis=0)


def _example(seed=0, q=5, n=7, bits=3, classes=3):
  rng = np.random.default_rng(seed)
  qc = np.where(rng.random((q, bits)) < 0.5, -1, 1)
  dc = np.where(rng.random((n, bits)) < 0.5, -1, 1)  # 3 bits, 7 items: many ties
  return qc, dc, rng.integers(0, classes, q), rng.integers(0, classes, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_query_tie_aware_ap_is_the_mean_over_tied_orders(seed):
  qc, dc, ql, dl = _example(seed)
  ql[0] = 7  # a query with no relevant item: NaN, left out of the mean
  dist = metrics.hamming_distances(qc, dc)
  want = np.array([_brute_ap(dist[i], dl == ql[i]) for i in range(len(qc))])
  got = metrics.tie_aware_average_precisions(qc, dc, ql, dl)
  np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)
  assert np.isnan(got[0])
  assert metrics.tie_aware_mean_average_precision(qc, dc, ql, dl) == pytest.approx(
      np.nanmean(want), rel=1e-12)


def test_expected_top_k_labels_hand_worked():
  # Distances 0, 1, 1, 1, 2: with k = 2 the nearest is in, and the one place left is
  # shared by the three tied at distance 1 (classes 1, 1, 2): 2/3 of class 1, 1/3 of 2.
  q = np.array([[1, 1]])
  d = np.array([[1, 1], [1, -1], [-1, 1], [1, -1], [-1, -1]])
  dist = metrics.hamming_distances(q, d)
  assert dist.tolist() == [[0, 1, 1, 1, 2]]
  got = metrics.expected_top_k_labels(q, d, np.array([0, 1, 1, 2, 0]), 2, 3)
  np.testing.assert_allclose(got, [[1.0, 2 / 3, 1 / 3]], rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_top_k_labels_is_the_mean_over_tied_orders(seed):
  qc, dc, _, dl = _example(seed)
  ks = np.array([1, 2, 3, 5, 7])
  dist = metrics.hamming_distances(qc, dc)
  want = np.array([_brute_top_k(dist[i], dl, ks[i], 3) for i in range(len(qc))])
  got = metrics.expected_top_k_labels(qc, dc, dl, ks, 3)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(got.sum(1), ks)


def test_expected_top_k_labels_refuses_bad_inputs():
  qc, dc, _, dl = _example()
  with pytest.raises(ValueError, match=r"k must lie in \[1, 7\]"):
    metrics.expected_top_k_labels(qc, dc, dl, 8, 3)
  with pytest.raises(ValueError, match=r"db_labels must lie in \[0, 2\)"):
    metrics.expected_top_k_labels(qc, dc, dl, 2, 2)


def test_per_class_mean_skips_undefined_values():
  got = per_class.per_class_mean([0.5, np.nan, 1.0, 0.25], [0, 0, 2, 2], 4)
  np.testing.assert_allclose(got, [0.5, np.nan, 0.625, np.nan], equal_nan=True)


@pytest.mark.parametrize("seed", [0, 3])
def test_the_study_against_brute_force(seed):
  qc, dc, ql, dl = _example(seed, q=6, n=7)
  dl[:3] = [0, 1, 2]  # every class in the database, so every query has relevant items
  query = {"image": qc, "point": -qc, "label": ql}
  database = {"image": dc, "point": dc[::-1], "label": dl}
  study = per_class.per_class_study(query, database, 3)
  for name, (src, dst) in per_class.DIRECTIONS.items():
    dist = metrics.hamming_distances(query[src], database[dst])
    aps = [_brute_ap(dist[i], database["label"] == ql[i]) for i in range(len(ql))]
    shares = [_brute_top_k(dist[i], database["label"], np.sum(database["label"] == ql[i]), 3)
              / np.sum(database["label"] == ql[i]) for i in range(len(ql))]
    for c in range(3):
      mine = ql == c
      if mine.any():
        assert study[name]["ap"][c] == pytest.approx(np.mean(np.array(aps)[mine]), rel=1e-12)
        np.testing.assert_allclose(study[name]["confusion"][c],
                                   np.mean(np.array(shares)[mine], axis=0), rtol=1e-12)
      else:
        assert np.isnan(study[name]["ap"][c]) and np.isnan(study[name]["confusion"][c]).all()
    # The queries' mean AP is the run's tie-aware mAP.
    assert study[name]["map"] == pytest.approx(metrics.tie_aware_mean_average_precision(
        query[src], database[dst], ql, database["label"]), rel=1e-12)


def test_the_printout_lists_the_weakest_class_first_with_its_confusions():
  study = {d: {"ap": np.array([0.9, 0.4, 0.7]),
               "confusion": np.array([[0.8, 0.2, 0.0], [0.5, 0.3, 0.2], [0.0, 0.1, 0.9]])}
           for d in ("i2p", "p2i")}
  lines = per_class.format_study(study, ["a", "b", "c"])
  assert [line.split()[0] for line in lines[1:]] == ["b", "c", "a"]
  assert lines[1].endswith("a 0.50, c 0.20")
  other = {d: {"ap": np.array([1.0, 0.5, 0.5])} for d in ("i2p", "p2i")}
  assert "-0.100 / -0.100" in per_class.format_study(study, ["a", "b", "c"], other)[1]


@pytest.mark.parametrize("other, message", [
    ((["a", "b"], "validation protocol", "sign(h) codes"), "would be scored on sign\\(h\\) codes"),
    ((["a", "b"], "test protocol", "learned quantiser's codes"), "another dataset or protocol"),
    ((["a", "c"], "validation protocol", "learned quantiser's codes"),
     "another dataset or protocol"),
])
def test_against_refuses_another_kind_of_codes_or_protocol(monkeypatch, other, message):
  codes = {"image": np.ones((2, 4)), "point": np.ones((2, 4)), "label": np.arange(2)}
  monkeypatch.setattr(per_class, "scored_codes",
                      lambda workdir, which: (codes, codes, *other))
  ours = (["a", "b"], "validation protocol", "learned quantiser's codes")
  with pytest.raises(per_class.app.UsageError, match=message):
    per_class.comparable_codes("/runs/b", "auto", "/runs/a", ours)
  assert per_class.comparable_codes("/runs/b", "auto", "/runs/a", other)[0] is codes

"""Splits of the real-dataset builders: "train", "query" and "database" (disjoint objects).

Per class, the object ids sorted, then permuted with
`np.random.default_rng([split_seed, stream, label])`; the first `round(fraction * n)` (at
least 1 and at most n - 1 when n >= 2; 0 when n == 1) are taken [ours]. Builders decide
splits on the paired objects before any file is read, so a file that turns out unreadable
removes only its own object.
"""
from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np

SPLITS = ("train", "query", "database")
_HOLDOUT_STREAM = 0  # rng stream of holdout_split [ours]
_QUERY_STREAM = 1  # rng stream of query_database_split [ours]


def _split_count(fraction: float, n: int) -> int:
  if n < 2:
    return 0
  k = int(math.floor(fraction * n + 0.5))
  return min(max(k, 1), n - 1)


def _per_class_pick(object_ids: Sequence[str], labels: Sequence[int], fraction: float,
                    seed: int, stream: int) -> set[str]:
  by_class = collections.defaultdict(list)
  for oid, lab in zip(object_ids, labels):
    by_class[int(lab)].append(oid)
  picked = set()
  for lab, ids in by_class.items():
    ids = sorted(ids)
    order = np.random.default_rng([int(seed), stream, lab]).permutation(len(ids))
    picked.update(ids[j] for j in order[:_split_count(fraction, len(ids))])
  return picked


def holdout_split(object_ids: Sequence[str], labels: Sequence[int], test_fraction: float,
                  seed: int) -> dict[str, str]:
  """{object_id: "train" | "test"}: per class, `round(test_fraction * n)` objects to test.

  Class `c`'s ids are sorted, permuted by `default_rng([seed, 0, c])`, and the first
  `round(test_fraction * n)` (clipped to [1, n-1] when n >= 2, 0 when n == 1) go to test.
  """
  test = _per_class_pick(object_ids, labels, test_fraction, seed, _HOLDOUT_STREAM)
  return {oid: ("test" if oid in test else "train") for oid in object_ids}


def query_database_split(object_ids: Sequence[str], labels: Sequence[int],
                         query_fraction: float, seed: int) -> dict[str, str]:
  """{object_id: "query" | "database"} for test objects, per class.

  Class `c`'s ids are sorted, permuted by `default_rng([seed, 1, c])`, and the first
  `round(query_fraction * n)` (clipped to [1, n-1] when n >= 2, 0 when n == 1) are queries;
  the rest form the retrieval database.
  """
  query = _per_class_pick(object_ids, labels, query_fraction, seed, _QUERY_STREAM)
  return {oid: ("query" if oid in query else "database") for oid in object_ids}

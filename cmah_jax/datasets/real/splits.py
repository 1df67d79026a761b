"""Splits of the real-dataset builders: "train", "query" and "database" (disjoint objects).

Per class, the object ids sorted, then permuted with
`np.random.default_rng([split_seed, stream, label])`; the first `round(fraction * n)` (at
least 1 and at most n - 1 when n >= 2; 0 when n == 1) are taken [ours]. Builders decide
splits on the paired objects before any file is read, so a file that turns out unreadable
removes only its own object.

Record order [ours]: a split's records are stored in `record_order`, its sorted ids
permuted by `np.random.default_rng([split_seed, RECORD_ORDER_STREAM, SPLITS.index(split)])`
(train 0, query 1, database 2), never sorted by id: ids begin with the class, and Hamming
ties are broken by database index, so a class-sorted database would put the query's class
together inside every tie and inflate mAP.
"""
from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np

SPLITS = ("train", "query", "database")
_HOLDOUT_STREAM = 0  # rng stream of holdout_split [ours]
_QUERY_STREAM = 1  # rng stream of query_database_split [ours]
RECORD_ORDER_STREAM = 2  # rng stream of record_order (stored order of each split) [ours]


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


def record_order(object_ids: Sequence[str], split: str, seed: int) -> list[str]:
  """The order in which split `split`'s records are stored: a fixed seeded shuffle.

  The ids sorted, then permuted by
  `np.random.default_rng([seed, RECORD_ORDER_STREAM, SPLITS.index(split)])` (stream 2;
  train 0, query 1, database 2): `[sorted_ids[j] for j in rng.permutation(n)]`. A pure
  function of the set of ids, the split name and the seed (input order does not matter).
  Objects skipped while reading leave the others in this order.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  ids = sorted(object_ids)
  if len(set(ids)) != len(ids):
    raise ValueError(f"split {split!r}: duplicate object ids")
  order = np.random.default_rng(
      [int(seed), RECORD_ORDER_STREAM, SPLITS.index(split)]).permutation(len(ids))
  return [ids[j] for j in order]

"""The retrieval protocol: which records train the model, which are queries, which form the
database (`config.eval`).

- `protocol="test"`: the model trains on the `train` split. With `database_split=
  "database"` the queries are the `query` split and the database the held-out `database`
  split; with `database_split="train"` (the UCCH protocol: queries from the test side,
  the training set as retrieval set [docs/PAPER.md]) the queries are the whole test side,
  the `query` split then the `database` split, and the database the training set.
- `protocol="validation"`, for choosing hyper-parameters without ever looking at the query
  or database splits: a fixed, seeded fraction (`validation_fraction`) of the train split
  is held out of training; `validation_query_fraction` of it are the queries, the rest the
  database. The carve depends only on the number of train records and `VALIDATION_SEED`,
  not on the run's seed, so every run of a comparison validates on the same objects.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from cmah_jax.config import EvalSpec
from cmah_jax.input import ConcatSource, SubsetSource, as_source

VALIDATION_SEED = 20241125  # the fixed validation carve [ours]


@dataclasses.dataclass(frozen=True)
class RetrievalSources:
  """Random-access sources of the three roles, and a description for reports."""
  train: object
  query: object
  database: object
  description: str


def validation_carve(num_train: int, eval_spec: EvalSpec):
  """Record indices of the train split: (training, validation queries, validation database),
  each sorted int64, disjoint, covering `range(num_train)`."""
  order = np.random.default_rng(VALIDATION_SEED).permutation(num_train)
  held = max(2, int(round(eval_spec.validation_fraction * num_train)))
  queries = max(1, int(round(eval_spec.validation_query_fraction * held)))
  if held >= num_train:
    raise ValueError(f"config.eval.validation_fraction={eval_spec.validation_fraction} of "
                     f"{num_train} train records holds out {held}: none left to train on")
  if queries >= held:
    raise ValueError(f"config.eval.validation_query_fraction="
                     f"{eval_spec.validation_query_fraction} of the {held} held-out records "
                     f"makes {queries} queries: none left for the validation database")
  return (np.sort(order[held:]), np.sort(order[:queries]), np.sort(order[queries:held]))


def retrieval_sources(builder, eval_spec: EvalSpec) -> RetrievalSources:
  """The train / query / database sources of `builder` under `eval_spec`'s protocol."""
  train = as_source(builder, "train")
  if eval_spec.protocol == "validation":
    fit, queries, database = validation_carve(len(train), eval_spec)
    return RetrievalSources(
        SubsetSource(train, fit), SubsetSource(train, queries),
        SubsetSource(train, database),
        f"validation protocol: {len(queries)} queries against {len(database)} database "
        f"objects, both held out of the train split (the model trains on {len(fit)})")
  query, held_out = as_source(builder, "query"), as_source(builder, "database")
  if eval_spec.database_split == "train":
    return RetrievalSources(
        train, ConcatSource(query, held_out), train,
        f"{len(query) + len(held_out)} queries (the query and database splits: the whole "
        f"test side) against {len(train)} database objects, the training set (UCCH "
        "protocol)")
  return RetrievalSources(train, query, held_out,
                          f"{len(query)} queries (query split) against {len(held_out)} "
                          "database objects, the held-out database split")

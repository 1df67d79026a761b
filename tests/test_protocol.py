"""The retrieval protocol: test / UCCH database / validation carve (never the test splits)."""
import dataclasses

import numpy as np
import pytest

from cmah_jax import datasets
from cmah_jax.config import EvalSpec
from cmah_jax.input import InputSpec, TrainPipeline, eval_local_batch, eval_subset_index
from cmah_jax.protocol import VALIDATION_SEED, retrieval_sources, validation_carve


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  builder = datasets.get_builder("synthetic_shapes", str(tmp_path_factory.mktemp("d")), "tiny")
  builder.download_and_prepare()
  return builder


def test_validation_carve_hand_checked():
  spec = EvalSpec(protocol="validation", validation_fraction=0.2,
                  validation_query_fraction=0.25)
  fit, queries, database = validation_carve(80, spec)
  # 20% of 80 = 16 held out; a quarter of them (4) are queries, the other 12 the database.
  assert (len(fit), len(queries), len(database)) == (64, 4, 12)
  order = np.random.default_rng(VALIDATION_SEED).permutation(80)
  np.testing.assert_array_equal(queries, np.sort(order[:4]))
  np.testing.assert_array_equal(database, np.sort(order[4:16]))
  np.testing.assert_array_equal(np.sort(np.concatenate([fit, queries, database])),
                                np.arange(80))
  with pytest.raises(ValueError, match="validation_fraction"):
    EvalSpec(protocol="validation", validation_fraction=1.5).validate()
  # Too few records for a carve: the message names the fraction that leaves a part empty.
  with pytest.raises(ValueError, match=r"validation_fraction=0.5 of 2 train records holds "
                     r"out 2: none left"):
    validation_carve(2, EvalSpec(protocol="validation", validation_fraction=0.5))
  with pytest.raises(ValueError, match=r"validation_query_fraction=0.9 of the 2 held-out "
                     r"records makes 2 queries"):
    validation_carve(10, EvalSpec(protocol="validation", validation_fraction=0.2,
                                  validation_query_fraction=0.9))


def test_sources_of_each_protocol(tiny):
  test = retrieval_sources(tiny, EvalSpec())
  assert (len(test.train), len(test.query), len(test.database)) == (80, 40, 60)
  val = retrieval_sources(tiny, EvalSpec(protocol="validation"))
  assert (len(val.train), len(val.query), len(val.database)) == (64, 3, 13)
  # Objects by their point clouds (ids name their split, so comparing ids across splits
  # could not fail): the validation objects come from the train split, are held out of
  # training, and are none of the test side's.
  clouds = lambda src: {src[i]["points"].tobytes() for i in range(len(src))}
  assert len(clouds(test.train)) == 80
  assert clouds(val.query) | clouds(val.database) <= clouds(test.train)
  assert not (clouds(val.query) | clouds(val.database)) & clouds(val.train)
  assert not clouds(val.query) & (clouds(test.query) | clouds(test.database))


def test_the_ucch_protocol_queries_the_training_set_with_the_whole_test_side(tiny):
  """`database_split="train"`: the queries are the query split, then the database split
  (UCCH: queries from the test split [docs/PAPER.md]), the database the training set."""
  test = retrieval_sources(tiny, EvalSpec())
  ucch = retrieval_sources(tiny, EvalSpec(database_split="train"))
  assert (len(ucch.query), len(ucch.database)) == (100, 80)
  assert "100 queries (the query and database splits" in ucch.description
  assert "80 database objects, the training set (UCCH protocol)" in ucch.description
  side = [test.query[i] for i in range(40)] + [test.database[i] for i in range(60)]
  for i in (0, 39, 40, 99):
    assert ucch.query[i]["object_id"] == side[i]["object_id"]
  ids = [3, 70, 41, 3, 0]  # across both parts, out of order, repeated
  got = ucch.query.__getitems__(ids)
  assert [g["object_id"] for g in got] == [side[i]["object_id"] for i in ids]
  with pytest.raises(IndexError, match="record 100 of 100"):
    ucch.query[100]
  assert ucch.database[5]["object_id"] == test.train[5]["object_id"]
  # Each query is evaluated as in its own split: the same fixed point subset.
  spec = InputSpec(eval_batch_size=50, num_points=64, image_size=16)
  assert tiny.info.features["points"].shape[0] > 64  # a subset is drawn
  joined = eval_local_batch(ucch.query, 0, spec)  # rows 0-49: query 0-39, database 0-9
  alone = [eval_local_batch(test.query, 0, spec), eval_local_batch(test.database, 0, spec)]
  np.testing.assert_array_equal(joined["points"][:40], alone[0]["points"][:40])
  np.testing.assert_array_equal(joined["points"][40:], alone[1]["points"][:10])
  assert [eval_subset_index(ucch.query, i) for i in (39, 40, 99)] == [39, 0, 59]


def test_training_never_reads_validation_records(tiny):
  val = retrieval_sources(tiny, EvalSpec(protocol="validation"))
  held = set(val.query.indices) | set(val.database.indices)
  spec = InputSpec(batch_size=8, num_points=128, image_size=16, prefetch=0)
  seen = set()
  with TrainPipeline(val.train, "train", spec, None, seed=3) as it:
    for _ in range(20):  # 20 steps of 8 > 2 epochs of 64
      seen |= {int(val.train.indices[i]) for i in next(it)["index"]}
  assert seen == set(val.train.indices.tolist()) and not seen & held

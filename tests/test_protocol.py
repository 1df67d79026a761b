"""The retrieval protocol: test / UCCH database / validation carve (never the test splits)."""
import dataclasses

import numpy as np
import pytest

from cmah_jax import datasets
from cmah_jax.config import EvalSpec
from cmah_jax.input import InputSpec, TrainPipeline
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
  ucch = retrieval_sources(tiny, EvalSpec(database_split="train"))
  assert len(ucch.database) == 80 and "UCCH" in ucch.description
  val = retrieval_sources(tiny, EvalSpec(protocol="validation"))
  assert (len(val.train), len(val.query), len(val.database)) == (64, 3, 13)
  ids = lambda src: {src[i]["object_id"] for i in range(len(src))}
  # The validation objects come from the train split and are held out of training.
  train_ids = ids(test.train)
  assert ids(val.query) | ids(val.database) <= train_ids
  assert not (ids(val.query) | ids(val.database)) & ids(val.train)
  assert not ids(val.query) & (ids(test.query) | ids(test.database))


def test_training_never_reads_validation_records(tiny):
  val = retrieval_sources(tiny, EvalSpec(protocol="validation"))
  held = set(val.query.indices) | set(val.database.indices)
  spec = InputSpec(batch_size=8, num_points=128, image_size=16, prefetch=0)
  seen = set()
  with TrainPipeline(val.train, "train", spec, None, seed=3) as it:
    for _ in range(20):  # 20 steps of 8 > 2 epochs of 64
      seen |= {int(val.train.indices[i]) for i in next(it)["index"]}
  assert seen == set(val.train.indices.tolist()) and not seen & held

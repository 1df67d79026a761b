"""Nearest-neighbour positives (`loss.nn_positive_weight`, after NNCLR): the neighbour
search by hand and against plain loops, the loss against NumPy, its gradient against
finite differences, and the objective carrying the support memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import losses, objectives
from cmah_jax.losses import LossSpec, NegativeQueue
from numeric import central_difference_gradient
from test_queue import _codes, np_queued_one_way


def np_nearest(h, rows, row_index, index):
  """Plain loops: for each h[b] the row of highest cosine among rows of other, filled
  objects; h[b] itself when there is none."""
  out = np.array(h, dtype=np.float32)
  for b in range(len(h)):
    best, best_sim = None, -np.inf
    for q in range(len(rows)):
      if row_index[q] < 0 or row_index[q] == index[b]:
        continue
      sim = h[b] @ rows[q] / (np.linalg.norm(h[b]) * np.linalg.norm(rows[q]))
      if sim > best_sim:
        best, best_sim = q, sim
    if best is not None:
      out[b] = rows[best]
  return out


def np_contrastive(a, b, tau):
  never = np.zeros((len(a), 0), bool)
  empty = np.zeros((0, a.shape[1]), np.float32)
  return 0.5 * (np_queued_one_way(a, b, empty, never, tau)
                + np_queued_one_way(b, a, empty, never, tau))


def test_nearest_rows_by_hand():
  # Memory rows (2-D codes): objects 5 (east), 6 (north), 7 (west), and an empty row whose
  # stale contents point exactly along the first two queries (it must never be chosen).
  memory = NegativeQueue(
      points=jnp.asarray([[1., 0.], [0., 1.], [-1., 0.], [1., 0.05]]),
      images=jnp.zeros((4, 2)), index=jnp.asarray([5, 6, 7, -1], jnp.int32))
  h = jnp.asarray([[2., 0.1],     # object 1: east is nearest -> row 0
                   [2., 0.1],     # object 5 itself: its own row is skipped -> north, row 1
                   [-0.1, -3.]])  # object 2: cosines east -0.033, north -0.999,
                                  # west +0.033 -> row 2
  got = losses.nearest_neighbour_rows(h, memory, "points", jnp.asarray([1, 5, 2]))
  np.testing.assert_array_equal(np.asarray(got), [[1., 0.], [0., 1.], [-1., 0.]])
  # Nothing to choose from (every row empty or the object itself): the code itself.
  lonely = NegativeQueue(jnp.asarray([[1., 0.], [0., 1.]]), jnp.zeros((2, 2)),
                         jnp.asarray([3, -1], jnp.int32))
  got = losses.nearest_neighbour_rows(jnp.asarray([[0.5, 0.5]]), lonely, "points",
                                      jnp.asarray([3]))
  np.testing.assert_array_equal(np.asarray(got), [[0.5, 0.5]])


def test_nearest_rows_and_loss_match_plain_loops():
  p, i = _codes(10, 6), _codes(11, 6)
  index = np.array([0, 1, 2, 3, 4, 5])
  row_index = np.array([9, 2, 8, -1, 4, 7, -1, 1], np.int32)   # objects 2, 4, 1 revisit
  memory = NegativeQueue(jnp.asarray(_codes(12, 8)), jnp.asarray(_codes(13, 8)),
                         jnp.asarray(row_index))
  nn_p = np_nearest(p, np.asarray(memory.points), row_index, index)
  nn_i = np_nearest(i, np.asarray(memory.images), row_index, index)
  np.testing.assert_array_equal(
      np.asarray(losses.nearest_neighbour_rows(jnp.asarray(p), memory, "points",
                                               jnp.asarray(index))), nn_p)
  want = 0.5 * (np_contrastive(nn_p, i, 0.2) + np_contrastive(p, nn_i, 0.2))
  got = jax.jit(losses.nearest_neighbour_contrastive_loss, static_argnums=4)(
      jnp.asarray(p), jnp.asarray(i), memory, jnp.asarray(index), 0.2)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_gradient_matches_finite_differences_and_skips_the_neighbours():
  p, i, index = _codes(20, 4), _codes(21, 4), jnp.arange(4)
  memory = NegativeQueue(jnp.asarray(_codes(22, 6)), jnp.asarray(_codes(23, 6)),
                         jnp.asarray([10, 11, 12, 13, 14, 15], jnp.int32))
  f = lambda p_: losses.nearest_neighbour_contrastive_loss(p_, jnp.asarray(i), memory,
                                                           index, 0.2)
  g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(p)))
  # The neighbour choice is piecewise constant in p: finite differences see only the paths
  # through p's own codes, which is what the stop-gradient keeps.
  num = central_difference_gradient(lambda x: f(jnp.asarray(x)), p)
  np.testing.assert_allclose(g, num, atol=2e-3, rtol=1e-2)
  assert np.abs(g).max() > 1e-3
  batched = jax.vmap(lambda p_, i_: losses.nearest_neighbour_contrastive_loss(
      p_, i_, memory, index, 0.2))
  two = batched(jnp.stack([p, i]), jnp.stack([i, p]))
  np.testing.assert_allclose(float(two[0]), float(f(jnp.asarray(p))), rtol=1e-6)


def test_with_no_neighbour_the_own_code_stands_in_without_a_gradient():
  """An empty memory (the first steps): each code stands in for itself, as a constant, so
  the loss is InfoNCE(p, i) and its gradient half of InfoNCE's: only the path through the
  other modality's side. (Without the stop-gradient it would be InfoNCE's whole.)"""
  p, i, index = jnp.asarray(_codes(24, 4)), jnp.asarray(_codes(25, 4)), jnp.arange(4)
  empty = NegativeQueue.empty(6, p.shape[1])
  f = lambda p_, i_: losses.nearest_neighbour_contrastive_loss(p_, i_, empty, index, 0.2)
  plain = lambda p_, i_: losses.contrastive_loss(p_, i_, 0.2)
  np.testing.assert_allclose(float(f(p, i)), float(plain(p, i)), rtol=1e-6)
  for arg in (0, 1):
    got = np.asarray(jax.grad(f, argnums=arg)(p, i))
    want = 0.5 * np.asarray(jax.grad(plain, argnums=arg)(p, i))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.abs(want).max() > 1e-3


def test_objective_adds_the_weighted_term_and_fills_its_memory():
  spec = LossSpec(nn_positive_weight=0.5, nn_support_size=6, pairs=("full_full",),
                  lambda_r=0.0)
  obj = objectives.get_objective(spec, 8)
  state = obj.init_state(40)
  assert set(state) == {"support"} and int(state["support"].filled) == 0
  out = {"point/h": jnp.asarray(_codes(30, 4)), "image/h": jnp.asarray(_codes(31, 4))}
  batch = {"index": jnp.arange(4), "label": jnp.zeros(4, jnp.int32)}
  f = jax.jit(obj)
  plain = float(losses.contrastive_loss(out["point/h"], out["image/h"], spec.temperature))
  # Step 1: an empty memory, so each code is its own neighbour.
  total1, terms1, state = f(out, batch, state, 0)
  np.testing.assert_allclose(float(terms1["loss/nn_contrastive"]), plain, rtol=1e-6)
  np.testing.assert_allclose(float(total1), 1.5 * plain, rtol=1e-6)
  assert float(terms1["support/filled"]) == 4
  # Step 2: other objects; the neighbours come from the step-1 codes.
  batch2 = {"index": jnp.arange(4) + 20, "label": batch["label"]}
  out2 = {"point/h": jnp.asarray(_codes(32, 4)), "image/h": jnp.asarray(_codes(33, 4))}
  total2, terms2, state2 = f(out2, batch2, state, 1)
  nn_p = np_nearest(np.asarray(out2["point/h"]), np.asarray(state["support"].points),
                    np.asarray(state["support"].index), np.asarray(batch2["index"]))
  nn_i = np_nearest(np.asarray(out2["image/h"]), np.asarray(state["support"].images),
                    np.asarray(state["support"].index), np.asarray(batch2["index"]))
  p2, i2 = np.asarray(out2["point/h"]), np.asarray(out2["image/h"])
  want_nn = 0.5 * (np_contrastive(nn_p, i2, 0.2) + np_contrastive(p2, nn_i, 0.2))
  np.testing.assert_allclose(float(terms2["loss/nn_contrastive"]), want_nn, rtol=1e-5)
  np.testing.assert_allclose(float(total2), np_contrastive(p2, i2, 0.2) + 0.5 * want_nn,
                             rtol=1e-5)
  assert int(state2["support"].filled) == 6


@pytest.mark.parametrize("kwargs, match", [
    (dict(nn_positive_weight=1.0), "nn_support_size"),
    (dict(nn_support_size=64), "nn_positive_weight"),
    (dict(nn_positive_weight=-1.0, nn_support_size=64), "nn_positive_weight"),
    (dict(nn_positive_weight=1.0, nn_support_size=64, supervised=True), "unsupervised"),
])
def test_spec_refuses_inconsistent_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    LossSpec(**kwargs).validate()

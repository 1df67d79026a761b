"""Swapped prototype prediction (`loss.prototype_weight`, after SwAV): Sinkhorn-Knopp
against SwAV's Algorithm 1 written with NumPy loops and against its fixed point, the loss
against plain loops, its gradient against finite differences, and the model, config and
objective plumbing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import config as config_lib
from cmah_jax import losses, objectives
from cmah_jax.losses import LossSpec, NegativeQueue
from cmah_jax.models import cmah as cmah_model
from configs import default as default_config
from numeric import central_difference_gradient


def _codes(seed, b, k=5):
  return np.random.default_rng(seed).normal(size=(b, k)).astype(np.float32)


def np_sinkhorn(scores, eps, iterations):
  """SwAV's Algorithm 1 (published PyTorch, in NumPy): Q = exp(S / eps)^T, Q /= sum Q, then
  alternately rows (prototypes) to 1/P and columns (samples) to 1/N; returns N x Q^T."""
  q = np.exp(scores.astype(np.float64) / eps).T          # [P, N]
  q /= q.sum()
  p, n = q.shape
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= p
    q /= q.sum(axis=0, keepdims=True)
    q /= n
  return (q * n).T                                        # [N, P], rows sum to 1


def np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_swapped(hp, hi, c, tau, eps, iterations, memory=None):
  """Plain loops; the memory's filled rows join the equipartition, then are dropped."""
  c = np_normalize(c)
  sp, si = np_normalize(hp) @ c.T, np_normalize(hi) @ c.T
  b = len(hp)
  def targets(s, stored):
    if memory is None:
      return np_sinkhorn(s, eps, iterations)
    filled = np.asarray(memory.index) >= 0
    rows = np.concatenate([s, np_normalize(np.asarray(stored)[filled]) @ c.T])
    return np_sinkhorn(rows, eps, iterations)[:b]
  qp = targets(sp, None if memory is None else memory.points)
  qi = targets(si, None if memory is None else memory.images)
  total = 0.0
  for i in range(b):
    for q, s in ((qp[i], si[i]), (qi[i], sp[i])):
      logits = s / tau
      log_softmax = logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
      total -= np.sum(q * log_softmax)
  return total / (2 * b)


def test_sinkhorn_matches_swaps_algorithm_and_keeps_the_marginals():
  scores = np.random.default_rng(0).uniform(-1, 1, size=(12, 4)).astype(np.float32)
  for iterations in (1, 3):
    got = np.asarray(losses.sinkhorn_knopp(jnp.asarray(scores), 0.05, iterations))
    np.testing.assert_allclose(got, np_sinkhorn(scores, 0.05, iterations), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
  # At the fixed point each of the 4 prototypes holds 12 / 4 rows' mass.
  converged = np.asarray(losses.sinkhorn_knopp(jnp.asarray(scores), 0.5, 200))
  np.testing.assert_allclose(converged.sum(axis=0), 3.0, rtol=1e-4)


def test_sinkhorn_by_hand_two_rows_two_prototypes():
  # Both rows prefer prototype 0; equipartition must split them. Scores [[1, 0], [0.5, 0]]
  # with eps = 1: the converged plan is diag-heavy, Q = [[a, 1 - a], [1 - a, a]] with
  # a / (1 - a) = sqrt(e^1 / e^0.5) (the 2x2 Sinkhorn fixed point: the odds ratio of
  # Q equals that of exp(S), and the marginals force the symmetric form).
  got = np.asarray(losses.sinkhorn_knopp(jnp.asarray([[1.0, 0.0], [0.5, 0.0]]), 1.0, 500))
  r = np.sqrt(np.e / np.exp(0.5))
  a = r / (1 + r)
  np.testing.assert_allclose(got, [[a, 1 - a], [1 - a, a]], rtol=1e-5)


def test_sinkhorn_rows_that_sit_out_equal_dropping_them():
  scores = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
  valid = np.array([1, 0, 1, 1, 0, 1, 1], bool)
  got = np.asarray(losses.sinkhorn_knopp(jnp.asarray(scores), 0.1, 3, jnp.asarray(valid)))
  np.testing.assert_allclose(got[valid], np_sinkhorn(scores[valid], 0.1, 3), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_array_equal(got[~valid], 0.0)
  assert np.all(np.isfinite(got))
  # vmap over a stack of score matrices equals one at a time.
  stack = np.stack([scores, scores[::-1]])
  batched = jax.vmap(lambda s: losses.sinkhorn_knopp(s, 0.1, 3))(jnp.asarray(stack))
  np.testing.assert_allclose(np.asarray(batched[1]), np_sinkhorn(scores[::-1], 0.1, 3),
                             rtol=1e-4, atol=1e-6)


def test_loss_matches_plain_loops_with_and_without_memory():
  hp, hi, c = _codes(2, 6), _codes(3, 6), _codes(4, 4)
  f = jax.jit(losses.swapped_prototype_loss, static_argnums=(3, 4, 5))
  got = float(f(jnp.asarray(hp), jnp.asarray(hi), jnp.asarray(c), 0.1, 0.05, 3))
  np.testing.assert_allclose(got, np_swapped(hp, hi, c, 0.1, 0.05, 3), rtol=1e-4)
  memory = NegativeQueue(jnp.asarray(_codes(5, 8)), jnp.asarray(_codes(6, 8)),
                         jnp.asarray([4, 9, -1, 2, 8, -1, -1, 7], jnp.int32))
  got = float(losses.swapped_prototype_loss(jnp.asarray(hp), jnp.asarray(hi),
                                            jnp.asarray(c), 0.1, 0.05, 3, memory))
  np.testing.assert_allclose(got, np_swapped(hp, hi, c, 0.1, 0.05, 3, memory), rtol=1e-4)


def test_gradient_flows_through_the_predictions_only():
  hp, hi, c = _codes(7, 4), _codes(8, 4), _codes(9, 3)
  f = lambda hi_, c_: losses.swapped_prototype_loss(jnp.asarray(hp), hi_, c_, 0.1, 0.05, 3)
  g_hi, g_c = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(hi), jnp.asarray(c))
  # Reference: the loss with the point targets frozen at their value, in NumPy; image codes
  # also set point-side targets, which must carry no gradient.
  c_norm = np_normalize(c)
  q_points = np_sinkhorn(np_normalize(hp) @ c_norm.T, 0.05, 3)
  def frozen(hi_, c_):
    s_i = np_normalize(hi_) @ np_normalize(c_).T / 0.1
    s_p = np_normalize(hp) @ np_normalize(c_).T / 0.1
    q_images = np_sinkhorn(np_normalize(hi) @ c_norm.T, 0.05, 3)  # at the base point
    lsm = lambda s: s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    return -0.5 * (np.mean(np.sum(q_points * lsm(s_i), 1))
                   + np.mean(np.sum(q_images * lsm(s_p), 1)))
  np.testing.assert_allclose(np.asarray(g_hi), central_difference_gradient(
      lambda x: frozen(x, c), hi), atol=2e-3, rtol=1e-2)
  np.testing.assert_allclose(np.asarray(g_c), central_difference_gradient(
      lambda x: frozen(hi, x), c), atol=2e-3, rtol=1e-2)
  assert np.abs(np.asarray(g_c)).max() > 1e-3


def test_model_has_prototypes_only_when_asked():
  key = jax.random.key(0)
  model, variables = cmah_model.build("tiny", 8, key, num_prototypes=5)
  assert variables["params"]["prototypes"].shape == (5, 8)
  images = jnp.zeros((2, model.config.image_size, model.config.image_size, 3))
  points = jax.random.normal(key, (2, model.config.num_points, 3))
  out = model.apply(variables, images=images, points=points, train=True, mask_key=key,
                    rngs={"dropout": key})
  np.testing.assert_array_equal(np.asarray(out["prototypes"]),
                                np.asarray(variables["params"]["prototypes"]))
  _, plain = cmah_model.build("tiny", 8, key)
  assert "prototypes" not in plain["params"]


def test_objective_adds_the_weighted_term_and_fills_its_memory():
  spec = LossSpec(prototype_weight=0.5, prototype_queue_size=6, pairs=("full_full",),
                  lambda_r=0.0)
  obj = objectives.get_objective(spec, 5)
  state = obj.init_state(40)
  assert set(state) == {"assignment"}
  c = _codes(10, 3)
  out = {"point/h": jnp.asarray(_codes(11, 4)), "image/h": jnp.asarray(_codes(12, 4)),
         "prototypes": jnp.asarray(c)}
  batch = {"index": jnp.arange(4), "label": jnp.zeros(4, jnp.int32)}
  f = jax.jit(obj)
  _, _, state = f(out, batch, state, 0)
  out2 = {"point/h": jnp.asarray(_codes(13, 4)), "image/h": jnp.asarray(_codes(14, 4)),
          "prototypes": jnp.asarray(c)}
  total, terms, state2 = f(out2, {"index": jnp.arange(4) + 10, "label": batch["label"]},
                           state, 1)
  p2, i2 = np.asarray(out2["point/h"]), np.asarray(out2["image/h"])
  want = np_swapped(p2, i2, c, 0.1, 0.05, 3, state["assignment"])
  np.testing.assert_allclose(float(terms["loss/prototype"]), want, rtol=1e-4)
  plain = float(losses.contrastive_loss(out2["point/h"], out2["image/h"], 0.2))
  np.testing.assert_allclose(float(total), plain + 0.5 * want, rtol=1e-4)
  assert int(state2["assignment"].filled) == 6


def test_config_and_loss_refuse_missing_prototypes():
  cfg = default_config.get_config()
  cfg.loss.prototype_weight = 1.0
  with pytest.raises(ValueError, match="num_prototypes"):
    config_lib.resolve(cfg)
  with pytest.raises(KeyError, match="num_prototypes"):
    losses.cmah_loss({"point/h": jnp.ones((2, 4)), "image/h": jnp.ones((2, 4))},
                     LossSpec(prototype_weight=1.0, pairs=("full_full",), lambda_r=0.0))
  for kwargs, words in ((dict(prototype_weight=-1.0), "prototype_weight must be >= 0"),
                        (dict(sinkhorn_epsilon=0.0), "sinkhorn_epsilon must be > 0"),
                        (dict(sinkhorn_iterations=0), "sinkhorn_iterations must be an int"),
                        (dict(prototype_queue_size=64), "> 0 only with prototype_weight > 0"),
                        (dict(prototype_weight=1.0, supervised=True),
                         "is for the unsupervised loss")):
    with pytest.raises(ValueError, match=words):
      LossSpec(**kwargs).validate()

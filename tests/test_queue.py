"""The negative queue of the contrastive loss (`loss.queue_size`): NumPy reference, FIFO
by hand, the objective carrying it, and a training run that resumes it exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import checkpointing, losses, objectives, run, train
from cmah_jax.losses import NegativeQueue, LossSpec
from cmah_jax.sharding import data_sharding, make_mesh, replicated
from numeric import central_difference_gradient
from test_train import (assert_trees_close, losses_of, params_of,
                              signal_after_checkpoint, tiny_config)


def np_queued_one_way(a, b, queue_b, keep, tau):
  """-(1/B) sum_i log softmax over [b_0..b_{B-1}, kept queue_b rows] at b_i, plain loops."""
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  a, b, queue_b = unit(a), unit(b), unit(queue_b)
  total = 0.0
  for i in range(len(a)):
    sims = [float(a[i] @ b[j]) / tau for j in range(len(b))]
    sims += [float(a[i] @ queue_b[q]) / tau for q in range(len(queue_b)) if keep[i, q]]
    total += -(sims[i] - np.log(np.sum(np.exp(sims))))
  return total / len(a)


def _codes(seed, n, k=8):
  rng = np.random.default_rng(seed)
  return np.tanh(rng.normal(size=(n, k))).astype(np.float32)


def _queue(seed, q=5, k=8, index=(10, 11, 3, -1, -1)):
  """3 rows filled (objects 10, 11, 3), 2 empty."""
  return NegativeQueue(jnp.asarray(_codes(seed, q, k)), jnp.asarray(_codes(seed + 1, q, k)),
                       jnp.asarray(index, jnp.int32))


def test_queued_loss_matches_numpy_leaving_out_empty_rows_and_the_anchor_itself():
  p, i = _codes(0, 4), _codes(1, 4)
  index = np.array([3, 4, 5, 6])      # object 3 is also queue row 2: left out for anchor 0
  queue = _queue(2)
  keep = np.array([[q < 3 and qi != idx for q, qi in enumerate([10, 11, 3, -1, -1])]
                   for idx in index])
  assert keep.sum() == 3 * 4 - 1
  want = 0.5 * (np_queued_one_way(p, i, np.asarray(queue.images), keep, 0.2)
                + np_queued_one_way(i, p, np.asarray(queue.points), keep, 0.2))
  got = losses.queued_contrastive_loss(jnp.asarray(p), jnp.asarray(i), queue,
                                       jnp.asarray(index), 0.2)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # The queue adds negatives: the loss only grows; an empty queue is the in-batch loss.
  assert float(got) > float(losses.contrastive_loss(jnp.asarray(p), jnp.asarray(i), 0.2))
  empty = NegativeQueue.empty(5, 8)
  np.testing.assert_allclose(
      float(losses.queued_contrastive_loss(jnp.asarray(p), jnp.asarray(i), empty,
                                           jnp.asarray(index), 0.2)),
      float(losses.contrastive_loss(jnp.asarray(p), jnp.asarray(i), 0.2)), rtol=1e-6)


def test_queued_loss_gradient_matches_finite_differences_and_jits_under_vmap():
  p, i, index = _codes(3, 4), _codes(4, 4), jnp.arange(4)
  queue = _queue(5)
  f = lambda p_: losses.queued_contrastive_loss(p_, jnp.asarray(i), queue, index, 0.2)
  g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(p)))
  num = central_difference_gradient(lambda x: f(jnp.asarray(x)), p)
  np.testing.assert_allclose(g, num, atol=2e-3, rtol=1e-2)
  batched = jax.vmap(lambda p_, i_: losses.queued_contrastive_loss(p_, i_, queue, index, 0.2))
  two = batched(jnp.stack([p, i]), jnp.stack([i, p]))
  np.testing.assert_allclose(float(two[0]), float(f(jnp.asarray(p))), rtol=1e-6)


def test_push_is_first_in_first_out_by_hand():
  q = NegativeQueue.empty(5, 2)
  a = jnp.asarray([[1., 1.], [2., 2.]])
  q = q.push(a, -a, jnp.asarray([7, 8]))
  assert int(q.filled) == 2
  np.testing.assert_array_equal(np.asarray(q.index), [7, 8, -1, -1, -1])
  q = q.push(3 * a, -3 * a, jnp.asarray([1, 2]))
  q = q.push(5 * a, -5 * a, jnp.asarray([4, 5]))      # 6 pushed into 5 rows: 8 falls out
  assert int(q.filled) == 5
  np.testing.assert_array_equal(np.asarray(q.index), [4, 5, 1, 2, 7])
  np.testing.assert_array_equal(np.asarray(q.points)[:, 0], [5, 10, 3, 6, 1])
  np.testing.assert_array_equal(np.asarray(q.images)[:, 0], [-5, -10, -3, -6, -1])
  with pytest.raises(ValueError, match="larger than the queue"):
    NegativeQueue.empty(1, 2).push(a, a, jnp.asarray([0, 1]))


def test_objective_queues_the_full_pass_codes_of_the_full_full_pair_only():
  spec = LossSpec(queue_size=6, pairs=("full_full", "masked_masked"), lambda_r=0.0)
  obj = objectives.get_objective(spec, 8)
  state = obj.init_state(40)
  assert int(state["queue"].filled) == 0
  out = {f"{t}/{n}": jnp.asarray(_codes(s, 4))
         for s, (t, n) in enumerate([(t, n) for t in ("point", "image")
                                     for n in ("h", "h_masked")])}
  batch = {"index": jnp.arange(4), "label": jnp.zeros(4, jnp.int32)}
  f = jax.jit(obj)
  total1, terms1, state = f(out, batch, state, 0)
  plain = lambda a, b: float(losses.contrastive_loss(out[a], out[b], spec.temperature))
  np.testing.assert_allclose(float(total1), plain("point/h", "image/h")
                             + plain("point/h_masked", "image/h_masked"), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(state["queue"].points)[:4], out["point/h"])
  np.testing.assert_array_equal(np.asarray(state["queue"].images)[:4], out["image/h"])
  assert float(terms1["queue/filled"]) == 4
  batch2 = {"index": jnp.arange(4) + 20, "label": batch["label"]}
  total2, _, state2 = f(out, batch2, state, 1)
  queued = losses.queued_contrastive_loss(out["point/h"], out["image/h"], state["queue"],
                                          batch2["index"], spec.temperature)
  np.testing.assert_allclose(float(total2), float(queued)
                             + plain("point/h_masked", "image/h_masked"), rtol=1e-6)
  assert int(state2["queue"].filled) == 6
  with pytest.raises(ValueError, match="smaller than the training set"):
    obj.init_state(6)
  with pytest.raises(ValueError, match="queue_size"):
    LossSpec(queue_size=8, supervised=True).validate()
  with pytest.raises(ValueError, match="queue_size"):
    LossSpec(queue_size=-1).validate()


def test_queued_loss_two_devices_equal_one():
  p, i, index = _codes(6, 4), _codes(7, 4), jnp.arange(4)
  queue = _queue(8)
  f = jax.jit(losses.queued_contrastive_loss, static_argnums=4)
  want = float(f(jnp.asarray(p), jnp.asarray(i), queue, index, 0.2))
  mesh = make_mesh(jax.devices()[:2])
  sh, rep = data_sharding(mesh), replicated(mesh)
  got = f(jax.device_put(p, sh), jax.device_put(i, sh), jax.device_put(queue, rep),
          jax.device_put(index, sh), 0.2)
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_training_with_a_queue_resumes_exactly(tmp_path, monkeypatch, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("queue_data"))
  cfg = lambda: tiny_config(data_dir, **{"loss.queue_size": 16})
  full = train.train_and_evaluate(cfg(), str(tmp_path / "full"))
  assert int(full.state["loss_state"]["queue"].filled) == 16
  real_save = checkpointing.save
  monkeypatch.setattr(checkpointing, "save", signal_after_checkpoint(real_save, 3))
  assert run.run_experiment(cfg(), str(tmp_path / "resumed")).metrics["stopped_at"] == 3
  monkeypatch.setattr(checkpointing, "save", real_save)
  resumed = train.train_and_evaluate(cfg(), str(tmp_path / "resumed"))
  assert_trees_close(params_of(resumed), params_of(full), rtol=1e-5, atol=1e-6)
  assert_trees_close(jax.device_get(resumed.state["loss_state"]),
                     jax.device_get(full.state["loss_state"]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses_of(str(tmp_path / "resumed")),
                             losses_of(str(tmp_path / "full")), rtol=1e-5)

"""The optimiser's restart for `loss.reconstruction_only_steps`, against a NumPy Adam."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cmah_jax import optim
from cmah_jax.config import OptimSpec


def np_adam_directions(grads, b1=0.9, b2=0.999, eps=1e-8):
  """Adam's update directions m_hat / (sqrt(v_hat) + eps) for a sequence of gradients,
  moments from zero and bias correction from t = 1 (Kingma & Ba, Algorithm 1)."""
  m = np.zeros_like(grads[0])
  v = np.zeros_like(grads[0])
  out = []
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    out.append((m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
  return out


def test_restarted_adam_is_a_fresh_adam_from_the_restart_step():
  rng = np.random.default_rng(0)
  # Small gradients before the restart, 100x larger after (the objective changes there).
  grads = [rng.normal(size=5) * (0.01 if t < 4 else 1.0) for t in range(9)]
  tx = optim.restarted_at(optax.scale_by_adam(), 4)
  params = jnp.zeros(5)
  state = tx.init(params)
  got = []
  for g in grads:
    update, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    got.append(np.asarray(update))
  want = np_adam_directions(grads[:4]) + np_adam_directions(grads[4:])
  np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=2e-4, atol=1e-6)
  # Why: after 1,200 updates of small gradients (bias correction long gone), a carried
  # Adam scales the first large gradient by the old second moments, ~2.6x a fresh one's.
  history = [rng.normal(size=5) * 0.01 for _ in range(1200)]
  carried = np_adam_directions(history + grads[4:5])[-1]
  assert np.mean(np.abs(carried)) > 2 * np.mean(np.abs(want[4]))
  with pytest.raises(ValueError, match="needs params"):
    tx.update(jnp.ones(5), state)


@pytest.mark.parametrize("warmup,total,want", [(10, 100, 10), (100, 50, 49), (5, 1, 0)])
def test_a_warmup_longer_than_the_run_is_cut_and_the_log_says_so(warmup, total, want):
  """The schedule peaks at the effective warm-up (linear from 0 before it), and the train
  log's schedule line reports that warm-up and, where it differs, the configured one."""
  from cmah_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  spec = OptimSpec(warmup_steps=warmup)
  assert optim.effective_warmup_steps(warmup, total) == want
  lr = optim.learning_rate_schedule(spec, 128, total)
  peak = optim.peak_learning_rate(spec, 128)
  assert float(lr(want)) == pytest.approx(peak)
  if want > 1:
    assert float(lr(want // 2)) == pytest.approx(peak * (want // 2) / want)
  from configs import default  # pylint: disable=import-outside-toplevel
  cfg = dataclasses.replace(config_lib.resolve(default.get_config()), total_steps=total,
                            optim=spec, eval_every_steps=0)
  line = optim.describe_schedule(cfg, 640)
  assert f"warm-up {want} steps" in line
  assert (f"config.optim.warmup_steps={warmup} cut to fit {total} steps" in line) == (
      want != warmup)


def test_the_schedule_line_names_the_restart_and_its_second_warmup():
  """With `loss.reconstruction_only_steps` the log's schedule line says where L_c joins and
  that the learning rate warms up again there, over the warm-up that `make_optimizer`'s
  re-warmed schedule uses (its learning rate is back at the plain schedule's exactly
  `optim.warmup_steps` after the restart)."""
  from cmah_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  cfg = config_lib.resolve(default.get_config())
  cfg = dataclasses.replace(cfg, total_steps=400, eval_every_steps=0,
                            optim=OptimSpec(warmup_steps=30),
                            loss=dataclasses.replace(cfg.loss, reconstruction_only_steps=120))
  line = optim.describe_schedule(cfg, 640)
  assert ("reconstruction alone until step 120, then the full objective with a fresh Adam "
          "and a second warm-up of 30 steps") in line, line
  _, lr = optim.make_optimizer(cfg.optim, 128, 400, restart_step=120)
  plain = optim.learning_rate_schedule(cfg.optim, 128, 400)
  assert float(lr(120 + 29)) < float(plain(120 + 29))
  assert float(lr(120 + 30)) == pytest.approx(float(plain(120 + 30)))
  plain_cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss,
                                                                reconstruction_only_steps=0))
  assert "reconstruction alone" not in optim.describe_schedule(plain_cfg, 640)
  assert "run ends before" not in line
  late = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss,
                                                           reconstruction_only_steps=380))
  assert ("second warm-up of 30 steps, which the run ends before (20 steps after the "
          "restart)") in optim.describe_schedule(late, 640)


def test_rewarmed_schedule_warms_up_again_at_the_restart():
  spec = OptimSpec(warmup_steps=10)
  base = optim.learning_rate_schedule(spec, 128, 100)
  lr = optim.rewarmed_schedule(base, 40, 10)
  for t in (0, 5, 20, 39):
    assert float(lr(t)) == pytest.approx(float(base(t)))
  for t, frac in ((40, 0.0), (45, 0.5), (50, 1.0), (80, 1.0)):
    assert float(lr(t)) == pytest.approx(frac * float(base(t)), abs=1e-12)


def test_make_optimizer_restarts_only_when_asked():
  spec = OptimSpec(warmup_steps=2)
  params = {"w": jnp.ones((3, 3)), "b": jnp.zeros(3)}
  # Off: exactly the optimiser every earlier run trained and checkpointed with.
  plain, schedule = optim.make_optimizer(spec, 128, 50)
  reference = optax.chain(
      optax.clip_by_global_norm(spec.grad_clip_norm),
      optax.adamw(schedule, b1=spec.b1, b2=spec.b2, weight_decay=spec.weight_decay,
                  mask=optim.decay_mask))
  got, want = plain.init(params), reference.init(params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  rng = np.random.default_rng(1)
  for _ in range(4):
    grads = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
    (u1, got), (u2, want) = plain.update(grads, got, params), reference.update(grads, want, params)
    for a, b in zip(jax.tree.leaves((u1, got)), jax.tree.leaves((u2, want))):
      np.testing.assert_array_equal(a, b)
  tx, lr = optim.make_optimizer(spec, 128, 50, restart_step=20)
  assert float(lr(20)) == 0.0 and float(lr(19)) > 0
  state = tx.init(params)
  grads = {"w": jnp.full((3, 3), 0.5), "b": jnp.ones(3)}
  for _ in range(21):  # 20 updates, then the restart (learning rate 0: no move)
    before = params
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(params["b"], before["b"])
  for bad in (50, 60):
    with pytest.raises(ValueError, match="reconstruction_only_steps=.* must be below"):
      optim.make_optimizer(spec, 128, 50, restart_step=bad)

"""`relational_distillation_loss` (round 22) against a hand-worked example and a NumPy
loop reference; the teacher gets no gradient; `cmah_loss` adds it with its weight."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import losses
from cmah_jax.sharding import data_sharding, make_mesh


def np_relational_kl(student, teacher, tau):
  """mean_i sum_{j != i} t_ij log(t_ij / s_ij), t and s the softmax over j != i of the
  cosine / tau: plain loops."""
  def rows(h):
    h = h / np.linalg.norm(h, axis=1, keepdims=True)
    out = []
    for i in range(len(h)):
      others = [j for j in range(len(h)) if j != i]
      logits = np.array([float(h[i] @ h[j]) / tau for j in others])
      p = np.exp(logits - logits.max())
      out.append(dict(zip(others, p / p.sum())))
    return out
  t, s = rows(np.asarray(teacher, np.float64)), rows(np.asarray(student, np.float64))
  return float(np.mean([sum(t[i][j] * math.log(t[i][j] / s[i][j]) for j in t[i])
                        for i in range(len(t))]))


def test_hand_worked_three_objects():
  # Teacher: objects 0 and 1 alike (cos 1), 2 unlike both (cos 0). Student: 1 and 2 alike.
  # tau = 1, a = e / (e + 1), b = 1 / (e + 1):
  #   row 0: t = (a, b) over (1, 2), s = (1/2, 1/2): a log 2a + b log 2b
  #   row 1: t = (a, b) over (0, 2), s = (b, a):     (a - b) log(a / b) = (a - b)
  #   row 2: t = (1/2, 1/2) over (0, 1), s = (b, a): -1/2 log(4ab)
  teacher = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  student = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  e = math.e
  a, b = e / (e + 1), 1 / (e + 1)
  want = (a * math.log(2 * a) + b * math.log(2 * b) + (a - b) - 0.5 * math.log(4 * a * b)) / 3
  got = float(losses.relational_distillation_loss(student, teacher, 1.0))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got, np_relational_kl(student, teacher, 1.0), rtol=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_matches_numpy_with_different_code_widths(tau):
  rng = np.random.default_rng(3)
  student = np.tanh(rng.normal(size=(7, 16))).astype(np.float32)
  teacher = np.tanh(rng.normal(size=(7, 32))).astype(np.float32)
  got = jax.jit(losses.relational_distillation_loss, static_argnums=2)(
      student, teacher, tau)
  np.testing.assert_allclose(float(got), np_relational_kl(student, teacher, tau), rtol=1e-5)


def test_zero_when_relations_agree_and_teacher_gets_no_gradient():
  rng = np.random.default_rng(4)
  teacher = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
  # Cosines ignore each row's scale: a rescaled teacher has the teacher's relations.
  scaled = teacher * jnp.asarray(rng.uniform(0.5, 3.0, size=(6, 1)), jnp.float32)
  assert abs(float(losses.relational_distillation_loss(scaled, teacher, 0.2))) < 1e-6
  student = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
  assert float(losses.relational_distillation_loss(student, teacher, 0.2)) > 0.01
  g_student, g_teacher = jax.grad(losses.relational_distillation_loss, argnums=(0, 1))(
      student, teacher, 0.2)
  assert float(jnp.abs(g_teacher).max()) == 0.0
  assert np.all(np.isfinite(np.asarray(g_student))) and float(jnp.abs(g_student).max()) > 0
  # One gradient step on the student brings its relations nearer the teacher's.
  before = float(losses.relational_distillation_loss(student, teacher, 0.2))
  after = float(losses.relational_distillation_loss(student - 0.05 * g_student, teacher, 0.2))
  assert after < before


def test_sharded_equals_single_device():
  rng = np.random.default_rng(5)
  student = np.tanh(rng.normal(size=(8, 16))).astype(np.float32)
  teacher = np.tanh(rng.normal(size=(8, 16))).astype(np.float32)
  fn = jax.jit(losses.relational_distillation_loss, static_argnums=2)
  single = fn(student, teacher, 0.2)
  mesh = make_mesh(jax.devices()[:4])
  sharded = fn(jax.device_put(student, data_sharding(mesh)),
               jax.device_put(teacher, data_sharding(mesh)), 0.2)
  np.testing.assert_allclose(float(sharded), float(single), rtol=1e-6)


def test_clear_errors():
  with pytest.raises(ValueError, match=r"h_student \(4, 8\) and h_teacher \(5, 8\)"):
    losses.relational_distillation_loss(jnp.ones((4, 8)), jnp.ones((5, 8)), 0.2)
  with pytest.raises(ValueError, match="at least 3"):
    losses.relational_distillation_loss(jnp.ones((2, 8)), jnp.ones((2, 8)), 0.2)
  with pytest.raises(ValueError, match="temperature"):
    losses.relational_distillation_loss(jnp.ones((4, 8)), jnp.ones((4, 8)), 0.0)
  with pytest.raises(ValueError, match="relation_weight"):
    losses.LossSpec(relation_weight=-1.0).validate()


def test_cmah_loss_adds_the_term_with_its_weight():
  rng = np.random.default_rng(6)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  out = {"point/h": f(5, 8), "image/h": f(5, 8)}
  spec = losses.LossSpec(temperature=0.3, pairs="full_full", lambda_r=0.0)
  base, terms = losses.cmah_loss(out, spec)
  assert "loss/relation" not in terms
  total, terms = losses.cmah_loss(out, dataclasses.replace(spec, relation_weight=2.0))
  want = np_relational_kl(np.asarray(out["image/h"]), np.asarray(out["point/h"]), 0.3)
  np.testing.assert_allclose(float(terms["loss/relation"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(total), float(base) + 2.0 * want, rtol=1e-5)
  # The image tower learns from it; the point tower only from the other terms.
  g = jax.grad(lambda o: losses.cmah_loss(o, dataclasses.replace(spec, relation_weight=2.0))[0]
               - losses.cmah_loss(o, spec)[0])(out)
  assert float(jnp.abs(g["point/h"]).max()) < 1e-6
  assert float(jnp.abs(g["image/h"]).max()) > 1e-3

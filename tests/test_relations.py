"""`relational_distillation_loss` (round 22) against a hand-worked example and a NumPy
loop reference; the teacher gets no gradient; `cmah_loss` adds it with its weight."""
import dataclasses
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import config as config_lib
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
  with pytest.raises(ValueError, match=r"h_student \(4, 8\), h_candidates \(4, 8\) and "
                     r"h_teacher \(5, 8\)"):
    losses.relational_distillation_loss(jnp.ones((4, 8)), jnp.ones((5, 8)), 0.2)
  with pytest.raises(ValueError, match="at least 3"):
    losses.relational_distillation_loss(jnp.ones((2, 8)), jnp.ones((2, 8)), 0.2)
  with pytest.raises(ValueError, match="temperature"):
    losses.relational_distillation_loss(jnp.ones((4, 8)), jnp.ones((4, 8)), 0.0)
  with pytest.raises(ValueError, match=r"h_candidates \(4, 6\)"):
    losses.relational_distillation_loss(jnp.ones((4, 8)), jnp.ones((4, 8)), 0.2,
                                        jnp.ones((4, 6)))
  with pytest.raises(ValueError, match="relation_weight"):
    losses.LossSpec(relation_weight=-1.0).validate()
  with pytest.raises(ValueError, match="relation_targets='points'"):
    losses.LossSpec(relation_weight=1.0, relation_targets="points").validate()


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


def np_cross_relational_kl(anchors, candidates, teacher, tau):
  """As `np_relational_kl`, the student's row i over cos(anchors_i, candidates_j), j != i."""
  def row(a, c, i):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    others = [j for j in range(len(a)) if j != i]
    logits = np.array([float(a[i] @ c[j]) / tau for j in others])
    p = np.exp(logits - logits.max())
    return dict(zip(others, p / p.sum()))
  n = len(anchors)
  anchors, candidates, teacher = (np.asarray(x, np.float64)
                                  for x in (anchors, candidates, teacher))
  total = 0.0
  for i in range(n):
    t, s = row(teacher, teacher, i), row(anchors, candidates, i)
    total += sum(t[j] * math.log(t[j] / s[j]) for j in t)
  return total / n


def test_cross_modal_candidates_match_numpy_and_hand_worked():
  rng = np.random.default_rng(8)
  img, pts = (np.tanh(rng.normal(size=(6, 16))).astype(np.float32) for _ in range(2))
  got = losses.relational_distillation_loss(img, pts, 0.3, h_candidates=pts)
  np.testing.assert_allclose(float(got), np_cross_relational_kl(img, pts, pts, 0.3),
                             rtol=1e-5)
  # Hand-worked, tau = 1: points 0, 1 alike, 2 unlike (teacher rows as in the 3-object
  # example: (a, b), (a, b), (1/2, 1/2)). Image anchors: image 0 = point 2's direction,
  # so image 0 ranks point 1 (cos 0) and point 2 (cos 1) as (b, a); image 1 = point 0's,
  # ranking points 0, 2 as (a, b); image 2 = (1, 1) / sqrt 2, equally near points 0 and 1
  # -> (1/2, 1/2). KL: (a - b) log(a / b) = a - b, then 0, then 0.
  pts3 = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  img3 = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
  e = math.e
  a, b = e / (e + 1), 1 / (e + 1)
  np.testing.assert_allclose(
      float(losses.relational_distillation_loss(img3, pts3, 1.0, h_candidates=pts3)),
      (a - b) / 3, rtol=1e-6)
  # The candidates (point codes) get a gradient, the teacher (the same point codes, as
  # teacher) none: differentiate through the candidates only.
  g_cand = jax.grad(lambda c: losses.relational_distillation_loss(img, pts, 0.3, c))(pts)
  g_teach = jax.grad(lambda t: losses.relational_distillation_loss(img, t, 0.3, pts))(pts)
  assert float(jnp.abs(g_cand).max()) > 0 and float(jnp.abs(g_teach).max()) == 0.0


def test_cmah_loss_cross_modal_relations_average_both_directions():
  rng = np.random.default_rng(9)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  out = {"point/h": f(5, 8), "image/h": f(5, 8)}
  spec = losses.LossSpec(temperature=0.3, pairs="full_full", lambda_r=0.0,
                         relation_weight=1.5, relation_targets="cross_modal").validate()
  base, _ = losses.cmah_loss(out, dataclasses.replace(spec, relation_weight=0.0))
  total, terms = losses.cmah_loss(out, spec)
  p, i = np.asarray(out["point/h"]), np.asarray(out["image/h"])
  want = 0.5 * (np_cross_relational_kl(i, p, p, 0.3) + np_cross_relational_kl(p, i, p, 0.3))
  np.testing.assert_allclose(float(terms["loss/relation"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(total), float(base) + 1.5 * want, rtol=1e-5)


def test_relation_targets_are_inert_without_the_term():
  """With relation_weight = 0 the targets are never read: the loss is the same number and
  the config the same fingerprint whatever they are; with the term on they differ."""
  def fingerprint(**loss):
    c = importlib.import_module("configs.default").get_config()
    c.loss.update(loss)
    return config_lib.resolve(c).fingerprint()

  assert (fingerprint(relation_targets="cross_modal") == fingerprint()
          == fingerprint(relation_targets="image_image"))
  assert fingerprint(relation_weight=1.0) != fingerprint(relation_weight=1.0,
                                                         relation_targets="cross_modal")
  rng = np.random.default_rng(10)
  out = {"point/h": jnp.asarray(rng.normal(size=(5, 8)), jnp.float32),
         "image/h": jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)}
  spec = losses.LossSpec(pairs="full_full", lambda_r=0.0)
  totals = [float(losses.cmah_loss(out, dataclasses.replace(spec, relation_targets=t))[0])
            for t in ("image_image", "cross_modal")]
  assert totals[0] == totals[1]
  on = [float(losses.cmah_loss(out, dataclasses.replace(
      spec, relation_weight=1.0, relation_targets=t))[1]["loss/relation"])
        for t in ("image_image", "cross_modal")]
  assert on[0] != on[1]

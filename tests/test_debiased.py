"""Debiased InfoNCE (`loss.debias_positive_prior`, Chuang et al. 2020): plain loops of the
published formula, a hand-worked case where the clamp binds, prior 0 = the plain loss, the
gradient, and the spec's checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import losses
from cmah_jax.losses import LossSpec
from numeric import central_difference_gradient
from test_queue import _codes


def np_debiased(p, i, tau, prior):
  """Eq. (6) of Chuang et al. with N = B - 1 negatives, point and image anchors averaged."""
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  s = unit(p.astype(np.float64)) @ unit(i.astype(np.float64)).T
  b = len(p)
  n = b - 1
  def anchors(sim):
    total = 0.0
    for a in range(b):
      pos = np.exp(sim[a, a] / tau)
      neg = sum(np.exp(sim[a, j] / tau) for j in range(b) if j != a)
      ng = max((neg - prior * n * pos) / (1 - prior), n * np.exp(-1 / tau))
      total += -np.log(pos / (pos + ng))
    return total / b
  return 0.5 * (anchors(s) + anchors(s.T))


@pytest.mark.parametrize("prior", [0.05, 0.2, 0.5])
def test_matches_the_published_formula(prior):
  p, i = _codes(40, 8), _codes(41, 8)
  got = jax.jit(losses.debiased_contrastive_loss, static_argnums=(2, 3))(
      jnp.asarray(p), jnp.asarray(i), 0.2, prior)
  np.testing.assert_allclose(float(got), np_debiased(p, i, 0.2, prior), rtol=1e-5)


def test_prior_zero_is_the_plain_loss_and_a_prior_forgives_negatives():
  p, i = jnp.asarray(_codes(42, 8)), jnp.asarray(_codes(43, 8))
  plain = float(losses.contrastive_loss(p, i, 0.2))
  np.testing.assert_allclose(float(losses.debiased_contrastive_loss(p, i, 0.2, 0.0)), plain,
                             rtol=1e-6)
  # Pairs that already match (each positive above its average negative): the prior's share
  # comes out of the denominator and the loss drops.
  matched = p + 0.3 * jnp.asarray(_codes(44, 8))
  assert (float(losses.debiased_contrastive_loss(p, matched, 0.2, 0.1))
          < float(losses.contrastive_loss(p, matched, 0.2)))


def test_hand_worked_pair_where_the_clamp_binds():
  # B = 2, 1-D codes: pairs aligned (cosine 1), the other object opposite (cosine -1).
  p = jnp.asarray([[1.0], [-1.0]])
  i = jnp.asarray([[1.0], [-1.0]])
  tau, prior = 0.5, 0.5
  # pos = e^2, neg = e^-2; (e^-2 - 0.5 e^2) / 0.5 < 0, so Ng = N e^(-1/tau) = e^-2:
  # l = -log(e^2 / (e^2 + e^-2)) = log(1 + e^-4) for every anchor.
  want = np.log1p(np.exp(-4.0))
  np.testing.assert_allclose(float(losses.debiased_contrastive_loss(p, i, tau, prior)), want,
                             rtol=1e-5)  # float32: log(e^2 + e^-2) - 2 loses digits


def test_gradient_matches_finite_differences():
  p, i = _codes(45, 5), _codes(46, 5)
  f = lambda p_: losses.debiased_contrastive_loss(p_, jnp.asarray(i), 0.2, 0.05)
  g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(p)))
  num = central_difference_gradient(lambda x: f(jnp.asarray(x)), p)
  np.testing.assert_allclose(g, num, atol=2e-3, rtol=1e-2)


def test_cmah_loss_uses_it_in_every_pair():
  out = {f"{t}/{n}": jnp.asarray(_codes(s, 6)) for s, (t, n) in enumerate(
      [(t, n) for t in ("point", "image") for n in ("h", "h_masked")])}
  o = {k: np.asarray(v) for k, v in out.items()}
  # The paper's pairs, full-full and masked-masked.
  spec = LossSpec(debias_positive_prior=0.1, lambda_r=0.0, pairs="full_full,masked_masked")
  total, _ = losses.cmah_loss(out, spec)
  want = sum(np_debiased(o[f"point/{n}"], o[f"image/{n}"], spec.temperature, 0.1)
             for n in ("h", "h_masked"))
  np.testing.assert_allclose(float(total), want, rtol=1e-5)
  # The default since round 18: full-full, and the masked points against the full image.
  spec = LossSpec(debias_positive_prior=0.1, lambda_r=0.0)
  total, _ = losses.cmah_loss(out, spec)
  want = sum(np_debiased(o[f"point/{n}"], o["image/h"], spec.temperature, 0.1)
             for n in ("h", "h_masked"))
  np.testing.assert_allclose(float(total), want, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(debias_positive_prior=1.0),
                                    dict(debias_positive_prior=-0.1),
                                    dict(debias_positive_prior=0.1, supervised=True),
                                    dict(debias_positive_prior=0.1, queue_size=64)])
def test_spec_refuses_bad_settings(kwargs):
  with pytest.raises(ValueError, match="debias_positive_prior"):
    LossSpec(**kwargs).validate()

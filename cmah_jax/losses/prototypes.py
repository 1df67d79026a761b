"""Cross-modal swapped prototype prediction [ours, after SwAV (Caron et al., NeurIPS 2020)
and cross-modal clustering (XDC, Alwassel et al., NeurIPS 2020)].

Instance discrimination (L_c) pushes every other object away, those of the query's own
kind included; retrieval is judged by kind. Here both towers' continuous codes are scored
against P learned prototypes (`model.num_prototypes`); each modality's soft assignment,
equipartitioned over the batch by Sinkhorn-Knopp so that no prototype takes everything,
is the target the *other* modality's scores must predict. Objects that share a prototype
are pulled together whatever their instance.

Not kept: on our validation carve at 64 bits it lowered mAP in every direction (README,
round 9); correct, not useful, here.

- `sinkhorn_knopp`: SwAV's Algorithm 1 in log space, with rows that may sit out.
- `swapped_prototype_loss`: the symmetric swapped prediction, optionally with a memory of
  earlier codes (`NegativeQueue`) taking part in the equipartition, as SwAV's queue does
  for small batches.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cmah_jax.losses.contrastive import l2_normalize
from cmah_jax.losses.memory import NegativeQueue


def sinkhorn_knopp(scores: jax.Array, epsilon: float, iterations: int,
                   valid: jax.Array | None = None) -> jax.Array:
  """Soft assignments of N rows to P prototypes with equal shares [SwAV, Algorithm 1].

  `Q = exp(scores / epsilon)`, then `iterations` rounds of: scale the columns so that each
  prototype holds 1/P of the mass, then the rows so that each row holds 1/N (N = valid
  rows). Returned with every valid row summing to 1. No gradient flows through it.

  Args:
    scores: `[N, P]` float, e.g. cosines of codes and prototypes.
    epsilon: > 0, the entropy weight (smaller: harder assignments).
    iterations: >= 1.
    valid: `[N]` bool rows taking part (None: all); the others get all-zero rows.
  Returns:
    `[N, P]` float32.
  """
  if scores.ndim != 2:
    raise ValueError(f"sinkhorn_knopp: scores {tuple(scores.shape)} must be [N, P]")
  if not epsilon > 0 or int(iterations) < 1:
    raise ValueError(f"sinkhorn_knopp: need epsilon > 0 and iterations >= 1, got "
                     f"{epsilon!r}, {iterations!r}")
  n, p = scores.shape
  if valid is None:
    valid = jnp.ones((n,), bool)
  keep = valid[:, None]
  log_n = jnp.log(jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32))
  log_q = jnp.where(keep, jax.lax.stop_gradient(scores).astype(jnp.float32) / epsilon,
                    -jnp.inf)
  for _ in range(int(iterations)):
    log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - math.log(p)
    row = jax.nn.logsumexp(jnp.where(keep, log_q, 0.0), axis=1, keepdims=True)
    log_q = jnp.where(keep, log_q - row - log_n, -jnp.inf)
  return jnp.where(keep, jnp.exp(log_q + log_n), 0.0)


def swapped_prototype_loss(h_points: jax.Array, h_images: jax.Array, prototypes: jax.Array,
                           temperature: float, epsilon: float, iterations: int,
                           memory: NegativeQueue | None = None) -> jax.Array:
  """Symmetric swapped prediction across modalities [after SwAV / XDC]:

  `-(1/2B) sum_i [ sum_p q^P_ip log softmax_p(s^I_i / tau) + sum_p q^I_ip log softmax_p(
  s^P_i / tau) ]`, where `s^P = norm(h_points) norm(C)^T` (likewise `s^I`), C the
  prototypes, and `q^P = sinkhorn_knopp(s^P)` (rows of the batch; with a `memory`, its
  filled rows join the equipartition and are then dropped). The targets q carry no
  gradient; the prototypes and both towers' codes get it through the predictions.

  Args:
    h_points, h_images: `[B, K]` float (row i of each is the same object).
    prototypes: `[P, K]` float (normalised here).
    temperature: tau > 0 of the predictions.
    epsilon, iterations: of `sinkhorn_knopp`.
    memory: `NegativeQueue` of earlier batches' codes, or None.
  Returns:
    scalar float32.
  """
  b, k = h_points.shape
  if h_images.shape != (b, k) or prototypes.ndim != 2 or prototypes.shape[1] != k:
    raise ValueError(f"swapped_prototype_loss: h_points {tuple(h_points.shape)}, h_images "
                     f"{tuple(h_images.shape)} and prototypes {tuple(prototypes.shape)} "
                     "must be [B, K], [B, K] and [P, K]")
  if not temperature > 0:
    raise ValueError(f"swapped_prototype_loss: temperature must be > 0, got {temperature!r}")
  c = l2_normalize(prototypes)
  s_points, s_images = l2_normalize(h_points) @ c.T, l2_normalize(h_images) @ c.T  # [B, P]

  def targets(s, stored):
    if memory is None:
      return sinkhorn_knopp(s, epsilon, iterations)
    rows = jnp.concatenate([s, l2_normalize(stored) @ c.T], axis=0)       # [B + Q, P]
    valid = jnp.concatenate([jnp.ones((b,), bool), memory.index >= 0])
    return sinkhorn_knopp(rows, epsilon, iterations, valid)[:b]

  q_points = targets(s_points, None if memory is None else memory.points)
  q_images = targets(s_images, None if memory is None else memory.images)
  log_p_points = jax.nn.log_softmax(s_points / temperature, axis=1)
  log_p_images = jax.nn.log_softmax(s_images / temperature, axis=1)
  return -0.5 * (jnp.mean(jnp.sum(q_points * log_p_images, axis=1))
                 + jnp.mean(jnp.sum(q_images * log_p_points, axis=1)))

"""In-batch cross-modal contrastive losses on continuous codes h, each a pure function.

- `contrastive_loss`: symmetric cross-modal InfoNCE on L2-normalised codes [paper], written
  over the whole (global) batch as one `[B, B]` logits matrix. Under `jax.jit` with
  batch-sharded inputs XLA inserts the all-gather, so the negatives are the global batch
  across all devices and hosts; no hand-written collective.
- `debiased_contrastive_loss`: the same with the expected share of same-kind negatives
  taken out of the denominator [Chuang et al. 2020].
- `supervised_contrastive_loss`: every same-label cross-modal pair a positive (SupCon);
  the upper bound on labelled data.
- `soft_contrastive_loss` with `joint_affinity_targets`: soft targets [after DJSRH].
- `l2_normalize`, `cross_modal_logits`, `square_diagonal`: the primitives they share with
  `losses.memory`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_NORM_EPS = 1e-12


def l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _NORM_EPS)


def cross_modal_logits(h_points: jax.Array, h_images: jax.Array, temperature: float) -> jax.Array:
  if h_points.ndim != 2 or h_points.shape != h_images.shape:
    raise ValueError(f"contrastive loss: h_points {tuple(h_points.shape)} and h_images "
                     f"{tuple(h_images.shape)} must both be [B, K]")
  if not temperature > 0:
    raise ValueError(f"contrastive loss: temperature must be > 0, got {temperature!r}")
  return l2_normalize(h_points) @ l2_normalize(h_images).T / temperature  # [B, B]


def square_diagonal(x: jax.Array) -> jax.Array:
  """The diagonal of a square `[B, B]` matrix as `[B]`, by a masked row sum.

  Not `jnp.diagonal`: for square matrices it lowers to a `conditional`
  (`lax.platform_dependent`); with the batch sharded over processes its all-gathers then
  sit inside the conditional's branch, which XLA:CPU runs concurrently with the step's
  other collectives, and gloo (one tag for every collective) mixes up their messages: the
  multi-process CPU run aborts ("collective mismatch") or, for equal sizes, exchanges
  wrong data. The masked sum is exact and needs no collective.
  """
  eye = jnp.eye(x.shape[0], dtype=bool)
  return jnp.sum(jnp.where(eye, x, jnp.zeros_like(x)), axis=1)


def contrastive_loss(h_points: jax.Array, h_images: jax.Array, temperature: float
                     ) -> jax.Array:
  """Symmetric InfoNCE [paper]: `(l(P, I) + l(I, P)) / 2`, with
  `l(a, b) = -(1/B) sum_i log softmax_j(<a_i, b_j> / tau)[i]` on L2-normalised rows.

  Args:
    h_points, h_images: `[B, K]` float (row i of each is the same object).
    temperature: tau > 0.
  Returns:
    scalar float32.
  """
  logits = cross_modal_logits(h_points, h_images, temperature)
  diag = square_diagonal(logits)
  l_pi = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  l_ip = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  return 0.5 * (l_pi + l_ip)


def debiased_contrastive_loss(h_points: jax.Array, h_images: jax.Array, temperature: float,
                              positive_prior: float) -> jax.Array:
  """Symmetric debiased InfoNCE [Chuang et al., "Debiased Contrastive Learning", NeurIPS
  2020]: a fraction `positive_prior` (tau+, the chance that a random other object is of the
  anchor's kind) of each anchor's negatives are really positives, so their expected share
  is taken out of the denominator. For anchor i with `pos = exp(s_ii / tau)` and the
  `N = B - 1` negatives' `neg = sum_{j != i} exp(s_ij / tau)`:

    Ng = max((neg - tau+ N pos) / (1 - tau+), N exp(-1 / tau)),
    l_i = -log(pos / (pos + Ng)),

  averaged over anchors, for point anchors (rows) and image anchors (columns), and the two
  directions averaged. Equals `contrastive_loss` at `positive_prior = 0` (where the clamp
  never binds: every term is at least exp(-1 / tau)).
  Not kept: tau+ = 1/20 lowered validation mAP at 64 bits (0.707 / 0.680 against 0.728 /
  0.705; README, round 8).

  Args:
    h_points, h_images: `[B, K]` float (row i of each is the same object), B >= 2.
    temperature: tau > 0.
    positive_prior: tau+ in [0, 1).
  Returns:
    scalar float32.
  """
  if not 0.0 <= positive_prior < 1.0:
    raise ValueError(f"debiased contrastive loss: positive_prior must be in [0, 1), got "
                     f"{positive_prior!r}")
  logits = cross_modal_logits(h_points, h_images, temperature)                      # [B, B]
  n = logits.shape[0] - 1
  if n < 1:
    raise ValueError("debiased contrastive loss: needs a batch of at least 2")
  diag = square_diagonal(logits)
  floor = n * jnp.exp(-1.0 / temperature)
  def one_way(axis):
    pos = jnp.exp(diag)
    neg = jnp.sum(jnp.exp(logits), axis=axis) - pos
    ng = jnp.maximum((neg - positive_prior * n * pos) / (1.0 - positive_prior), floor)
    return jnp.mean(jnp.log(pos + ng) - diag)
  return 0.5 * (one_way(1) + one_way(0))


def supervised_contrastive_loss(h_points: jax.Array, h_images: jax.Array, labels: jax.Array,
                                temperature: float) -> jax.Array:
  """Cross-modal SupCon [ours, after Khosla et al.]: for anchor i of one modality the
  positives are every j of the other modality with `labels[j] == labels[i]` (i included):
  `l(a, b) = -(1/B) sum_i mean_{j in P(i)} log softmax_j(<a_i, b_j> / tau)`, symmetrised.
  Equals `contrastive_loss` when all labels differ.

  Args:
    h_points, h_images: `[B, K]` float; labels: `[B]` int.
  Returns:
    scalar float32.
  """
  b = h_points.shape[0]
  if labels.shape != (b,):
    raise ValueError(f"supervised contrastive loss: labels {tuple(labels.shape)} must be "
                     f"[B] = [{b}]")
  pos = (labels[:, None] == labels[None, :]).astype(jnp.float32)  # symmetric, diag = 1
  return soft_contrastive_loss(h_points, h_images, pos / jnp.sum(pos, axis=1, keepdims=True),
                               temperature)


def joint_affinity_targets(features_points: jax.Array, features_images: jax.Array,
                           weight: float, temperature: float) -> jax.Array:
  """Soft cross-modal targets from the batch's joint intra-modal affinity [ours, after
  DJSRH's joint-semantics affinity (Su et al., ICCV 2019) and soft-target contrastive
  learning (ALBEF, Li et al. 2021; SoftCLIP, Gao et al. 2024)].

  Each modality's features are centred on the batch mean and L2-normalised;
  `S = (F_P F_P^T + F_I F_I^T) / 2` is the joint cosine affinity, computed without gradient.
  Row i of the target puts `1 - weight` on its own pair and spreads `weight` over the other
  objects j != i by `softmax_j(S_ij / temperature)`: objects that look alike in both
  modalities are partly positives, so same-category objects are not pushed apart as hard
  negatives.

  Args:
    features_points, features_images: `[B, C]` float (row i of each is object i).
    weight: mass on the other objects, in [0, 1).
    temperature: > 0, sharpness of the neighbour distribution.
  Returns:
    `[B, B]` float32 targets, each row summing to 1.
  """
  def cosine(f):
    f = jax.lax.stop_gradient(f).astype(jnp.float32)
    f = l2_normalize(f - jnp.mean(f, axis=0, keepdims=True))
    return f @ f.T
  s = 0.5 * (cosine(features_points) + cosine(features_images))
  eye = jnp.eye(s.shape[0], dtype=bool)
  neighbours = jax.nn.softmax(jnp.where(eye, -jnp.inf, s / temperature), axis=1)
  return (1.0 - weight) * eye.astype(jnp.float32) + weight * neighbours


def soft_contrastive_loss(h_points: jax.Array, h_images: jax.Array, targets: jax.Array,
                          temperature: float) -> jax.Array:
  """Symmetric InfoNCE with soft targets: `l(a, b) = -(1/B) sum_i sum_j T_ij log
  softmax_j(<a_i, b_j> / tau)`, point anchors with rows of `T`, image anchors with rows of
  `T` too (row j of `T` is image anchor j's target over points). Equals
  `contrastive_loss` for `T = I`.

  Args:
    h_points, h_images: `[B, K]` float; targets: `[B, B]` float, rows summing to 1.
  Returns:
    scalar float32.
  """
  logits = cross_modal_logits(h_points, h_images, temperature)
  if targets.shape != logits.shape:
    raise ValueError(f"soft contrastive loss: targets {tuple(targets.shape)} must be "
                     f"{tuple(logits.shape)}")
  log_p_pi = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)  # rows: point anchors
  log_p_ip = logits - jax.nn.logsumexp(logits, axis=0, keepdims=True)  # cols: image anchors
  l_pi = -jnp.mean(jnp.sum(targets * log_p_pi, axis=1))
  l_ip = -jnp.mean(jnp.sum(targets.T * log_p_ip, axis=0))
  return 0.5 * (l_pi + l_ip)

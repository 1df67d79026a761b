"""`relational_distillation_loss`: one tower's in-batch neighbour distribution taught by
the other's [ours, after relational knowledge distillation (Park et al., CVPR 2019) and
cross-modal distillation (Gupta et al., CVPR 2016); round 22, docs/tuning.md].

CMAH's point tower groups objects by shape far better than its image tower (point -> point
mAP ~0.90 against image -> image ~0.72 at 64 bits on the carve), and every pair of L_c
gives each tower one positive, its own object. Here the image codes' similarities to the
batch's other images are pulled towards the point codes' similarities between the same
objects: the image tower learns which *other* objects are alike from the tower that
already knows, without labels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmah_jax.losses.contrastive import l2_normalize


def _off_diagonal_log_softmax(h: jax.Array, temperature: float) -> jax.Array:
  """`[B, K]` -> `[B, B]` float32: row i is log softmax over j != i of cos(h_i, h_j) / tau;
  the diagonal (an object is not its own neighbour) is 0 and must be masked by the caller."""
  z = l2_normalize(h)
  logits = z @ z.T / temperature
  eye = jnp.eye(h.shape[0], dtype=bool)
  log_p = jax.nn.log_softmax(jnp.where(eye, -jnp.inf, logits), axis=1)
  return jnp.where(eye, 0.0, log_p)  # finite everywhere, so no nan in any gradient


def relational_distillation_loss(h_student: jax.Array, h_teacher: jax.Array,
                                 temperature: float) -> jax.Array:
  """Mean over anchors i of KL(t_i || s_i), where t_i and s_i are the softmax over the
  batch's other objects j != i of cos(h_i, h_j) / tau in the teacher's and the student's
  codes. The teacher gets no gradient (`stop_gradient`): it teaches, it is not pulled.

  Args:
    h_student: `[B, K_s]` float, e.g. the image tower's full-pass codes.
    h_teacher: `[B, K_t]` float, row i the same object, e.g. the point tower's codes.
    temperature: tau > 0, both distributions.
  Returns:
    scalar float32, >= 0; 0 iff every row's distributions agree.
  """
  if h_student.ndim != 2 or h_teacher.ndim != 2 or h_student.shape[0] != h_teacher.shape[0]:
    raise ValueError(f"relational distillation: h_student {tuple(h_student.shape)} and "
                     f"h_teacher {tuple(h_teacher.shape)} must be [B, K] with the same B")
  if h_student.shape[0] < 3:
    raise ValueError("relational distillation: needs a batch of at least 3 (each anchor's "
                     f"distribution is over the others), got {h_student.shape[0]}")
  if not temperature > 0:
    raise ValueError(f"relational distillation: temperature must be > 0, got {temperature!r}")
  log_t = _off_diagonal_log_softmax(jax.lax.stop_gradient(h_teacher), temperature)
  log_s = _off_diagonal_log_softmax(h_student, temperature)
  eye = jnp.eye(h_student.shape[0], dtype=bool)
  p_t = jnp.where(eye, 0.0, jnp.exp(log_t))
  return jnp.mean(jnp.sum(p_t * (log_t - log_s), axis=1))

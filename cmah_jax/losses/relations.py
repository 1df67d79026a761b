"""`relational_distillation_loss`: one tower's in-batch neighbour distribution taught by
the other's [ours, after relational knowledge distillation (Park et al., CVPR 2019) and
cross-modal distillation (Gupta et al., CVPR 2016); round 22, docs/tuning.md].

CMAH's point tower groups objects by shape far better than its image tower (point -> point
mAP ~0.90 against image -> image ~0.72 at 64 bits on the carve), and every pair of L_c
gives each tower one positive, its own object. Here the image codes' similarities to the
batch's other images are pulled towards the point codes' similarities between the same
objects: the image tower learns which *other* objects are alike from the tower that
already knows, without labels. With other candidates (`h_candidates`) the student's rows
are cross-modal: an image code's ranking of the other objects' point codes (round 23).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmah_jax.losses.contrastive import l2_normalize


def _off_diagonal_log_softmax(anchors: jax.Array, candidates: jax.Array,
                              temperature: float) -> jax.Array:
  """`[B, K]`, `[B, K]` -> `[B, B]` float32: row i is log softmax over j != i of
  cos(anchors_i, candidates_j) / tau; the diagonal (object i itself: not a neighbour) is 0
  and must be masked by the caller."""
  logits = l2_normalize(anchors) @ l2_normalize(candidates).T / temperature
  eye = jnp.eye(anchors.shape[0], dtype=bool)
  log_p = jax.nn.log_softmax(jnp.where(eye, -jnp.inf, logits), axis=1)
  return jnp.where(eye, 0.0, log_p)  # finite everywhere, so no nan in any gradient


def relational_distillation_loss(h_student: jax.Array, h_teacher: jax.Array,
                                 temperature: float, h_candidates: jax.Array | None = None
                                 ) -> jax.Array:
  """Mean over anchors i of KL(T_i || S_i), where T_i is the softmax over the batch's other
  objects j != i of cos(h_teacher_i, h_teacher_j) / tau, and S_i the same of
  cos(h_student_i, c_j) with candidates c = `h_candidates` (default: `h_student`, the
  student's own relations). The teacher gets no gradient (`stop_gradient`): it teaches, it
  is not pulled.

  Args:
    h_student: `[B, K_s]` float, the anchors, e.g. the image tower's full-pass codes.
    h_teacher: `[B, K_t]` float, row i the same object, e.g. the point tower's codes.
    temperature: tau > 0, both distributions.
    h_candidates: `[B, K_s]` float or None; e.g. the point codes, so that image anchor i
      ranks the *other objects' point codes* as point i does (cross-modal relations).
  Returns:
    scalar float32, >= 0; 0 iff every row's distributions agree.
  """
  candidates = h_student if h_candidates is None else h_candidates
  if (h_student.ndim != 2 or h_teacher.ndim != 2 or candidates.shape != h_student.shape
      or h_student.shape[0] != h_teacher.shape[0]):
    raise ValueError(f"relational distillation: h_student {tuple(h_student.shape)}, "
                     f"h_candidates {tuple(candidates.shape)} and h_teacher "
                     f"{tuple(h_teacher.shape)} must be [B, K] with the same B (and the "
                     "student's two the same K)")
  if h_student.shape[0] < 3:
    raise ValueError("relational distillation: needs a batch of at least 3 (each anchor's "
                     f"distribution is over the others), got {h_student.shape[0]}")
  if not temperature > 0:
    raise ValueError(f"relational distillation: temperature must be > 0, got {temperature!r}")
  teacher = jax.lax.stop_gradient(h_teacher)
  log_t = _off_diagonal_log_softmax(teacher, teacher, temperature)
  log_s = _off_diagonal_log_softmax(h_student, candidates, temperature)
  eye = jnp.eye(h_student.shape[0], dtype=bool)
  p_t = jnp.where(eye, 0.0, jnp.exp(log_t))
  return jnp.mean(jnp.sum(p_t * (log_t - log_s), axis=1))

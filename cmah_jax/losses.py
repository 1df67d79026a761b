"""CMAH losses, each a pure function: L = L_c + lambda_r * (L_3D + L_2D) [paper].

- `contrastive_loss`: symmetric cross-modal InfoNCE on L2-normalised continuous codes h,
  written over the whole (global) batch as one `[B, B]` logits matrix. Under `jax.jit` with
  batch-sharded inputs XLA inserts the all-gather, so the negatives are the global batch
  across all devices and hosts; no hand-written collective.
- `supervised_contrastive_loss`: the same with every same-label cross-modal pair a
  positive (SupCon-style) — an upper bound on labelled data.
- `point_reconstruction_loss`: Chamfer-L2 over the masked groups [Point-MAE].
- `image_reconstruction_loss`: MSE on masked patches, per-patch normalised target [MAE].
- `cmah_loss(outputs, spec, labels)` with a `LossSpec`: the total and each term, for logging.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from cmah_jax.ops.hashing import sign_ste
from cmah_jax.ops.pointcloud import chamfer_distance

PAIRS = ("full_full", "masked_masked", "full_masked", "intra_modal")
_NORM_EPS = 1e-12


def _l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _NORM_EPS)


def _logits(h_points: jax.Array, h_images: jax.Array, temperature: float) -> jax.Array:
  if h_points.ndim != 2 or h_points.shape != h_images.shape:
    raise ValueError(f"contrastive loss: h_points {tuple(h_points.shape)} and h_images "
                     f"{tuple(h_images.shape)} must both be [B, K]")
  if not temperature > 0:
    raise ValueError(f"contrastive loss: temperature must be > 0, got {temperature!r}")
  return _l2_normalize(h_points) @ _l2_normalize(h_images).T / temperature  # [B, B]


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
  logits = _logits(h_points, h_images, temperature)
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
  logits = _logits(h_points, h_images, temperature)                      # [B, B]
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


def queued_contrastive_loss(h_points: jax.Array, h_images: jax.Array, queue: "NegativeQueue",
                            index: jax.Array, temperature: float) -> jax.Array:
  """Symmetric InfoNCE whose negatives are the batch plus a queue of earlier batches' codes
  [ours, after MoCo's queue (He et al., CVPR 2020) and XBM's cross-batch memory without a
  momentum encoder (Wang et al., CVPR 2020)]. Trained from step 0 with Q=512 it collapsed
  every code on our validation carve (README, round 3); it is correct, not useful, here.

  A point anchor i is scored against the batch's images and the queued images, an image
  anchor against the batch's and the queued points; the positive is still pair i. Queue
  rows that are empty, or hold the anchor's own object (same dataset index, from an earlier
  visit), are left out. Equals `contrastive_loss` when the queue is empty.

  Args:
    h_points, h_images: `[B, K]` float (row i of each is the same object).
    queue: `NegativeQueue` with `points`, `images` `[Q, K]` float32 (no gradient flows into
      them) and `index` `[Q]` int32 (-1 on empty rows).
    index: `[B]` int, the batch's dataset record indices.
    temperature: tau > 0.
  Returns:
    scalar float32.
  """
  logits = _logits(h_points, h_images, temperature)                      # [B, B]
  b, q = logits.shape[0], queue.points.shape[0]
  if queue.points.shape != (q, h_points.shape[1]) or queue.images.shape != queue.points.shape:
    raise ValueError(f"queued contrastive loss: queue points {tuple(queue.points.shape)} / "
                     f"images {tuple(queue.images.shape)} must be [Q, {h_points.shape[1]}]")
  if index.shape != (b,):
    raise ValueError(f"queued contrastive loss: index {tuple(index.shape)} must be [B] = [{b}]")
  keep = queue.usable(index)                                             # [B, Q]
  scale = 1.0 / temperature
  to_images = _l2_normalize(h_points) @ _l2_normalize(queue.images).T * scale  # [B, Q]
  to_points = _l2_normalize(h_images) @ _l2_normalize(queue.points).T * scale  # [B, Q]
  to_images, to_points = jnp.where(keep, to_images, -jnp.inf), jnp.where(keep, to_points, -jnp.inf)
  diag = square_diagonal(logits)
  l_pi = jnp.mean(jax.nn.logsumexp(jnp.concatenate([logits, to_images], axis=1), axis=1)
                  - diag)
  l_ip = jnp.mean(jax.nn.logsumexp(jnp.concatenate([logits.T, to_points], axis=1), axis=1)
                  - diag)
  return 0.5 * (l_pi + l_ip)


def nearest_neighbour_rows(h: jax.Array, memory: "NegativeQueue", which: str,
                           index: jax.Array) -> jax.Array:
  """For each row of `h`, the most cosine-similar code of another object in the memory.

  Rows of the memory that are empty (index -1) or hold the row's own object (same dataset
  index) are skipped; a row with no candidate left gets its own code. No gradient flows
  through the result.

  Args:
    h: `[B, K]` float, one modality's codes.
    memory: `NegativeQueue`; `which` ("points" | "images") names its rows of h's modality.
    index: `[B]` int, the batch's dataset record indices.
  Returns:
    `[B, K]` float32.
  """
  rows = getattr(memory, which)                                          # [Q, K]
  if rows.shape[1] != h.shape[1] or index.shape != (h.shape[0],):
    raise ValueError(f"nearest_neighbour_rows: h {tuple(h.shape)}, memory {which} "
                     f"{tuple(rows.shape)} and index {tuple(index.shape)} must be [B, K], "
                     "[Q, K] and [B]")
  keep = memory.usable(index)                                            # [B, Q]
  sim = jnp.where(keep, _l2_normalize(h) @ _l2_normalize(rows).T, -jnp.inf)
  nearest = jnp.take(rows, jnp.argmax(sim, axis=1), axis=0)             # [B, K]
  found = jnp.any(keep, axis=1, keepdims=True)
  return jax.lax.stop_gradient(jnp.where(found, nearest, h.astype(jnp.float32)))


def nearest_neighbour_contrastive_loss(h_points: jax.Array, h_images: jax.Array,
                                       memory: "NegativeQueue", index: jax.Array,
                                       temperature: float) -> jax.Array:
  """Cross-modal InfoNCE with nearest-neighbour positives [ours, after NNCLR (Dwibedi et
  al., ICCV 2021), across modalities]: object i's point code is replaced by its nearest
  neighbour among the memory's point codes of other objects, which must still pick image i
  out of the batch, and likewise image i's code by its nearest neighbour among the
  memory's image codes, against the batch's points. A similar-looking object stands in
  for the instance, so objects of one kind are pulled together instead of apart.
  Not kept: with a 1,024-object memory and weight 1 it lowered validation mAP at 64 bits
  (0.707 / 0.679 against 0.728 / 0.705; README, round 6).

  `(contrastive_loss(NN(P), I) + contrastive_loss(P, NN(I))) / 2`; the gradient reaches
  the batch's own codes only (the neighbours are constants).

  Args:
    h_points, h_images: `[B, K]` float (row i of each is the same object).
    memory: `NegativeQueue` of earlier batches' codes (the support set).
    index: `[B]` int, the batch's dataset record indices.
    temperature: tau > 0.
  Returns:
    scalar float32.
  """
  nn_points = nearest_neighbour_rows(h_points, memory, "points", index)
  nn_images = nearest_neighbour_rows(h_images, memory, "images", index)
  return 0.5 * (contrastive_loss(nn_points, h_images, temperature)
                + contrastive_loss(h_points, nn_images, temperature))


class NegativeQueue(NamedTuple):
  """The codes of the last Q training objects, newest first (`loss.queue_size = Q`).

  points, images: `[Q, K]` float32 continuous codes h (stored without gradient);
  index: `[Q]` int32 dataset record indices (>= 0), -1 on rows not yet filled.
  """
  points: jax.Array
  images: jax.Array
  index: jax.Array

  @property
  def filled(self) -> jax.Array:
    """int32 []: how many rows hold an object."""
    return jnp.sum(self.index >= 0).astype(jnp.int32)

  def usable(self, index: jax.Array) -> jax.Array:
    """bool `[B, Q]`: row q is filled and holds another object than the batch's `index[b]`
    (`[B]` int dataset record indices)."""
    return ((self.index >= 0)[None, :]
            & (self.index[None, :] != index.astype(jnp.int32)[:, None]))

  @classmethod
  def empty(cls, size: int, bits: int) -> "NegativeQueue":
    if size <= 0 or bits <= 0:
      raise ValueError(f"NegativeQueue: size and bits must be > 0, got {size}, {bits}")
    zeros = jnp.zeros((size, bits), jnp.float32)
    return cls(zeros, zeros, jnp.full((size,), -1, jnp.int32))

  def push(self, h_points: jax.Array, h_images: jax.Array, index: jax.Array
           ) -> "NegativeQueue":
    """The queue with the batch's `[B, K]` codes and `[B]` indices (>= 0) in front
    (first in, first out); `B <= Q`."""
    q, b = self.points.shape[0], h_points.shape[0]
    if b > q:
      raise ValueError(f"NegativeQueue.push: batch {b} is larger than the queue {q}; set "
                       f"config.loss.queue_size >= the global batch size")
    def put(old, new):
      new = jax.lax.stop_gradient(new).astype(old.dtype)
      return jnp.concatenate([new, old[:q - b]], axis=0)
    return NegativeQueue(put(self.points, h_points), put(self.images, h_images),
                         put(self.index, index.astype(jnp.int32)))


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
    f = _l2_normalize(f - jnp.mean(f, axis=0, keepdims=True))
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
  logits = _logits(h_points, h_images, temperature)
  if targets.shape != logits.shape:
    raise ValueError(f"soft contrastive loss: targets {tuple(targets.shape)} must be "
                     f"{tuple(logits.shape)}")
  log_p_pi = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)  # rows: point anchors
  log_p_ip = logits - jax.nn.logsumexp(logits, axis=0, keepdims=True)  # cols: image anchors
  l_pi = -jnp.mean(jnp.sum(targets * log_p_pi, axis=1))
  l_ip = -jnp.mean(jnp.sum(targets.T * log_p_ip, axis=0))
  return 0.5 * (l_pi + l_ip)


def point_reconstruction_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Chamfer-L2 (squared distances, mean + mean) per masked group, averaged over groups
  and batch [Point-MAE].

  Args:
    pred, target: `[B, G_mask, k, 3]` float.
  Returns:
    scalar float32.
  """
  if pred.ndim != 4 or pred.shape[-1] != 3 or pred.shape[:2] != target.shape[:2]:
    raise ValueError(f"point_reconstruction_loss: pred {tuple(pred.shape)} and target "
                     f"{tuple(target.shape)} must be [B, G_mask, k, 3]")
  return jnp.mean(chamfer_distance(pred.astype(jnp.float32), target.astype(jnp.float32)))


def image_reconstruction_loss(pred: jax.Array, target: jax.Array, norm_pix_loss: bool = True
                              ) -> jax.Array:
  """MSE per masked patch, averaged over patches and batch [MAE].

  With `norm_pix_loss` the target of each patch is `(t - mean) / sqrt(var + 1e-6)` over
  its p*p*3 values, `var` unbiased (ddof=1) as torch's `Tensor.var` in MAE [MAE].

  Args:
    pred, target: `[B, T_mask, p*p*3]` float (masked patches only).
  Returns:
    scalar float32.
  """
  if pred.shape != target.shape or pred.ndim != 3:
    raise ValueError(f"image_reconstruction_loss: pred {tuple(pred.shape)} and target "
                     f"{tuple(target.shape)} must both be [B, T_mask, D]")
  target = target.astype(jnp.float32)
  if norm_pix_loss:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  return jnp.mean((pred.astype(jnp.float32) - target) ** 2)


def code_quality_terms(h: jax.Array) -> dict[str, jax.Array]:
  """Bit balance, decorrelation and quantisation penalties of continuous codes.

  Args:
    h: `[B, K]` float in (-1, 1) (tanh codes).
  Returns:
    {"balance": sum_k (mean_b h_bk)^2 / K, "decorrelation": ||H^T H / B - I||_F^2 / K^2,
     "quantization": mean (|h| - 1)^2}, float32 scalars; each is 0 for balanced,
    uncorrelated, binary codes.
  """
  h = h.astype(jnp.float32)
  b, k = h.shape
  balance = jnp.sum(jnp.mean(h, axis=0) ** 2) / k
  corr = h.T @ h / b
  decorrelation = jnp.sum((corr - jnp.eye(k, dtype=h.dtype)) ** 2) / k ** 2
  quantization = jnp.mean((jnp.abs(h) - 1.0) ** 2)
  return {"balance": balance, "decorrelation": decorrelation, "quantization": quantization}


def parse_pairs(pairs: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
  """`"full_full,masked_masked"` -> `("full_full", "masked_masked")`, validated."""
  names = pairs.split(",") if isinstance(pairs, str) else list(pairs)
  names = tuple(n.strip() for n in names if n.strip())
  bad = [n for n in names if n not in PAIRS]
  if bad or not names or len(set(names)) != len(names):
    raise ValueError(f"config.loss.pairs={pairs!r}: need a comma-separated, non-empty, "
                     f"duplicate-free subset of {list(PAIRS)}; bad: {bad}")
  return names


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Settings of `cmah_loss` (`config.loss`), validated on construction.

  `pairs` may be given as `"full_full,masked_masked"`; it is stored as a tuple.
  """
  temperature: float = 0.2                  # [ours: chosen on the validation carve of the
                                            # train split (0.07, 0.2, 0.5 at 16 bits);
                                            # the paper's value is unknown, ConMH uses 0.5;
                                            # 0.07 (CLIP) is `configs/default.py:paper`]
  pairs: tuple[str, ...] = ("full_full", "masked_masked")  # [paper: full-full and masked
                                            # pairs; which ones ours]
  lambda_r: float = 1.0                     # [paper shows no weight; ConMH 1:1]
  # Relative weights inside the reconstruction term, L_c + lambda_r * (w_3D L_3D + w_2D
  # L_2D) [ours]: the Chamfer L_3D on patch-local coordinates is ~1e-2 and its gradient on
  # the point encoder ~5e-4 of L_c's at the end of a run
  # (`python -m cmah_jax.experiments.gradients`), so at 1:1 the encoders barely hear it.
  point_recon_weight: float = 1.0
  image_recon_weight: float = 1.0
  norm_pix_loss: bool = True                # [MAE]
  supervised: bool = False                  # SupCon-style upper bound using labels [ours]
  objective: str = "cmah"                   # "cmah" or a baseline's (cmah_jax.objectives)
  # Ablation switches: drop one reconstruction term [ours].
  use_point_recon: bool = True              # L_3D
  use_image_recon: bool = True              # L_2D
  # Code-quality terms on the full-pass continuous codes h of both towers, 0 = off (the
  # paper's objective) [ours, after the hashing literature: bit balance and decorrelation
  # as in SpH/DSH-style unsupervised hashing, quantisation as in DSH/ConMH]:
  balance_weight: float = 0.0               # sum_k mean_b(h)_k^2 / K
  decorrelation_weight: float = 0.0         # ||H^T H / B - I||_F^2 / K^2
  quantization_weight: float = 0.0          # mean (|h| - 1)^2
  # Soft cross-modal targets from the joint affinity of both towers' pooled features
  # (`joint_affinity_targets`), 0 = off: the paper's one-hot InfoNCE [ours, after DJSRH /
  # soft-target contrastive learning]. Applies to every cross-modal pair.
  soft_target_weight: float = 0.0           # mass on the other objects of the batch
  soft_target_temperature: float = 0.1      # sharpness of the neighbour distribution
  # Weight of the same contrastive pairs on the wide embeddings z (model.embed_dim > 0),
  # 0 = off [ours]: the encoders learn from an embedding wider than the K-bit code.
  embed_weight: float = 0.0
  # Weight of the same contrastive pairs on the binary codes sign(h) (straight-through:
  # forward the codes, backward the gradient of h), 0 = off [ours, after CIBHash (Qiu et
  # al., IJCAI 2021) and UCCH, which contrast codes]: on +-1 codes the cosine is
  # 1 - 2 d_H / K, so this term ranks by the Hamming distance retrieval uses.
  code_contrast_weight: float = 0.0
  # Negatives of the full-full pair from a queue of the last `queue_size` objects' codes
  # (`queued_contrastive_loss`, carried across steps by `objectives.CmahObjective`), 0 = off:
  # the batch's only (the paper's) [ours, after MoCo / XBM]. >= the global batch size.
  # Not kept: Q=512 from step 0 collapsed every code on the validation carve (README, round
  # 3), as MoCo reports for a queue filled by the trained encoder itself (no momentum).
  queue_size: int = 0
  # Nearest-neighbour positives (`nearest_neighbour_contrastive_loss`) on the full-full
  # codes, added with this weight, 0 = off [ours, after NNCLR]; the support set is a
  # memory of the last `nn_support_size` objects' codes (>= the global batch size),
  # carried across steps by `objectives.CmahObjective`.
  nn_positive_weight: float = 0.0
  nn_support_size: int = 0
  # Debiased negatives (`debiased_contrastive_loss`) in every unsupervised pair of L_c,
  # tau+ = this prior, 0 = off (the paper's InfoNCE) [Chuang et al., NeurIPS 2020]: about
  # 1 / number of kinds of object.
  debias_positive_prior: float = 0.0

  def __post_init__(self):
    object.__setattr__(self, "pairs", parse_pairs(self.pairs))

  def validate(self) -> "LossSpec":
    if not float(self.temperature) > 0:
      raise ValueError(f"config.loss.temperature must be > 0, got {self.temperature!r}")
    for name in ("lambda_r", "point_recon_weight", "image_recon_weight", "balance_weight",
                 "decorrelation_weight", "quantization_weight", "embed_weight",
                 "code_contrast_weight"):
      if float(getattr(self, name)) < 0:
        raise ValueError(f"config.loss.{name} must be >= 0, got {getattr(self, name)!r}")
    if not 0.0 <= float(self.soft_target_weight) < 1.0:
      raise ValueError("config.loss.soft_target_weight must be in [0, 1), got "
                       f"{self.soft_target_weight!r}")
    if not float(self.soft_target_temperature) > 0:
      raise ValueError("config.loss.soft_target_temperature must be > 0, got "
                       f"{self.soft_target_temperature!r}")
    if int(self.queue_size) < 0 or int(self.queue_size) != self.queue_size:
      raise ValueError(f"config.loss.queue_size must be an int >= 0, got {self.queue_size!r}")
    if float(self.nn_positive_weight) < 0 or int(self.nn_support_size) != self.nn_support_size:
      raise ValueError("config.loss.nn_positive_weight must be >= 0 and nn_support_size an "
                       f"int, got {self.nn_positive_weight!r}, {self.nn_support_size!r}")
    if (float(self.nn_positive_weight) > 0) != (int(self.nn_support_size) > 0):
      raise ValueError("config.loss.nn_positive_weight > 0 needs nn_support_size > 0 (the "
                       "memory its neighbours come from) and vice versa; got "
                       f"{self.nn_positive_weight!r}, {self.nn_support_size!r}")
    if not 0.0 <= float(self.debias_positive_prior) < 1.0:
      raise ValueError("config.loss.debias_positive_prior must be in [0, 1), got "
                       f"{self.debias_positive_prior!r}")
    if float(self.debias_positive_prior) > 0 and (
        self.supervised or float(self.soft_target_weight) > 0 or self.queue_size):
      raise ValueError("config.loss.debias_positive_prior > 0 replaces the one-hot "
                       "unsupervised in-batch InfoNCE; set loss.supervised=False, "
                       "soft_target_weight=0 and queue_size=0, or the prior to 0")
    if self.nn_support_size and self.supervised:
      raise ValueError("config.loss.nn_support_size > 0 is for the unsupervised loss; set "
                       "loss.supervised=False or nn_support_size=0")
    if self.queue_size and (self.supervised or float(self.soft_target_weight) > 0):
      raise ValueError("config.loss.queue_size > 0 works with the one-hot unsupervised "
                       "contrastive loss only; set loss.supervised=False and "
                       "loss.soft_target_weight=0, or queue_size=0")
    return self


def _need(outputs: Mapping[str, jax.Array], key: str, why: str) -> jax.Array:
  if key not in outputs:
    raise KeyError(f"cmah_loss: outputs lack {key!r} needed for {why}; outputs of a "
                   f"train=True call with both modalities have it (got {sorted(outputs)})")
  return outputs[key]


def cmah_loss(outputs: Mapping[str, jax.Array], spec: LossSpec, labels=None, queue=None,
              index=None, support=None):
  """Total CMAH loss `L_c + lambda_r * (w_3D L_3D + w_2D L_2D)` [paper; w = 1 there].

  `L_c` sums `contrastive_loss` over the selected `spec.pairs`:
    full_full:     (point/h, image/h)
    masked_masked: (point/h_masked, image/h_masked)
    full_masked:   the mean of (point/h, image/h_masked) and (point/h_masked, image/h)
                   (both cross pairs, averaged so it weighs as one pair) [ours].
    intra_modal:   the mean of (point/h, point/h_masked) and (image/h, image/h_masked):
                   each tower's full view against its own masked view, as CrossPoint's
                   intra-modal instance discrimination [Afham et al., CVPR 2022].
  With `spec.debias_positive_prior > 0` each pair uses `debiased_contrastive_loss`.
  With `spec.supervised` each pair uses `supervised_contrastive_loss` with `labels`; with
  `spec.soft_target_weight > 0` each cross-modal pair uses `soft_contrastive_loss` with
  `joint_affinity_targets` of the pooled features ("point/pooled", "image/pooled").
  With `spec.embed_weight > 0` the same pairs over the wide embeddings ("point/z", ...)
  are added with that weight and logged as "loss/embed_contrastive"; with
  `spec.code_contrast_weight > 0` the same pairs over `sign_ste(h)`, logged as
  "loss/code_contrastive". With a `queue` (`NegativeQueue`, and the batch's dataset
  `index`) the full-full pair of `L_c` uses `queued_contrastive_loss`. With
  `spec.nn_positive_weight > 0` and a `support` memory (a `NegativeQueue`, and `index`),
  `nearest_neighbour_contrastive_loss` of the full-pass codes is added with that weight,
  logged as "loss/nn_contrastive".
  Reconstruction terms are skipped (reported as 0) when `lambda_r == 0` or switched off
  (`use_point_recon`, `use_image_recon`). With positive `balance_weight`,
  `decorrelation_weight`, `quantization_weight` the `code_quality_terms` of both towers'
  full-pass h (averaged over the towers) are added with those weights and logged.

  Args:
    outputs: the dict of a `CMAH.apply(..., train=True)` call with both modalities.
    spec: the resolved `config.loss`.
    labels: `[B]` int, required iff `supervised`.
    queue, index: a `NegativeQueue` and `[B]` int dataset indices, or None (no queue).
    support: a `NegativeQueue` of codes for nearest-neighbour positives, or None.
  Returns:
    (total scalar float32, {"loss/contrastive", "loss/point_recon", "loss/image_recon",
    "loss/total"} scalars).
  """
  if not isinstance(spec, LossSpec):
    raise TypeError(f"cmah_loss: spec must be a LossSpec, got {type(spec).__name__}")
  temperature, pairs = float(spec.temperature), spec.pairs
  lambda_r, supervised = float(spec.lambda_r), bool(spec.supervised)
  if supervised and labels is None:
    raise ValueError("cmah_loss: config.loss.supervised=True needs labels (batch['label'])")
  if queue is not None and (index is None or supervised):
    raise ValueError("cmah_loss: a negative queue needs the batch's dataset `index` and an "
                     "unsupervised loss")

  soft = float(spec.soft_target_weight) > 0 and not supervised
  debias = float(spec.debias_positive_prior)
  if soft:
    targets = joint_affinity_targets(
        _need(outputs, "point/pooled", "soft targets"),
        _need(outputs, "image/pooled", "soft targets"),
        float(spec.soft_target_weight), float(spec.soft_target_temperature))

  def con(a, b, cross_modal=True):
    if supervised:
      return supervised_contrastive_loss(a, b, labels, temperature)
    if soft and cross_modal:
      return soft_contrastive_loss(a, b, targets, temperature)
    if debias > 0:
      return debiased_contrastive_loss(a, b, temperature, debias)
    return contrastive_loss(a, b, temperature)

  def pair_sum(name: str, why: str, transform=lambda x: x, queue=None) -> jax.Array:
    """Sum of `con` over `pairs` for outputs `{tower}/{name}` (full) and `_masked`; with a
    `queue`, the full-full pair scores its negatives too."""
    h = {}
    for tower in ("point", "image"):
      h[tower, "full"] = transform(_need(outputs, f"{tower}/{name}", why))
      if any(p != "full_full" for p in pairs):
        h[tower, "masked"] = transform(_need(outputs, f"{tower}/{name}_masked",
                                             f"pairs={pairs}"))
    total = jnp.zeros((), jnp.float32)
    for pair in pairs:
      if pair == "full_full" and queue is not None:
        total += queued_contrastive_loss(h["point", "full"], h["image", "full"], queue,
                                         index, temperature)
      elif pair == "full_full":
        total += con(h["point", "full"], h["image", "full"])
      elif pair == "masked_masked":
        total += con(h["point", "masked"], h["image", "masked"])
      elif pair == "full_masked":
        total += 0.5 * (con(h["point", "full"], h["image", "masked"])
                        + con(h["point", "masked"], h["image", "full"]))
      else:  # intra_modal
        total += 0.5 * (con(h["point", "full"], h["point", "masked"], cross_modal=False)
                        + con(h["image", "full"], h["image", "masked"], cross_modal=False))
    return total

  l_c = pair_sum("h", "the contrastive loss", queue=queue)
  embed_weight = float(spec.embed_weight)
  if embed_weight > 0:
    l_embed = pair_sum("z", "loss.embed_weight > 0 (set model.overrides.embed_dim > 0)")

  zero = jnp.zeros((), jnp.float32)
  l_3d = l_2d = zero
  if lambda_r != 0.0 and spec.use_point_recon:
    l_3d = point_reconstruction_loss(_need(outputs, "point/pred", "L_3D"),
                                     _need(outputs, "point/target", "L_3D"))
  if lambda_r != 0.0 and spec.use_image_recon:
    l_2d = image_reconstruction_loss(_need(outputs, "image/pred", "L_2D"),
                                     _need(outputs, "image/target", "L_2D"),
                                     bool(spec.norm_pix_loss))
  total = l_c + lambda_r * (float(spec.point_recon_weight) * l_3d
                            + float(spec.image_recon_weight) * l_2d)
  terms = {"loss/contrastive": l_c, "loss/point_recon": l_3d, "loss/image_recon": l_2d}
  if embed_weight > 0:
    terms["loss/embed_contrastive"] = l_embed
    total = total + embed_weight * l_embed
  nn_weight = float(spec.nn_positive_weight)
  if nn_weight > 0:
    if support is None or index is None:
      raise ValueError("cmah_loss: config.loss.nn_positive_weight > 0 needs the `support` "
                       "memory and the batch's dataset `index` (objectives.CmahObjective "
                       "carries them)")
    l_nn = nearest_neighbour_contrastive_loss(outputs["point/h"], outputs["image/h"],
                                              support, index, temperature)
    terms["loss/nn_contrastive"] = l_nn
    total = total + nn_weight * l_nn
  code_weight = float(spec.code_contrast_weight)
  if code_weight > 0:
    l_code = pair_sum("h", "the code contrastive loss", sign_ste)
    terms["loss/code_contrastive"] = l_code
    total = total + code_weight * l_code
  weights = {"balance": spec.balance_weight, "decorrelation": spec.decorrelation_weight,
             "quantization": spec.quantization_weight}
  if any(w > 0 for w in weights.values()):
    quality = [code_quality_terms(outputs[f"{t}/h"]) for t in ("point", "image")]
    for name, w in weights.items():
      if w > 0:
        value = 0.5 * (quality[0][name] + quality[1][name])
        terms[f"loss/{name}"] = value
        total = total + w * value
  terms["loss/total"] = total
  return total, terms

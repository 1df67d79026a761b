"""`cmah_loss`: the CMAH objective `L_c + lambda_r * (L_3D + L_2D)` [paper], with every
optional term of `LossSpec` [ours], combined from the other modules of `losses`."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from cmah_jax.losses.code_quality import code_quality_terms
from cmah_jax.losses.contrastive import (
    contrastive_loss, debiased_contrastive_loss, joint_affinity_targets,
    soft_contrastive_loss, supervised_contrastive_loss)
from cmah_jax.losses.memory import nearest_neighbour_contrastive_loss, queued_contrastive_loss
from cmah_jax.losses.prototypes import swapped_prototype_loss
from cmah_jax.losses.reconstruction import image_reconstruction_loss, point_reconstruction_loss
from cmah_jax.losses.relations import relational_distillation_loss
from cmah_jax.losses.spec import SECOND_VIEW_PAIR, LossSpec
from cmah_jax.ops.hashing import sign_ste


def _need(outputs: Mapping[str, jax.Array], key: str, why: str) -> jax.Array:
  if key not in outputs:
    raise KeyError(f"cmah_loss: outputs lack {key!r} needed for {why}; outputs of a "
                   f"train=True call with both modalities have it (got {sorted(outputs)})")
  return outputs[key]


def weighted_reconstruction(spec: LossSpec, l_3d: jax.Array, l_2d: jax.Array) -> jax.Array:
  """The reconstruction part of `cmah_loss`'s total, `lambda_r (w_3D L_3D + w_2D L_2D)`,
  from the unweighted terms (0 for a term that is off). Scalars float32 -> scalar."""
  return float(spec.lambda_r) * (float(spec.point_recon_weight) * l_3d
                                 + float(spec.image_recon_weight) * l_2d)


def cmah_loss(outputs: Mapping[str, jax.Array], spec: LossSpec, labels=None, queue=None,
              index=None, support=None, assignment=None):
  """Total CMAH loss `L_c + lambda_r * (w_3D L_3D + w_2D L_2D)` [paper; w = 1 there].

  `L_c` sums `contrastive_loss` over the selected `spec.pairs`:
    full_full:     (point/h, image/h)
    masked_masked: (point/h_masked, image/h_masked); with `model.masked_views = V > 1`
                   the mean of that pair over the V masked views ("*/h_masked_extra"
                   holds views 1 .. V-1) [ours, after multi-crop]; the other pairs use
                   view 0.
    full_masked:   the mean of (point/h, image/h_masked) and (point/h_masked, image/h)
                   (both cross pairs, averaged so it weighs as one pair) [ours].
    intra_modal:   the mean of (point/h, point/h_masked) and (image/h, image/h_masked):
                   each tower's full view against its own masked view, as CrossPoint's
                   intra-modal instance discrimination [Afham et al., CVPR 2022].
    masked_point_full_image: (point/h_masked, image/h): the masked point view against the
                   full image, so the image tower's codes are contrasted on full views only
                   (its masked view still feeds L_2D and the decoders) [ours, round 18];
                   with `model.masked_views = V > 1` the mean over the V masked point
                   views [ours, round 19].
    image_views:   (image/h, image/h_second): the full image against a second rendered
                   view of the same object, masked, image with image [ours, after CMC,
                   Tian et al. ECCV 2020, and MSN's masked anchor view, Assran et al. ECCV
                   2022; round 21, not kept] (`config.resolve` then has the pipeline
                   draw it).
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
  logged as "loss/nn_contrastive". With `spec.prototype_weight > 0`
  `swapped_prototype_loss` of the full-pass codes against `outputs["prototypes"]` (and the
  `assignment` memory, a `NegativeQueue`, when `spec.prototype_queue_size > 0`) is added
  with that weight, logged as "loss/prototype". With `spec.relation_weight > 0`
  `relational_distillation_loss` from the point tower's full-pass codes (teacher) is
  added with that weight, logged as "loss/relation": to the image codes' own relations
  (`relation_targets="image_image"`), or to the image codes' relations to the other
  objects' point codes and the point codes' to the other objects' image codes, averaged
  (`"cross_modal"`), at `spec.temperature`.
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
    assignment: a `NegativeQueue` of codes joining the prototype equipartition, or None.
  Returns:
    (total scalar float32, {"loss/contrastive", "loss/point_recon", "loss/image_recon",
    "loss/total"} scalars).
  """
  if not isinstance(spec, LossSpec):
    raise TypeError(f"cmah_loss: spec must be a LossSpec, got {type(spec).__name__}")
  spec.validate()  # Python checks, at trace time only
  temperature, pairs = float(spec.temperature), spec.pairs
  supervised = bool(spec.supervised)
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
      extra = outputs.get(f"{tower}/{name}_masked_extra")  # [V - 1, B, K] or absent
      if extra is None and f"{tower}/h_masked_extra" in outputs:
        raise ValueError(
            f"cmah_loss: {why} reads {tower}/{name} of the first masked view only, but the "
            f"model encodes {1 + len(outputs[f'{tower}/h_masked_extra'])} "
            "(model.masked_views > 1); the extra views give codes h only")
      h[tower, "extra"] = [] if extra is None else [transform(v) for v in extra]
    if SECOND_VIEW_PAIR in pairs:
      h["image", "second"] = transform(_need(
          outputs, f"image/{name}_second",
          f"pairs={pairs} (pass the batch's images_second as second_images)"))
    total = jnp.zeros((), jnp.float32)
    for pair in pairs:
      if pair == "full_full" and queue is not None:
        total += queued_contrastive_loss(h["point", "full"], h["image", "full"], queue,
                                         index, temperature)
      elif pair == "full_full":
        total += con(h["point", "full"], h["image", "full"])
      elif pair == "masked_masked":  # averaged over the masked views
        if len(h["point", "extra"]) != len(h["image", "extra"]):
          raise ValueError(
              f"cmah_loss: the masked-masked pair needs as many extra masked image views as "
              f"point views, got {len(h['image', 'extra'])} and {len(h['point', 'extra'])} "
              f"({name!r}; model.extra_image_views=False encodes the point tower's only)")
        views = zip([h["point", "masked"]] + h["point", "extra"],
                    [h["image", "masked"]] + h["image", "extra"])
        total += sum(con(p, i) for p, i in views) / (1 + len(h["point", "extra"]))
      elif pair == "full_masked":
        total += 0.5 * (con(h["point", "full"], h["image", "masked"])
                        + con(h["point", "masked"], h["image", "full"]))
      elif pair == "masked_point_full_image":  # averaged over the masked point views
        views = [h["point", "masked"]] + h["point", "extra"]
        total += sum(con(p, h["image", "full"]) for p in views) / len(views)
      elif pair == SECOND_VIEW_PAIR:
        total += con(h["image", "full"], h["image", "second"], cross_modal=False)
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
  point_on, image_on = spec.reconstruction_on()
  if point_on:
    l_3d = point_reconstruction_loss(_need(outputs, "point/pred", "L_3D"),
                                     _need(outputs, "point/target", "L_3D"))
  if image_on:
    l_2d = image_reconstruction_loss(_need(outputs, "image/pred", "L_2D"),
                                     _need(outputs, "image/target", "L_2D"),
                                     bool(spec.norm_pix_loss))
  total = l_c + weighted_reconstruction(spec, l_3d, l_2d)
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
  prototype_weight = float(spec.prototype_weight)
  if prototype_weight > 0:
    if spec.prototype_queue_size and assignment is None:
      raise ValueError("cmah_loss: config.loss.prototype_queue_size > 0 needs the "
                       "`assignment` memory (objectives.CmahObjective carries it)")
    l_proto = swapped_prototype_loss(
        outputs["point/h"], outputs["image/h"],
        _need(outputs, "prototypes", "loss.prototype_weight > 0 (set "
              "model.overrides.num_prototypes > 0)"),
        float(spec.prototype_temperature), float(spec.sinkhorn_epsilon),
        int(spec.sinkhorn_iterations), assignment)
    terms["loss/prototype"] = l_proto
    total = total + prototype_weight * l_proto
  if spec.relation_on():
    h_image = _need(outputs, "image/h", "loss.relation_weight > 0")
    h_point = _need(outputs, "point/h", "loss.relation_weight > 0")
    if spec.relation_targets == "cross_modal":
      l_relation = 0.5 * (
          relational_distillation_loss(h_image, h_point, temperature, h_candidates=h_point)
          + relational_distillation_loss(h_point, h_point, temperature, h_candidates=h_image))
    else:  # image_image
      l_relation = relational_distillation_loss(h_image, h_point, temperature)
    terms["loss/relation"] = l_relation
    total = total + float(spec.relation_weight) * l_relation
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

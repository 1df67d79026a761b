"""CMAH losses, each a pure function: L = L_c + lambda_r * (L_3D + L_2D) [paper].

One concept per module; everything public is re-exported here (`losses.contrastive_loss`):
- `contrastive`: the in-batch cross-modal InfoNCE family (plain, debiased, supervised, soft).
- `memory`: `NegativeQueue`, a memory of earlier batches' codes, and the losses reading it.
- `reconstruction`: L_3D (Chamfer-L2, [Point-MAE]) and L_2D (MSE, [MAE]).
- `relations`: one tower's in-batch neighbour distribution distilled from the other's.
- `prototypes`: cross-modal swapped prototype prediction (Sinkhorn-Knopp targets).
- `code_quality`: bit balance, decorrelation and quantisation penalties.
- `spec`: `LossSpec`, the validated `config.loss`.
- `combined`: `cmah_loss(outputs, spec, ...)`, the total and each term, for logging.
"""
from cmah_jax.losses.code_quality import code_quality_terms
from cmah_jax.losses.combined import cmah_loss
from cmah_jax.losses.contrastive import (
    contrastive_loss, cross_modal_logits, debiased_contrastive_loss, joint_affinity_targets,
    l2_normalize, soft_contrastive_loss, square_diagonal, supervised_contrastive_loss)
from cmah_jax.losses.memory import (
    NegativeQueue, nearest_neighbour_contrastive_loss, nearest_neighbour_rows,
    queued_contrastive_loss)
from cmah_jax.losses.prototypes import sinkhorn_knopp, swapped_prototype_loss
from cmah_jax.losses.reconstruction import image_reconstruction_loss, point_reconstruction_loss
from cmah_jax.losses.relations import relational_distillation_loss
from cmah_jax.losses.spec import PAIRS, LossSpec, parse_pairs

__all__ = [
    "PAIRS", "LossSpec", "NegativeQueue", "cmah_loss", "code_quality_terms",
    "contrastive_loss", "cross_modal_logits", "debiased_contrastive_loss",
    "image_reconstruction_loss", "joint_affinity_targets", "l2_normalize",
    "nearest_neighbour_contrastive_loss", "nearest_neighbour_rows", "parse_pairs",
    "point_reconstruction_loss", "queued_contrastive_loss", "relational_distillation_loss",
    "soft_contrastive_loss",
    "sinkhorn_knopp", "square_diagonal", "supervised_contrastive_loss",
    "swapped_prototype_loss",
]

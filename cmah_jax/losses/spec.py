"""`LossSpec`: the validated settings of `cmah_loss` (`config.loss`)."""
from __future__ import annotations

import dataclasses

PAIRS = ("full_full", "masked_masked", "full_masked", "intra_modal", "masked_point_full_image",
         "image_views")
# The pairs that read the extra masked views (`model.masked_views > 1`), and whose towers'
# views each reads (`cmah_loss`); the other pairs read view 0 only.
EXTRA_VIEW_TOWERS = {"masked_masked": ("point", "image"), "masked_point_full_image": ("point",)}
# The pair that reads a second rendered image view ("image/h_second"); with it in
# `loss.pairs`, `config.resolve` has the input pipeline draw that view.
SECOND_VIEW_PAIR = "image_views"
# `loss.relation_targets`: what `relational_distillation_loss` teaches (`cmah_loss`).
RELATION_TARGETS = ("image_image", "cross_modal")


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
  """Settings of `cmah_loss` (`config.loss`). `pairs` is checked on construction and may be
  given as `"full_full,masked_masked"` (stored as a tuple); the rest by `validate()`, which
  `config.resolve` and `cmah_loss` call.
  """
  temperature: float = 0.2                  # [ours: chosen on the validation carve of the
                                            # train split (0.07, 0.2, 0.5 at 16 bits);
                                            # the paper's value is unknown, ConMH uses 0.5;
                                            # 0.07 (CLIP) is `configs/default.py:paper`;
                                            # confirmed at 4,800 steps, round 16b]
  # [paper: "full-full and masked pairs"; which masked pair ours: the masked point view
  # against the full image, chosen on the validation carve in round 18 (docs/tuning.md);
  # the paper's masked-masked pair is `configs/default.py:paper` and `PAPER_PAIRS`]
  pairs: tuple[str, ...] = ("full_full", "masked_point_full_image")
  lambda_r: float = 1.0                     # [paper shows no weight; ConMH 1:1]
  # Relative weights inside the reconstruction term, L_c + lambda_r * (w_3D L_3D + w_2D
  # L_2D) [ours]: the Chamfer L_3D on patch-local coordinates is ~1e-2 and its gradient on
  # the point encoder ~5e-4 of L_c's at the end of a run
  # (`python -m cmah_jax.experiments.gradients`), so at 1:1 the encoders barely hear it.
  point_recon_weight: float = 1.0
  # [ours: chosen on the validation carve, round 10 (README): at 64 bits, mean of seeds
  # 0-1, weights 0.1 / 0.3 / 1 gave 0.735/0.726, 0.737/0.717, 0.724/0.703 (i2p/p2i), no
  # L_2D 0.741/0.711 (seed 0); 0.1 has the best mean over both directions and also led
  # at 16 bits. The paper's 1:1 is `configs/default.py:paper`.]
  image_recon_weight: float = 0.1
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
  # Cross-modal swapped prototype prediction (`swapped_prototype_loss`) on the full-pass
  # codes, added with this weight, 0 = off [ours, after SwAV / XDC]; needs
  # `model.num_prototypes > 0`. Predictions at `prototype_temperature`; targets by
  # Sinkhorn-Knopp with `sinkhorn_epsilon` and `sinkhorn_iterations` [SwAV: 0.1, 0.05, 3];
  # `prototype_queue_size > 0` lets the last that many objects' codes (>= the global batch
  # size) join the equipartition, as SwAV's queue does for small batches. Not kept: 64
  # prototypes with a 512-object queue lowered validation mAP at 64 bits (0.663 / 0.634
  # against 0.728 / 0.705; README, round 9).
  prototype_weight: float = 0.0
  prototype_temperature: float = 0.1
  sinkhorn_epsilon: float = 0.05
  sinkhorn_iterations: int = 3
  prototype_queue_size: int = 0
  # UCCH's temperature t of its Eq. (4), read only by `objective="ucch"`
  # (`baselines/deep.py`) [UCCH paper Sec. 4.2.2: 0.9, chosen for MLP hash nets on frozen
  # pretrained features]; here its towers train from scratch, so t is screened on the
  # validation carve as CMAH's temperature was (`ucch_t*` candidates, docs/tuning.md).
  ucch_temperature: float = 0.9
  # Whether UCCH's memory-bank initialisation and sampled negatives are drawn from the
  # run's seed (`config.seed`), as every other random choice of a run is; False: seed 0
  # whatever the run's seed, as UCCH's runs recorded before 2026-12-07 did (their seeds
  # then differed in initialisation and data order only) [ours].
  ucch_seed_per_run: bool = True
  # The first this many training steps train the reconstruction alone, `lambda_r (w_3D
  # L_3D + w_2D L_2D)`; every other term of `cmah_loss` is multiplied by 0 until then, and
  # by 1 from this step on; 0 = off (the paper's joint objective from step 0) [ours, after
  # MAE / Point-MAE's pre-training before the discriminative objective, within one run
  # and one learning-rate schedule; `objectives.CmahObjective` applies it; round 20].
  reconstruction_only_steps: int = 0
  # Weight of `relational_distillation_loss` from the point tower's full-pass codes
  # (teacher, no gradient) to the image tower's (student), at `temperature`, 0 = off: the
  # image codes' softmax over the batch's other objects is pulled towards the point codes'
  # [ours, after relational knowledge distillation (Park et al., CVPR 2019) and
  # cross-modal distillation (Gupta et al., CVPR 2016); round 22, docs/tuning.md]. Not
  # kept: weight 1 was level with today's CMAH at 64 bits on the carve (-0.001 / -0.004).
  relation_weight: float = 0.0
  # Which relations the point codes teach (read only with relation_weight > 0):
  # "image_image" (round 22): the image codes' own in-batch neighbourhoods; "cross_modal"
  # (round 23): each image code's ranking of the batch's *other objects' point codes*, and
  # each point code's ranking of the other objects' image codes, the two averaged, the
  # rankings retrieval scores [ours; docs/tuning.md]. Not kept: level with today's CMAH
  # at 64 bits on the carve (-0.005 / -0.003).
  relation_targets: str = "image_image"

  def reconstruction_on(self) -> tuple[bool, bool]:
    """Whether `cmah_loss` computes (L_3D, L_2D): lambda_r != 0 and the term's switch on."""
    on = float(self.lambda_r) != 0.0
    return on and bool(self.use_point_recon), on and bool(self.use_image_recon)

  def relation_on(self) -> bool:
    """Whether `cmah_loss` computes `relational_distillation_loss`: relation_weight > 0."""
    return float(self.relation_weight) > 0.0

  def __post_init__(self):
    object.__setattr__(self, "pairs", parse_pairs(self.pairs))

  def validate(self) -> "LossSpec":
    for name in ("temperature", "ucch_temperature"):
      if not float(getattr(self, name)) > 0:
        raise ValueError(f"config.loss.{name} must be > 0, got {getattr(self, name)!r}")
    for name in ("lambda_r", "point_recon_weight", "image_recon_weight", "balance_weight",
                 "decorrelation_weight", "quantization_weight", "embed_weight",
                 "code_contrast_weight", "relation_weight"):
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
    if float(self.prototype_weight) < 0:
      raise ValueError(f"config.loss.prototype_weight must be >= 0, got "
                       f"{self.prototype_weight!r}")
    if not (float(self.prototype_temperature) > 0 and float(self.sinkhorn_epsilon) > 0):
      raise ValueError("config.loss.prototype_temperature and sinkhorn_epsilon must be > 0, "
                       f"got {self.prototype_temperature!r}, {self.sinkhorn_epsilon!r}")
    if int(self.sinkhorn_iterations) != self.sinkhorn_iterations or self.sinkhorn_iterations < 1:
      raise ValueError("config.loss.sinkhorn_iterations must be an int >= 1, got "
                       f"{self.sinkhorn_iterations!r}")
    if int(self.prototype_queue_size) != self.prototype_queue_size or (
        self.prototype_queue_size < 0) or (
        self.prototype_queue_size > 0 and not float(self.prototype_weight) > 0):
      raise ValueError("config.loss.prototype_queue_size must be an int >= 0, and > 0 only "
                       f"with prototype_weight > 0; got {self.prototype_queue_size!r}, "
                       f"{self.prototype_weight!r}")
    if float(self.prototype_weight) > 0 and self.supervised:
      raise ValueError("config.loss.prototype_weight > 0 is for the unsupervised loss; set "
                       "loss.supervised=False or prototype_weight=0")
    if self.nn_support_size and self.supervised:
      raise ValueError("config.loss.nn_support_size > 0 is for the unsupervised loss; set "
                       "loss.supervised=False or nn_support_size=0")
    if self.relation_targets not in RELATION_TARGETS:
      raise ValueError(f"config.loss.relation_targets={self.relation_targets!r}: expected "
                       f"one of {list(RELATION_TARGETS)}")
    steps = self.reconstruction_only_steps
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
      raise ValueError("config.loss.reconstruction_only_steps must be an int >= 0, got "
                       f"{steps!r}")
    weighted = [on and float(w) > 0 for on, w in zip(
        self.reconstruction_on(), (self.point_recon_weight, self.image_recon_weight))]
    if steps and not (self.objective == "cmah" and any(weighted)):
      raise ValueError(
          f"config.loss.reconstruction_only_steps={steps} trains the reconstruction alone "
          "first, but this objective has none (objective must be 'cmah' with lambda_r > 0 "
          "and L_3D or L_2D on and weighted); set it to 0")
    if self.queue_size and (self.supervised or float(self.soft_target_weight) > 0):
      raise ValueError("config.loss.queue_size > 0 works with the one-hot unsupervised "
                       "contrastive loss only; set loss.supervised=False and "
                       "loss.soft_target_weight=0, or queue_size=0")
    return self

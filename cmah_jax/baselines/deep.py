"""Deep cross-modal hashing baselines as training objectives on CMAH's two towers.

UCCH [Hu et al., "Unsupervised Contrastive Cross-modal Hashing", TPAMI 2023; code
github.com/penghu-cs/UCCH], registered as `config.loss.objective = "ucch"`. Written from the
paper's equations and a reading of the authors' code (`UCCH.py`, `NCE/NCEAverage.py`,
`NCE/NCECriterion.py`, `src/utils.py:ContrastiveLoss`); the text branch is our point tower,
the image branch our image tower. With x = image, y = point cloud, u = h / ||h|| (the tanh
codes `image/h`, `point/h` L2-normalised [UCCH: `norm=True` heads]) and
sgn(z) = +1 if z >= 0 else -1 [UCCH Eq. (1)]:

  keys (Eq. 3-4):  k_j = sgn(v_j) / sqrt(L), v = the memory bank [N, L] (no gradient)
  L_c (Eq. 3-4):   mean_i -log P(i | u^x_i) + mean_i -log P(i | u^y_i),
                   P(i | u) = e(k_i) / (e(k_i) + sum_{r in R_i} e(k_r)), e(k) = exp(<u, k> / t),
                   R_i: K indices drawn uniformly (with replacement) from [0, N)
  L_r (Eq. 8, 14): M = U^x U^y^T; for each direction (rows of M, then of M^T):
                   S_ij = M_ij if M_ii - M_ij <= m else M_ij - xi   (which case: no gradient)
                   mean_i [m + kappa log sum_j exp(S_ij / kappa) - S_ii]
  total (Eq. 15):  beta L_c + (1 - beta) L_r
  memory (Eq. 5):  v_{index_i} <- n(d v_{index_i} + (1 - d) n((u^x_i + u^y_i) / 2)), n = L2
                   normalisation [UCCH code; the paper's Eq. (5) shows no normalisation]

Warm-up [UCCH code, `--warmup_epoch 1`]: during the first epoch the keys are the in-batch
sgn((u^x_j + u^y_j) / 2) (positive j = i, negatives the rest of the batch) and the memory
update uses d = 0, so the bank holds every example's current code when sampling from it
starts. The "momentum optimizer" for the sign step is exactly this pair (binary keys sgn(v),
v a momentum average of both modalities' outputs): the codes of the dictionary are never
relaxed; the networks' outputs chase them.

Deviations [ours]: UCCH trains MLP hash nets on fixed pretrained features (its raw-image
variant fine-tunes a VGG after freezing it for the warm-up epochs); here the hash heads sit
on our trainable encoders, nothing is frozen in warm-up, and the optimizer, schedule and
step budget are CMAH's (UCCH: Adam 1e-4, weight decay 1e-6, clip 1, batch 256, 20 epochs).
Only the full-pass codes are used (the masked pass and decoders get no loss; with
lambda_r = 0 XLA drops them). Negatives of step s come from a key folded with s, so a
resumed run draws the same ones. The logits of the K sampled keys are gathered from the
[B, N] similarity to the whole bank (the values of UCCH's gather of K + 1 keys per row,
cheaper for N of our datasets). The bank starts as unbiased random +-1/sqrt(L) rows (UCCH's
sgn(2s z - s), z ~ N(0, 1), is +1 with probability 0.31); the warm-up epoch overwrites every
row it visits. L_c and L_r average over the batch as UCCH's code does (the paper's Eq. (3)
writes a sum); L_r keeps the constant m of Eq. (14), so logged values compare with UCCH's.
The hash heads are CMAH's (Dense, LayerNorm, tanh; UCCH: MLPs with 8,192 hidden units,
tanh, L2 norm). K = 4,096 is UCCH's value for a bank of ~18,000 (MIRFlickr); on the
embedded set's N = 4,000 training objects it is about the whole bank (each anchor draws
its own key as a negative about once; UCCH, too, does not exclude it). A run reports its
last step; UCCH's code keeps the epoch that scored best on training items.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from cmah_jax import objectives
from cmah_jax.losses import LossSpec, square_diagonal


@dataclasses.dataclass(frozen=True)
class UcchSettings:
  """UCCH's hyper-parameters. Only the temperature is a config field
  (`config.loss.ucch_temperature`; `config.loss.temperature` is CMAH's)."""
  beta: float = 0.7          # L = beta L_c + (1 - beta) L_r [UCCH README `--alpha 0.7`
                             # (MIRFLICKR); utils/config.py default 0.9; paper: validation]
  temperature: float = 0.9   # t of Eq. (4) [UCCH paper Sec. 4.2.2, `--T 0.9`]
  momentum: float = 0.4      # d of Eq. (5) [UCCH paper Sec. 4.2.2, `--momentum 0.4`]
  num_negatives: int = 4096  # K sampled keys [UCCH paper Sec. 4.2.2, `--K 4096`];
                             # 0 = the whole bank as dictionary (Eq. 3 unsampled) [ours]
  margin: float = 0.2        # m of Eq. (8), (14) [UCCH paper Sec. 4.2.2, `--margin 0.2`]
  shift: float = 0.1         # xi > 0 of Eq. (8) [UCCH README `--shift 0.1`; config.py 1]
  kappa: float = 1.0         # kappa of Eq. (14) [UCCH code: ContrastiveLoss tau = 1]
  warmup_epochs: int = 1     # in-batch keys and d = 0 [UCCH code `--warmup_epoch 1`]
  seed: int = 0              # bank initialisation and negative sampling [ours]
  stream: int | None = None  # their keys fold this in first (UCCH_STREAM: apart from the
                             # trainer's keys); None: key(seed) itself, as runs before

  def validate(self) -> "UcchSettings":
    checks = {"0 <= beta <= 1": 0 <= self.beta <= 1, "temperature > 0": self.temperature > 0,
              "0 <= momentum < 1": 0 <= self.momentum < 1, "margin >= 0": self.margin >= 0,
              "shift >= 0": self.shift >= 0, "kappa > 0": self.kappa > 0,
              "num_negatives >= 0": self.num_negatives >= 0,
              "warmup_epochs >= 0": self.warmup_epochs >= 0}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
      raise ValueError(f"UcchSettings: need {bad}; got {self}")
    return self


# ----------------------------------------------------------------------------- pieces
def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows over their L2 norm: `[..., L]` -> float32 `[..., L]` [UCCH: `norm=True`]."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def sgn(x: jax.Array) -> jax.Array:
  """+1 where x >= 0, else -1 (float32) [UCCH Eq. (1)]; zero gradient."""
  return jnp.where(x >= 0, 1.0, -1.0).astype(jnp.float32)


def hash_keys(v: jax.Array) -> jax.Array:
  """Unit-norm binary keys `sgn(v) / sqrt(L)`, `[..., L]` float32, no gradient [UCCH Eq.
  (3)-(4): ||k|| = 1; the code's T * sqrt(bit) on unnormalised signs is the same]."""
  return jax.lax.stop_gradient(sgn(v) / math.sqrt(v.shape[-1]))


# UCCH's own key stream, apart from the trainer's: `train.run_keys(seed)` is
# `split(key(seed))`, whose halves are `fold_in(key(seed), 0 / 1)` (partitionable
# threefry), the keys the bank and the negatives drew from before (`UcchSettings.stream`).
UCCH_STREAM = 0x55CC


def _ucch_key(seed: int, stream: int | None) -> jax.Array:
  key = jax.random.key(seed)
  return key if stream is None else jax.random.fold_in(key, stream)


def init_memory(num_examples: int, bits: int, seed: int = 0,
                stream: int | None = None) -> jax.Array:
  """Random unit-norm binary rows `[N, L]` float32: unbiased +-1/sqrt(L) [ours; UCCH's
  sgn(2s z - s), z ~ N(0, 1), is +1 with probability 0.31: module docstring]."""
  key = jax.random.fold_in(_ucch_key(seed, stream), 0)
  return jax.random.rademacher(key, (num_examples, bits), jnp.float32) / math.sqrt(bits)


def sample_negatives(seed: int, step, batch: int, num_examples: int, k: int,
                     stream: int | None = None) -> jax.Array:
  """K uniform bank indices per row, int32 `[B, K]`, a function of `(seed, stream, step)`
  only [UCCH: AliasMethod over uniform unigrams, with replacement; the key is ours]."""
  key = jax.random.fold_in(jax.random.fold_in(_ucch_key(seed, stream), 1), step)
  return jax.random.randint(key, (batch, k), 0, num_examples, dtype=jnp.int32)


def memory_contrastive_loss(u_x: jax.Array, u_y: jax.Array, memory: jax.Array,
                            index: jax.Array, negatives: jax.Array | None,
                            temperature: float) -> jax.Array:
  """L_c with keys from the bank [UCCH Eq. (3)-(4); mean over the batch as its code].

  Args:
    u_x, u_y: `[B, L]` float, unit-norm outputs of the image and point towers.
    memory: `[N, L]` float bank v (keys sgn(v), no gradient).
    index: `[B]` int, bank row of each pair (its positive key).
    negatives: `[B, K]` int bank rows of the negatives, or None for all N keys.
    temperature: t > 0.
  Returns:
    scalar float32: mean_i -log P(i|u^x_i) + mean_i -log P(i|u^y_i).
  """
  keys = hash_keys(memory)
  total = jnp.zeros((), jnp.float32)
  for u in (u_x, u_y):
    sims = u.astype(jnp.float32) @ keys.T / temperature  # [B, N]
    pos = jnp.take_along_axis(sims, index[:, None].astype(jnp.int32), axis=1)  # [B, 1]
    if negatives is None:
      lse = jax.nn.logsumexp(sims, axis=1)
    else:
      neg = jnp.take_along_axis(sims, negatives, axis=1)  # [B, K]
      lse = jax.nn.logsumexp(jnp.concatenate([pos, neg], axis=1), axis=1)
    total += jnp.mean(lse - pos[:, 0])
  return total


def in_batch_contrastive_loss(u_x: jax.Array, u_y: jax.Array, temperature: float
                              ) -> jax.Array:
  """L_c of UCCH's warm-up: keys sgn((u^x_j + u^y_j) / 2) of the batch, positive j = i
  [UCCH code: NCEAverage with momentum <= 0].

  Args:
    u_x, u_y: `[B, L]` float, unit-norm.
  Returns:
    scalar float32.
  """
  keys = hash_keys(0.5 * (u_x + u_y))  # [B, L]
  total = jnp.zeros((), jnp.float32)
  for u in (u_x, u_y):
    sims = u.astype(jnp.float32) @ keys.T / temperature  # [B, B]
    total += jnp.mean(jax.nn.logsumexp(sims, axis=1) - square_diagonal(sims))
  return total


def cross_modal_ranking_loss(u_x: jax.Array, u_y: jax.Array, margin: float, shift: float,
                             kappa: float = 1.0) -> jax.Array:
  """CRL [UCCH Eq. (8), (14)]: both directions of
  `mean_i [m + kappa log sum_j exp(S_ij / kappa) - S_ii]`, S_ij = M_ij if
  M_ii - M_ij <= m else M_ij - xi; which case applies carries no gradient [UCCH code].

  Args:
    u_x, u_y: `[B, L]` float, unit-norm (M = U^x U^y^T, cosine similarities).
  Returns:
    scalar float32.
  """
  m = u_x.astype(jnp.float32) @ u_y.astype(jnp.float32).T  # [B, B]

  def one_way(mat):  # rows are the queries
    diag = square_diagonal(mat)
    inside = jax.lax.stop_gradient(mat >= diag[:, None] - margin)
    s = jnp.where(inside, mat, mat - shift)
    return jnp.mean(margin + kappa * jax.nn.logsumexp(s / kappa, axis=1) - square_diagonal(s))

  return one_way(m) + one_way(m.T)


def update_memory(memory: jax.Array, index: jax.Array, u_x: jax.Array, u_y: jax.Array,
                  momentum) -> jax.Array:
  """Momentum update of the bank rows `index` [UCCH Eq. (5), normalised as its code]:
  `v_i <- n(d v_i + (1 - d) n((u^x + u^y) / 2))`, n = L2 normalisation. Rows of `index`
  must be distinct (every train batch of ours is). No gradient.

  Args:
    memory: `[N, L]` float32; index: `[B]` int; u_x, u_y: `[B, L]`; momentum: d in [0, 1).
  Returns:
    the new bank, `[N, L]` float32.
  """
  target = l2_normalize(0.5 * (u_x + u_y))
  rows = l2_normalize(momentum * memory[index] + (1.0 - momentum) * target)
  return jax.lax.stop_gradient(memory.at[index].set(rows.astype(memory.dtype)))


# ----------------------------------------------------------------------------- objective
# The weights and sizes of the terms `losses.cmah_loss` adds to L_c (tuning rounds 1-23),
# all 0 when off: UCCH's objective reads none of them, so one set would only rename a run.
CMAH_ONLY_TERMS = ("soft_target_weight", "embed_weight", "code_contrast_weight",
                   "queue_size", "nn_positive_weight", "debias_positive_prior",
                   "prototype_weight", "prototype_queue_size", "reconstruction_only_steps",
                   "relation_weight")


@dataclasses.dataclass(frozen=True)
class UcchObjective:
  """UCCH [Hu et al., TPAMI 2023] on CMAH's towers: `beta L_c + (1 - beta) L_r` on the
  full-pass codes, with a binary memory bank carried as `loss_state = {"memory": [N, K]}`.

  Unsupervised, no reconstruction: needs `config.loss.lambda_r=0` and
  `config.loss.pairs=full_full`, and the code-quality weights at 0. `settings` None (what
  `config.loss.objective="ucch"` builds): UCCH's published settings with the temperature
  `spec.ucch_temperature`, drawing from `seed` (0 with `spec.ucch_seed_per_run=False`);
  given, they are used as they are.
  """
  spec: LossSpec
  bits: int
  settings: UcchSettings | None = None
  seed: int = 0  # the run's (`config.seed`): read when `settings` is None

  def __post_init__(self):
    if self.settings is None:
      object.__setattr__(self, "settings", UcchSettings(
          temperature=float(self.spec.ucch_temperature),
          **(dict(seed=int(self.seed), stream=UCCH_STREAM) if self.spec.ucch_seed_per_run
             else dict(seed=0))))
    self.settings.validate()
    spec = self.spec
    wrong = {
        "supervised=False": not spec.supervised,
        "lambda_r=0": float(spec.lambda_r) == 0.0,
        "pairs=full_full": tuple(spec.pairs) == ("full_full",),
        "balance_weight=decorrelation_weight=quantization_weight=0": not any(
            float(w) for w in (spec.balance_weight, spec.decorrelation_weight,
                               spec.quantization_weight)),
    }
    # CMAH's own additions (`losses.spec`): UCCH's objective never reads them.
    wrong.update({f"{name}=0": not float(getattr(spec, name)) for name in CMAH_ONLY_TERMS})
    bad = [k for k, ok in wrong.items() if not ok]
    if bad:
      raise ValueError(
          "config.loss.objective='ucch' trains UCCH's loss alone (unsupervised, no "
          "reconstruction, full-pass codes); set " + ", ".join(f"config.loss.{b}" for b in bad))
    if self.bits <= 0:
      raise ValueError(f"UcchObjective: bits must be > 0, got {self.bits}")

  def init_state(self, num_examples: int) -> dict:
    """`{"memory": [num_examples, bits] float32}`, random unit-norm binary rows."""
    if num_examples <= 0:
      raise ValueError(f"UcchObjective: num_examples must be > 0, got {num_examples}")
    return {"memory": init_memory(num_examples, self.bits, self.settings.seed,
                                  self.settings.stream)}

  def warmup_steps(self, num_examples: int, batch: int) -> int:
    """Steps of the warm-up epochs: `warmup_epochs * (N // B)` (our epochs drop the rest)."""
    return self.settings.warmup_epochs * (num_examples // batch)

  def __call__(self, outputs, batch, loss_state, step):
    """`(total, terms, {"memory": new bank})`; `batch["index"]` int32 [B] are bank rows."""
    st = self.settings
    memory = loss_state["memory"]
    n, bits = memory.shape
    h_x, h_y = outputs["image/h"], outputs["point/h"]
    if h_x.shape != h_y.shape or h_x.shape[-1] != bits:
      raise ValueError(f"ucch: image/h {h_x.shape} and point/h {h_y.shape} must be "
                       f"[B, {bits}] like the memory bank {memory.shape}")
    b = h_x.shape[0]
    index = batch["index"].astype(jnp.int32)
    u_x, u_y = l2_normalize(h_x), l2_normalize(h_y)

    negatives = (sample_negatives(st.seed, step, b, n, st.num_negatives, st.stream)
                 if st.num_negatives else None)
    l_c = memory_contrastive_loss(u_x, u_y, memory, index, negatives, st.temperature)
    warm_steps = self.warmup_steps(n, b)
    warm = jnp.asarray(step) < warm_steps
    if warm_steps:
      l_c = jnp.where(warm, in_batch_contrastive_loss(u_x, u_y, st.temperature), l_c)
    l_r = cross_modal_ranking_loss(u_x, u_y, st.margin, st.shift, st.kappa)
    total = st.beta * l_c + (1.0 - st.beta) * l_r
    momentum = jnp.where(warm, 0.0, st.momentum)
    new_memory = update_memory(memory, index, u_x, u_y, momentum)
    zero = jnp.zeros((), jnp.float32)
    terms = {"loss/contrastive": l_c, "loss/ranking": l_r, "loss/point_recon": zero,
             "loss/image_recon": zero, "loss/total": total,
             "ucch/warmup": warm.astype(jnp.float32)}
    return total, terms, {"memory": new_memory}


objectives.register("ucch", UcchObjective)

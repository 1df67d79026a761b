"""The optimizer: AdamW with global-norm clipping, linear warm-up then cosine decay
[Point-MAE]; weight decay on matrices only [MAE]."""
from __future__ import annotations

import jax
import optax

from cmah_jax.config import OptimSpec


def peak_learning_rate(optim: OptimSpec, batch_size: int) -> float:
  """base lr * batch / base batch [Point-MAE]."""
  return optim.base_learning_rate * batch_size / optim.learning_rate_base_batch


def learning_rate_schedule(optim: OptimSpec, batch_size: int, total_steps: int):
  """Linear warm-up from 0 to the peak, then cosine decay to `min_learning_rate_ratio` of
  it at `total_steps`. The warm-up is cut to `total_steps - 1` for very short runs."""
  peak = peak_learning_rate(optim, batch_size)
  warmup = min(int(optim.warmup_steps), max(int(total_steps) - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(int(total_steps), warmup + 1),
      end_value=peak * optim.min_learning_rate_ratio)


def decay_mask(params):
  """Weight decay on matrices only, not on biases, norms or 1D embeddings [MAE]."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(optim: OptimSpec, batch_size: int, total_steps: int):
  """`(optax transformation, learning-rate schedule)`."""
  schedule = learning_rate_schedule(optim, batch_size, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(optim.grad_clip_norm),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
                  mask=decay_mask))
  return tx, schedule

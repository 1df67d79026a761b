"""The optimizer: AdamW with global-norm clipping, linear warm-up then cosine decay
[Point-MAE]; weight decay on matrices only [MAE]; and the train log's line on the step
schedule it follows (`describe_schedule`)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from cmah_jax import config as config_lib
from cmah_jax.config import OptimSpec


def peak_learning_rate(optim: OptimSpec, batch_size: int) -> float:
  """base lr * batch / base batch [Point-MAE]."""
  return optim.base_learning_rate * batch_size / optim.learning_rate_base_batch


def effective_warmup_steps(warmup_steps: int, total_steps: int) -> int:
  """The warm-up a run of `total_steps` gets: `warmup_steps`, cut to `total_steps - 1` when
  `warmup_steps >= total_steps` (`describe_schedule` says so)."""
  return min(int(warmup_steps), max(int(total_steps) - 1, 0))


def describe_schedule(cfg: config_lib.ExperimentConfig, train_examples: int) -> str:
  """The train log's line on a resolved schedule (`config.resolve_schedule`); it names a warm-up
  cut to fit a short run (`effective_warmup_steps`) and, with
  `loss.reconstruction_only_steps`, the restart and its second warm-up (`make_optimizer`),
  saying so when the run ends before that warm-up does."""
  warmup = effective_warmup_steps(cfg.optim.warmup_steps, cfg.total_steps)
  cut = (f" (config.optim.warmup_steps={cfg.optim.warmup_steps} cut to fit "
         f"{cfg.total_steps} steps)" if warmup != cfg.optim.warmup_steps else "")
  evals = (f"evaluation every {cfg.eval_every_steps} steps" if cfg.eval_every_steps
           else "evaluation at the end")
  restart = cfg.loss.reconstruction_only_steps
  rewarmup = rewarmup_steps(cfg.optim.warmup_steps)
  unfinished = (f", which the run ends before ({cfg.total_steps - restart} steps after the "
                f"restart)" if restart + rewarmup > cfg.total_steps else "")
  rewarm = (f", reconstruction alone until step {restart}, then the full objective with a "
            f"fresh Adam and a second warm-up of {rewarmup} steps{unfinished} "
            f"(config.loss.reconstruction_only_steps)" if restart else "")
  return (f"Schedule: {cfg.total_steps} steps "
          f"({cfg.total_steps * cfg.input.batch_size / max(train_examples, 1):.1f} epochs of "
          f"{train_examples} training examples at batch {cfg.input.batch_size}), warm-up "
          f"{warmup} steps{cut}{rewarm}, {evals}")


def learning_rate_schedule(optim: OptimSpec, batch_size: int, total_steps: int):
  """Linear warm-up from 0 to the peak, then cosine decay to `min_learning_rate_ratio` of
  it at `total_steps`. The warm-up is cut to `total_steps - 1` for very short runs
  (`effective_warmup_steps`)."""
  peak = peak_learning_rate(optim, batch_size)
  warmup = effective_warmup_steps(optim.warmup_steps, total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(int(total_steps), warmup + 1),
      end_value=peak * optim.min_learning_rate_ratio)


def rewarmup_steps(warmup_steps: int) -> int:
  """The length of `rewarmed_schedule`'s second warm-up: `warmup_steps`, at least 1."""
  return max(int(warmup_steps), 1)


def rewarmed_schedule(schedule, restart_step: int, warmup_steps: int):
  """`schedule(t)`, times a second linear warm-up from 0 over `warmup_steps` that starts at
  `restart_step`: `schedule(t) * min(1, (t - restart_step) / warmup_steps)` from then on."""
  restart, warmup = int(restart_step), rewarmup_steps(warmup_steps)

  def rewarmed(step):
    ramp = jnp.clip((jnp.asarray(step, jnp.float32) - restart) / warmup, 0.0, 1.0)
    return schedule(step) * jnp.where(jnp.asarray(step) >= restart, ramp, 1.0)
  return rewarmed


class RestartState(NamedTuple):
  inner: optax.OptState
  count: jax.Array  # int32 []: updates made so far


def restarted_at(inner: optax.GradientTransformation, restart_step: int
                 ) -> optax.GradientTransformation:
  """`inner`, whose state is replaced by a fresh `inner.init(params)` just before update
  number `restart_step` (0-based): for Adam, zero moments and a bias correction that
  starts again, as a new optimiser would. Needs `params` in `update`."""
  restart = int(restart_step)

  def init(params):
    return RestartState(inner.init(params), jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("restarted_at: update needs params (to build the fresh state)")
    now = state.count == restart
    fresh = inner.init(params)
    inner_state = jax.tree.map(lambda f, old: jnp.where(now, f, old), fresh, state.inner)
    updates, inner_state = inner.update(updates, inner_state, params)
    return updates, RestartState(inner_state, state.count + 1)

  return optax.GradientTransformation(init, update)


def decay_mask(params):
  """Weight decay on arrays of 2+ dimensions only, not on biases, norms or 1D embeddings
  [MAE's `param_groups_weight_decay`]. So the decoders' mask tokens `[1, 1, C]` decay, as
  in MAE's pre-training; Point-MAE's `add_weight_decay` also exempts names containing
  'token' (its mask and cls tokens) [departure from Point-MAE, kept: every run so far]."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(optim: OptimSpec, batch_size: int, total_steps: int,
                   restart_step: int = 0):
  """`(optax transformation, learning-rate schedule)`.

  `restart_step > 0` (`loss.reconstruction_only_steps`: the objective changes there):
  Adam starts afresh at that update (zero moments, bias correction from 1; `restarted_at`)
  and the learning rate warms up again over `optim.warmup_steps` (`rewarmed_schedule`), as
  a new run would, so that the first updates of the new objective are not scaled by
  second moments of the old one [ours; MAE fine-tunes with a fresh optimiser and warm-up].
  0: AdamW as `optax.adamw` builds it.
  """
  schedule = learning_rate_schedule(optim, batch_size, total_steps)
  if restart_step and not 0 < int(restart_step) < int(total_steps):
    raise ValueError(f"config.loss.reconstruction_only_steps={restart_step} must be below "
                     f"total_steps={total_steps}, or L_c never trains")
  if restart_step:
    schedule = rewarmed_schedule(schedule, restart_step, optim.warmup_steps)
  clip = optax.clip_by_global_norm(optim.grad_clip_norm)
  adam = optax.scale_by_adam(b1=optim.b1, b2=optim.b2)
  after_adam = (optax.add_decayed_weights(optim.weight_decay, decay_mask),
                optax.scale_by_learning_rate(schedule))
  # The two state trees differ as their checkpoints do: `optax.adamw`'s own chain nested
  # in the plain optimiser, flat with the restart (as round 20's runs were written).
  if restart_step:
    return optax.chain(clip, restarted_at(adam, restart_step), *after_adam), schedule
  return optax.chain(clip, optax.chain(adam, *after_adam)), schedule

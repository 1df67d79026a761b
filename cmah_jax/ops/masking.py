"""Random token masking driven by a PRNG key alone [MAE, Point-MAE]."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def num_masked(num_tokens: int, mask_ratio: float) -> int:
  """Static count of masked tokens per sample: `int(mask_ratio * num_tokens)` [Point-MAE;
  MAE keeps `int(num_tokens * (1 - mask_ratio))` instead, which masks one more when
  `mask_ratio * num_tokens` is not an integer (T=49, 0.75: 37 against 36); the image
  tokens of every shipped variant, 16, 64 or 196 patches at 0.75, give the same count]."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
  return int(mask_ratio * num_tokens)


def random_mask(key: jax.Array, batch_size: int, num_tokens: int, mask_ratio: float):
  """Per-sample random masks from `argsort(uniform(key, [B, T]))`.

  Each row is a fresh permutation; its first `T_keep = T - T_mask` entries are kept and the
  rest masked, `T_mask = int(mask_ratio * T)`. A pure function of `key`.

  Args:
    key: PRNG key.
    batch_size: B (static).
    num_tokens: T (static).
    mask_ratio: fraction masked, in [0, 1) (static: it sets the output shapes; under
      `jit` pass it with `static_argnums` or close over it).
  Returns:
    ids_keep: `[B, T_keep]` int32, sorted ascending (tokens keep their order).
    ids_masked: `[B, T_mask]` int32, sorted ascending.
    mask: `[B, T]` bool, True where masked.
  """
  t_mask = num_masked(num_tokens, mask_ratio)
  noise = jax.random.uniform(key, (batch_size, num_tokens))
  perm = jnp.argsort(noise, axis=-1).astype(jnp.int32)
  ids_keep = jnp.sort(perm[:, : num_tokens - t_mask], axis=-1)
  ids_masked = jnp.sort(perm[:, num_tokens - t_mask:], axis=-1)
  mask = jnp.zeros((batch_size, num_tokens), bool)
  mask = mask.at[jnp.arange(batch_size)[:, None], ids_masked].set(True)
  return ids_keep, ids_masked, mask


def take_tokens(tokens: jax.Array, ids: jax.Array) -> jax.Array:
  """Select tokens per sample.

  Args:
    tokens: `[B, T, ...]`.
    ids: `[B, S]` int.
  Returns:
    `[B, S, ...]`.
  """
  expand = ids.reshape(ids.shape + (1,) * (tokens.ndim - 2))
  return jnp.take_along_axis(tokens, expand, axis=1)

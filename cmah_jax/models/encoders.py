"""Per-modality token encoders over visible tokens, and the global pooling for hashing.

One `TokenEncoder` per modality (no weight sharing between modalities) [Point-MAE, MAE].
The encoder sees whichever tokens it is given: all of them (the full pass used for codes)
or the visible ones only (the masked pass).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmah_jax.models.transformer import StackSpec, TransformerStack


def global_pool(tokens: jax.Array) -> jax.Array:
  """Mean over tokens of the final-LayerNorm'ed encoder output: `[B, T, C] -> [B, C]`.

  Mean pooling as MAE's `global_pool` (Point-MAE's classifier concatenates max and mean;
  we keep the mean so a code is a smooth function of every token) [MAE; ours].
  """
  return jnp.mean(tokens.astype(jnp.float32), axis=1)


class TokenEncoder(nn.Module):
  """Pre-norm transformer encoder with final LayerNorm.

  `pos_every_block=True` adds positions at every block's input [Point-MAE];
  `False` adds them once at the input [MAE].
  """
  spec: StackSpec
  pos_every_block: bool

  @nn.compact
  def __call__(self, tokens: jax.Array, pos: jax.Array, deterministic: bool) -> jax.Array:
    """tokens: `[B, T, C]`; pos: `[B or 1, T, C]`. Returns encoded tokens `[B, T, C]`."""
    stack = TransformerStack(self.spec, name="transformer")
    pos = jnp.broadcast_to(pos, tokens.shape).astype(tokens.dtype)
    if self.pos_every_block:
      return stack(tokens, pos=pos, deterministic=deterministic)
    return stack(tokens + pos, deterministic=deterministic)

"""Hash head [ConMH]: pooled feature -> Dense(K) -> LayerNorm -> tanh = h; code = sign_ste(h).

`h` in (-1, 1) is the continuous code the contrastive loss sees; `code` in {-1, +1} is its
straight-through sign (forward `sign`, with sign(0) = +1; backward the gradient of `h`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmah_jax.models.transformer import dense, layer_norm
from cmah_jax.ops.hashing import sign_ste


class HashHead(nn.Module):
  bits: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array):
    """pooled: `[B, C]`. Returns (h `[B, K]` float32 in (-1, 1), code `[B, K]` float32 +-1).

    The projection runs in `dtype`; the LayerNorm and tanh always in float32, so with a
    half-precision compute dtype `h` (what the contrastive loss sees) is not rounded to 8
    or 11 mantissa bits."""
    x = dense(self.bits, self.dtype, "proj")(pooled.astype(self.dtype))
    h = jnp.tanh(layer_norm(jnp.float32, "norm")(x))
    return h, sign_ste(h)

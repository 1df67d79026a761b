"""Hash head [ConMH]: pooled feature -> Dense(K) -> LayerNorm -> tanh = h; code = sign_ste(h).

`h` in (-1, 1) is the continuous code the contrastive loss sees; `code` in {-1, +1} is its
straight-through sign (forward `sign`, with sign(0) = +1; backward the gradient of `h`).
With a sharpness beta, `h = tanh(beta * LayerNorm(...))`: HashNet's continuation [Cao et
al., ICCV 2017] raises beta during training (`hash_sharpness`) so that h nears the sign
it will be binarised to; the codes (the sign) do not depend on beta.
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
  def __call__(self, pooled: jax.Array, sharpness=1.0):
    """pooled: `[B, C]`; sharpness: beta >= 1, a float or a float32 `[]` array. Returns
    (h `[B, K]` float32 in (-1, 1), code `[B, K]` float32 +-1).

    The projection runs in `dtype`; the LayerNorm and tanh always in float32, so with a
    half-precision compute dtype `h` (what the contrastive loss sees) is not rounded to 8
    or 11 mantissa bits."""
    x = dense(self.bits, self.dtype, "proj")(pooled.astype(self.dtype))
    y = layer_norm(jnp.float32, "norm")(x)
    if not (isinstance(sharpness, (int, float)) and sharpness == 1):
      y = jnp.asarray(sharpness, jnp.float32) * y
    h = jnp.tanh(y)
    return h, sign_ste(h)


def hash_sharpness(step, total_steps: int, end: float) -> jax.Array:
  """HashNet's continuation schedule, `beta_t = sqrt(1 + gamma t)` [Cao et al., ICCV 2017,
  gamma 0.005], with gamma set by the run length so that beta rises from 1 at step 0 to
  `end` at `total_steps` (and stays there): `sqrt(1 + (end^2 - 1) min(t / T, 1))`. At
  `end = 5` and T = 4,800 steps, gamma is HashNet's 0.005.

  Args:
    step: int or int32 `[]`; total_steps: T > 0; end: beta at the last step, >= 1.
  Returns:
    float32 `[]`.
  """
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / float(total_steps), 1.0)
  return jnp.sqrt(1.0 + (float(end) ** 2 - 1.0) * frac)

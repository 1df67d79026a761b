"""Multi-modal fusion decoder (MFB) [paper: self-attention + cross-attention; layout ours].

Per modality: the visible tokens from the masked encoder pass are joined by a learned mask
token for every masked position ([visible; masked], each with its position embedding);
`depth` fusion `Block`s then apply self-attention over that set followed by cross-attention
whose keys/values are the *other* modality's encoded visible tokens (or, with
`fusion_context="code"`, one token made from its code [ours, round 26]; with
`"tokens_and_code"`, that token after the tokens [ours, round 27]); a final LayerNorm and
a linear head predict the masked content (k x 3 coordinates per point group [Point-MAE],
p*p*3 pixels per patch [MAE]). Width equals the encoder's, so no input projection.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmah_jax.models.transformer import StackSpec, TransformerStack, dense

MASK_TOKEN_INIT = nn.initializers.normal(0.02)  # [MAE, Point-MAE]


class FusionDecoder(nn.Module):
  """Masked-token decoder with cross-modal attention.

  `pos_every_block=True` adds positions at every block [Point-MAE decoder]; `False` once
  at the input [MAE decoder].
  """
  spec: StackSpec
  out_dim: int
  pos_every_block: bool
  cross_attention: bool = True  # False: plain self-attention decoder (ablation)

  @nn.compact
  def __call__(self, visible: jax.Array, pos_visible: jax.Array, pos_masked: jax.Array,
               context: jax.Array, deterministic: bool) -> jax.Array:
    """visible: `[B, Tv, C]` encoded visible tokens; pos_visible: `[B, Tv, C]`;
    pos_masked: `[B, Tm, C]`; context: `[B, S, C]` what cross-attention reads: the other
    modality's encoded visible tokens, (S = 1) a token made from its code, or both. Returns
    predictions for the masked positions `[B, Tm, out_dim]` float32."""
    b, _, c = visible.shape
    tm = pos_masked.shape[1]
    mask_token = self.param("mask_token", MASK_TOKEN_INIT, (1, 1, c), jnp.float32)
    x = jnp.concatenate(
        [visible, jnp.broadcast_to(mask_token, (b, tm, c)).astype(visible.dtype)], axis=1)
    pos = jnp.concatenate([pos_visible, pos_masked], axis=1).astype(x.dtype)
    stack = TransformerStack(self.spec, cross_attention=self.cross_attention,
                             name="transformer")
    if not self.cross_attention:
      context = None
    if self.pos_every_block:
      x = stack(x, pos=pos, context=context, deterministic=deterministic)
    else:
      x = stack(x + pos, context=context, deterministic=deterministic)
    return dense(self.out_dim, self.spec.dtype, "head")(x[:, -tm:]).astype(jnp.float32)

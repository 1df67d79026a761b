"""Image tokens: an embedding of non-overlapping patches + fixed 2D sin-cos positions
[MAE]. Patches come from `ops.image.patchify` (row-major), so token `t = row * gw + col`
and the MAE pixel target uses the very same patch layout.

The embedding is MAE's linear map of each patch's pixels, or, with `stem_dims = (c_1, ...,
c_m)`, a hierarchical MLP stem (hMLP) [ours; after Touvron et al., "Three things everyone
should know about Vision Transformers", ECCV 2022]: blocks of p / 2^m pixels -> Dense(c_1)
-> LayerNorm -> GELU; then m times, 2x2 blocks of those -> Dense (c_2, ..., c_m, and
finally `width`), with LayerNorm and GELU between. (Touvron et al.'s 16-pixel patches: 4x4,
then 2x2 twice.) Every block is a kernel = stride merge, so a token depends on its own
patch only and masking a token hides exactly its patch, as in MAE.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cmah_jax.models.transformer import dense, layer_norm
from cmah_jax.ops.image import patchify


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """`[M]` positions -> `[M, dim]` = [sin(p * w_i), cos(p * w_i)], w_i = 10000^(-i/(dim/2))
  [MAE]."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = positions.reshape(-1).astype(np.float64)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2D sin-cos position embedding [MAE]: `[grid_h * grid_w, dim]` float32, row-major
  tokens; the first half of the channels encodes the column, the second half the row (as
  MAE's `get_2d_sincos_pos_embed`). `dim` must be a multiple of 4."""
  if dim % 4:
    raise ValueError(f"2D sin-cos position embedding needs width % 4 == 0, got {dim}")
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
  return emb.astype(np.float32)


def merge_blocks(x: jax.Array, size: int) -> jax.Array:
  """`[B, H, W, C] -> [B, H/s, W/s, s*s*C]`: `patchify`'s blocks of s = `size`, each
  flattened (row, column, channel), kept on their grid."""
  b, h, w, _ = x.shape
  return patchify(x, size).reshape(b, h // size, w // size, -1)


class ImageTokenizer(nn.Module):
  """Normalised images -> (tokens, fixed positions, pixel patches).

  `stem_dims`: () = MAE's linear patch embedding; `(c_1, ..., c_m)` = the hMLP stem, whose
  first blocks are `patch_size / 2^m` pixels wide (`patch_size` a multiple of 2^m).
  """
  patch_size: int
  width: int
  dtype: Any = jnp.float32
  stem_dims: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, images: jax.Array):
    """images: `[B, H, W, 3]` float32 normalised (H, W multiples of `patch_size`).

    Returns:
      tokens: `[B, T, width]` (no positions added); pos: `[1, T, width]` float32 constant;
      patches: `[B, T, p*p*3]` float32 (the pixel reconstruction target).
    """
    _, h, w, _ = images.shape
    p = self.patch_size
    patches = patchify(images.astype(jnp.float32), p)
    if not self.stem_dims:
      tokens = dense(self.width, self.dtype, "patch_embed")(patches.astype(self.dtype))
    else:
      merges = len(self.stem_dims)
      if p % 2 ** merges:
        raise ValueError(f"ImageTokenizer: stem_dims={tuple(self.stem_dims)} merges 2x2 "
                         f"blocks {merges} times, so patch_size must be a multiple of "
                         f"{2 ** merges}; it is {p}")
      x = merge_blocks(images.astype(self.dtype), p // 2 ** merges)
      for i, dim in enumerate(self.stem_dims):
        x = dense(dim, self.dtype, f"stem{i}")(x)
        x = nn.gelu(layer_norm(self.dtype, f"stem{i}_norm")(x), approximate=False)
        x = merge_blocks(x, 2)
      x = dense(self.width, self.dtype, "patch_embed")(x)  # [B, h/p, w/p, width]
      tokens = x.reshape(x.shape[0], -1, self.width)
    pos = jnp.asarray(sincos_2d(self.width, h // p, w // p))[None]
    return tokens, pos, patches

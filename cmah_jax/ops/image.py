"""Image ops: normalisation and (un)patchifying for ViT tokens and MAE targets."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# ImageNet statistics [MAE]: the image tower sees (x / 255 - mean) / std.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_images(images) -> jax.Array:
  """uint8 `[..., H, W, 3]` -> float32 normalised; float input is assumed normalised already.

  Returns:
    `[..., H, W, 3]` float32.
  """
  if images.shape[-1] != 3:
    raise ValueError(f"images must have shape [..., H, W, 3], got {tuple(images.shape)}")
  if jnp.issubdtype(images.dtype, jnp.integer):
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - IMAGENET_MEAN) / IMAGENET_STD
  return jnp.asarray(images, jnp.float32)


def denormalize_images(images) -> np.ndarray:
  """Inverse of `normalize_images` for display: float32 `[..., H, W, 3]` -> uint8."""
  x = np.asarray(images, np.float32) * IMAGENET_STD + IMAGENET_MEAN
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """Split images into non-overlapping patches, row-major.

  Args:
    images: `[B, H, W, C]`, H and W multiples of `patch`.
    patch: patch side p.
  Returns:
    `[B, (H/p) * (W/p), p * p * C]`; each patch flattened as (row, col, channel).
  """
  if images.ndim != 4:
    raise ValueError(f"patchify: images must be [B, H, W, C], got shape {tuple(images.shape)}"
                     " (one image: images[None])")
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: jax.Array, patch: int, height: int, width: int) -> jax.Array:
  """Inverse of `patchify`: `[B, T, p*p*C]` -> `[B, H, W, C]`."""
  b, t, d = patches.shape
  gh, gw = height // patch, width // patch
  if gh * gw != t:
    raise ValueError(f"{t} patches do not tile a {height}x{width} image with patch {patch}")
  c = d // (patch * patch)
  x = patches.reshape(b, gh, gw, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)

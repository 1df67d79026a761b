"""Reconstruction losses of the masked tokens: L_3D (Chamfer-L2 over masked point groups,
[Point-MAE]) and L_2D (MSE over masked patches, [MAE])."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmah_jax.ops.pointcloud import chamfer_distance


def point_reconstruction_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Chamfer-L2 (squared distances, mean + mean) per masked group, averaged over groups
  and batch [Point-MAE].

  Args:
    pred, target: `[B, G_mask, k, 3]` float.
  Returns:
    scalar float32.
  """
  if pred.ndim != 4 or pred.shape[-1] != 3 or pred.shape[:2] != target.shape[:2]:
    raise ValueError(f"point_reconstruction_loss: pred {tuple(pred.shape)} and target "
                     f"{tuple(target.shape)} must be [B, G_mask, k, 3]")
  return jnp.mean(chamfer_distance(pred.astype(jnp.float32), target.astype(jnp.float32)))


def image_reconstruction_loss(pred: jax.Array, target: jax.Array, norm_pix_loss: bool = True
                              ) -> jax.Array:
  """MSE per masked patch, averaged over patches and batch [MAE].

  With `norm_pix_loss` the target of each patch is `(t - mean) / sqrt(var + 1e-6)` over
  its p*p*3 values, `var` unbiased (ddof=1) as torch's `Tensor.var` in MAE [MAE].

  Args:
    pred, target: `[B, T_mask, p*p*3]` float (masked patches only).
  Returns:
    scalar float32.
  """
  if pred.shape != target.shape or pred.ndim != 3:
    raise ValueError(f"image_reconstruction_loss: pred {tuple(pred.shape)} and target "
                     f"{tuple(target.shape)} must both be [B, T_mask, D]")
  target = target.astype(jnp.float32)
  if norm_pix_loss:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  return jnp.mean((pred.astype(jnp.float32) - target) ** 2)

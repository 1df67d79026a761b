"""Point tokens: FPS + kNN groups -> mini-PointNet -> one token per group [Point-MAE].

Substitution: Point-MAE's mini-PointNet uses BatchNorm; we use LayerNorm so that a token
depends on its own group only (no batch statistics; an object's code is the same alone or
in a batch, and train and eval behave alike) [ours].
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmah_jax.models.transformer import dense, layer_norm
from cmah_jax.ops.pointcloud import group_points


class MiniPointNet(nn.Module):
  """Per-group PointNet [Point-MAE], widths `dims = (c1, c2, c3)`:

  point MLP 3 -> c1 (LN, ReLU) -> c2; max-pool over the group; concat the pooled feature
  to every point -> 2*c2; point MLP 2*c2 -> c3 (LN, ReLU) -> width; max-pool.
  """
  dims: Sequence[int]
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, neighborhoods: jax.Array) -> jax.Array:
    """neighborhoods: `[B, G, k, 3]` float32 (re-centred). Returns `[B, G, width]`."""
    c1, c2, c3 = self.dims
    x = dense(c1, self.dtype, "conv1")(neighborhoods.astype(self.dtype))
    x = nn.relu(layer_norm(self.dtype, "norm1")(x))
    x = dense(c2, self.dtype, "conv2")(x)                      # [B, G, k, c2]
    pooled = jnp.max(x, axis=-2, keepdims=True)                # [B, G, 1, c2]
    x = jnp.concatenate([jnp.broadcast_to(pooled, x.shape), x], axis=-1)  # [B, G, k, 2c2]
    x = dense(c3, self.dtype, "conv3")(x)
    x = nn.relu(layer_norm(self.dtype, "norm2")(x))
    x = dense(self.width, self.dtype, "conv4")(x)              # [B, G, k, width]
    return jnp.max(x, axis=-2)


class PositionMLP(nn.Module):
  """Centre position embedding: Dense(hidden) -> GELU -> Dense(width) [Point-MAE]."""
  hidden: int
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, centers: jax.Array) -> jax.Array:
    """centers: `[B, T, 3]` float32. Returns `[B, T, width]`."""
    x = dense(self.hidden, self.dtype, "fc1")(centers.astype(self.dtype))
    return dense(self.width, self.dtype, "fc2")(nn.gelu(x, approximate=False))


class PointTokenizer(nn.Module):
  """Points -> (tokens, encoder positions, neighbourhoods, centres)."""
  num_groups: int
  group_size: int
  dims: Sequence[int]
  pos_hidden: int
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, points: jax.Array):
    """points: `[B, N, 3]` float32.

    Returns:
      tokens: `[B, G, width]`; pos: `[B, G, width]` (encoder position embedding);
      neighborhoods: `[B, G, k, 3]` float32 (re-centred; the reconstruction target);
      centers: `[B, G, 3]` float32.
    """
    neighborhoods, centers = group_points(points, self.num_groups, self.group_size)
    neighborhoods = jax.lax.stop_gradient(neighborhoods)
    centers = jax.lax.stop_gradient(centers)
    tokens = MiniPointNet(self.dims, self.width, self.dtype, name="pointnet")(neighborhoods)
    pos = PositionMLP(self.pos_hidden, self.width, self.dtype, name="pos_embed")(centers)
    return tokens, pos, neighborhoods, centers

"""Pre-norm transformer pieces shared by every stack: attention, MLP, drop-path, blocks.

`Block` is the encoder block (self-attention + MLP) [Point-MAE, MAE]; `FusionBlock` adds a
cross-attention sub-layer whose keys/values come from another token set (the other
modality) [paper: MFB; layout ours]. `TransformerStack` chains either kind with a linear
drop-path schedule and a final LayerNorm.

Randomness: drop-path and dropout draw from the `"dropout"` RNG stream, and only when
`deterministic=False`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Linear layers: Xavier-uniform weights, zero biases [MAE].
DENSE_INIT = nn.initializers.xavier_uniform()
LN_EPS = 1e-6  # [MAE]


def layer_norm(dtype: Any, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


def dense(features: int, dtype: Any, name: str | None = None, use_bias: bool = True
          ) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=DENSE_INIT,
                  name=name)


class DropPath(nn.Module):
  """Stochastic depth: zero a sample's residual branch with probability `rate`, scale the
  kept ones by `1 / (1 - rate)` [Point-MAE]."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    kept = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(kept, x / keep, jnp.zeros_like(x))


def attend(q: jax.Array, k: jax.Array, num_heads: int) -> jax.Array:
  """Scaled dot-product attention weights (softmax in float32).

  Args:
    q: `[B, Tq, C]`; k: `[B, Tk, C]`; C divisible by `num_heads`.
  Returns:
    `[B, H, Tq, Tk]` weights in q's dtype, each row summing to 1.
  """
  b, tq, c = q.shape
  d = c // num_heads
  qh = q.reshape(b, tq, num_heads, d)
  kh = k.reshape(b, k.shape[1], num_heads, d)
  logits = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) * (d ** -0.5)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)


def combine(weights: jax.Array, v: jax.Array, num_heads: int) -> jax.Array:
  """`[B, H, Tq, Tk]` weights x `[B, Tk, C]` values -> `[B, Tq, C]`."""
  b, tk, c = v.shape
  vh = v.reshape(b, tk, num_heads, c // num_heads)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, vh)
  return out.reshape(b, weights.shape[2], c)


class SelfAttention(nn.Module):
  """Multi-head self-attention: fused qkv projection, output projection."""
  num_heads: int
  qkv_bias: bool
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    c = x.shape[-1]
    qkv = dense(3 * c, self.dtype, "qkv", use_bias=self.qkv_bias)(x)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    w = attend(q, k, self.num_heads)
    w = nn.Dropout(self.dropout)(w, deterministic=deterministic)
    out = dense(c, self.dtype, "proj")(combine(w, v, self.num_heads))
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)


class CrossAttention(nn.Module):
  """Multi-head cross-attention: queries from `x`, keys/values from `context`."""
  num_heads: int
  qkv_bias: bool
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, deterministic: bool) -> jax.Array:
    c = x.shape[-1]
    q = dense(c, self.dtype, "q", use_bias=self.qkv_bias)(x)
    kv = dense(2 * c, self.dtype, "kv", use_bias=self.qkv_bias)(context)
    k, v = jnp.split(kv, 2, axis=-1)
    w = attend(q, k, self.num_heads)
    w = nn.Dropout(self.dropout)(w, deterministic=deterministic)
    out = dense(c, self.dtype, "proj")(combine(w, v, self.num_heads))
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)


class Mlp(nn.Module):
  """Dense(hidden) -> GELU (exact, as torch's nn.GELU) -> Dense(C) [Point-MAE, MAE]."""
  hidden: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    c = x.shape[-1]
    y = nn.gelu(dense(self.hidden, self.dtype, "fc1")(x), approximate=False)
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    y = dense(c, self.dtype, "fc2")(y)
    return nn.Dropout(self.dropout)(y, deterministic=deterministic)


class Block(nn.Module):
  """Pre-norm encoder block: `x + DP(SA(LN(x)))`, then `x + DP(MLP(LN(x)))`."""
  num_heads: int
  mlp_ratio: float
  qkv_bias: bool
  drop_path: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    del context  # an encoder block attends to its own tokens only
    dp = DropPath(self.drop_path)
    x = x + dp(SelfAttention(self.num_heads, self.qkv_bias, self.dropout, self.dtype,
                             name="attn")(layer_norm(self.dtype, "norm1")(x), deterministic),
               deterministic)
    hidden = int(x.shape[-1] * self.mlp_ratio)
    x = x + dp(Mlp(hidden, self.dropout, self.dtype, name="mlp")(
        layer_norm(self.dtype, "norm2")(x), deterministic), deterministic)
    return x


class FusionBlock(nn.Module):
  """Pre-norm fusion block [paper: MFB; layout ours]:

  `x + DP(SA(LN(x)))`; `x + DP(CA(LN(x), LN(context)))`; `x + DP(MLP(LN(x)))`.
  """
  num_heads: int
  mlp_ratio: float
  qkv_bias: bool
  drop_path: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    if context is None:
      raise ValueError("FusionBlock needs the other modality's tokens as `context`")
    dp = DropPath(self.drop_path)
    x = x + dp(SelfAttention(self.num_heads, self.qkv_bias, self.dropout, self.dtype,
                             name="self_attn")(layer_norm(self.dtype, "norm1")(x),
                                               deterministic), deterministic)
    x = x + dp(CrossAttention(self.num_heads, self.qkv_bias, self.dropout, self.dtype,
                              name="cross_attn")(layer_norm(self.dtype, "norm_q")(x),
                                                 layer_norm(self.dtype, "norm_kv")(context),
                                                 deterministic), deterministic)
    hidden = int(x.shape[-1] * self.mlp_ratio)
    x = x + dp(Mlp(hidden, self.dropout, self.dtype, name="mlp")(
        layer_norm(self.dtype, "norm2")(x), deterministic), deterministic)
    return x


class TransformerStack(nn.Module):
  """`depth` blocks with drop-path rising linearly from 0 to `drop_path` [Point-MAE],
  then a final LayerNorm.

  `pos`, when given, is added at the input of every block [Point-MAE]; for MAE-style
  "add once" positions add them to `x` before calling and pass `pos=None`.
  """
  depth: int
  num_heads: int
  mlp_ratio: float
  qkv_bias: bool
  drop_path: float = 0.0
  dropout: float = 0.0
  fusion: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, pos: jax.Array | None = None,
               context: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    """x: `[B, T, C]`; pos: `[B, T, C]` or None; context: `[B, S, C]` (fusion only).
    Returns `[B, T, C]` (final-LayerNorm'ed)."""
    rates = np.linspace(0.0, self.drop_path, self.depth)
    block_cls = FusionBlock if self.fusion else Block
    for i in range(self.depth):
      if pos is not None:
        x = x + pos
      x = block_cls(self.num_heads, self.mlp_ratio, self.qkv_bias, float(rates[i]),
                    self.dropout, self.dtype, name=f"block_{i}")(x, context, deterministic)
    return layer_norm(self.dtype, "norm")(x)

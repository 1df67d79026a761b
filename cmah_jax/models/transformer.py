"""Pre-norm transformer pieces shared by every stack: attention, MLP, drop-path, blocks.

`Block` is the encoder block (self-attention + MLP) [Point-MAE, MAE], or with
`cross_attention=True` the fusion block, whose extra sub-layer takes keys/values from another
token set (the other modality) [paper: MFB; layout ours]. `TransformerStack` chains blocks
with a linear drop-path schedule and a final LayerNorm. `StackSpec` holds the sizes all of
them share.

Randomness: drop-path and dropout draw from the `"dropout"` RNG stream, and only when
`deterministic=False`.
"""
from __future__ import annotations

import dataclasses
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
  # Scaled after the cast: with a half-precision dtype the scaling is not rounded twice.
  logits = jnp.einsum("bqhd,bkhd->bhqk", qh, kh).astype(jnp.float32) * (d ** -0.5)
  return jax.nn.softmax(logits, axis=-1).astype(q.dtype)


def combine(weights: jax.Array, v: jax.Array, num_heads: int) -> jax.Array:
  """`[B, H, Tq, Tk]` weights x `[B, Tk, C]` values -> `[B, Tq, C]`."""
  b, tk, c = v.shape
  vh = v.reshape(b, tk, num_heads, c // num_heads)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, vh)
  return out.reshape(b, weights.shape[2], c)


def _attention_output(q, k, v, num_heads: int, dropout: float, dtype, deterministic: bool):
  """Inside a module's compact call: attention weights of `q` over `k` (dropout on them),
  applied to `v`, then the output projection `proj` and dropout. q: `[B, Tq, C]`."""
  w = nn.Dropout(dropout)(attend(q, k, num_heads), deterministic=deterministic)
  out = dense(q.shape[-1], dtype, "proj")(combine(w, v, num_heads))
  return nn.Dropout(dropout)(out, deterministic=deterministic)


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
    return _attention_output(q, k, v, self.num_heads, self.dropout, self.dtype,
                             deterministic)


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
    return _attention_output(q, k, v, self.num_heads, self.dropout, self.dtype,
                             deterministic)


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


@dataclasses.dataclass(frozen=True)
class StackSpec:
  """Sizes shared by every block of a transformer stack (hashable: a module field)."""
  depth: int
  num_heads: int
  mlp_ratio: float
  qkv_bias: bool
  drop_path: float = 0.0   # max rate, linear over blocks [Point-MAE]
  dropout: float = 0.0
  dtype: Any = jnp.float32


class Block(nn.Module):
  """Pre-norm transformer block [Point-MAE, MAE]; with `cross_attention` a fusion block
  [paper: MFB; layout ours]:

    x + DP(SA(LN(x)));  [x + DP(CA(LN(x), LN(context)))];  x + DP(MLP(LN(x))).

  Sub-layer names follow the checkpoint layout: the self-attention is `attn` in an encoder
  block and `self_attn` in a fusion block.
  """
  spec: StackSpec
  drop_path: float = 0.0   # this block's rate
  cross_attention: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """x: `[B, T, C]`; context: `[B, S, C]` (fusion blocks only). Returns `[B, T, C]`."""
    s, dt = self.spec, self.spec.dtype
    if self.cross_attention and context is None:
      raise ValueError("a fusion Block needs a `context` [B, S, C] (the other modality's "
                       "tokens, or a token made from its code)")
    dp = DropPath(self.drop_path)
    attn = SelfAttention(s.num_heads, s.qkv_bias, s.dropout, dt,
                         name="self_attn" if self.cross_attention else "attn")
    x = x + dp(attn(layer_norm(dt, "norm1")(x), deterministic), deterministic)
    if self.cross_attention:
      cross = CrossAttention(s.num_heads, s.qkv_bias, s.dropout, dt, name="cross_attn")
      x = x + dp(cross(layer_norm(dt, "norm_q")(x), layer_norm(dt, "norm_kv")(context),
                       deterministic), deterministic)
    hidden = int(x.shape[-1] * s.mlp_ratio)
    x = x + dp(Mlp(hidden, s.dropout, dt, name="mlp")(layer_norm(dt, "norm2")(x),
                                                      deterministic), deterministic)
    return x


class TransformerStack(nn.Module):
  """`spec.depth` blocks with drop-path rising linearly from 0 to `spec.drop_path`
  [Point-MAE], then a final LayerNorm.

  `pos`, when given, is added at the input of every block [Point-MAE]; for MAE-style
  "add once" positions add them to `x` before calling and pass `pos=None`.
  """
  spec: StackSpec
  cross_attention: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, pos: jax.Array | None = None,
               context: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    """x: `[B, T, C]`; pos: `[B, T, C]` or None; context: `[B, S, C]` (fusion only).
    Returns `[B, T, C]` (final-LayerNorm'ed)."""
    rates = np.linspace(0.0, self.spec.drop_path, self.spec.depth)
    for i in range(self.spec.depth):
      if pos is not None:
        x = x + pos
      x = Block(self.spec, float(rates[i]), self.cross_attention,
                name=f"block_{i}")(x, context, deterministic)
    return layer_norm(self.spec.dtype, "norm")(x)

"""Penalties on how continuous codes use their bits: balance, decorrelation, quantisation
[the hashing literature; off in the paper's objective]."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def code_quality_terms(h: jax.Array) -> dict[str, jax.Array]:
  """Bit balance, decorrelation and quantisation penalties of continuous codes.

  Args:
    h: `[B, K]` float in (-1, 1) (tanh codes).
  Returns:
    {"balance": sum_k (mean_b h_bk)^2 / K, "decorrelation": ||H^T H / B - I||_F^2 / K^2,
     "quantization": mean (|h| - 1)^2}, float32 scalars; each is 0 for balanced,
    uncorrelated, binary codes.
  """
  h = h.astype(jnp.float32)
  b, k = h.shape
  balance = jnp.sum(jnp.mean(h, axis=0) ** 2) / k
  corr = h.T @ h / b
  decorrelation = jnp.sum((corr - jnp.eye(k, dtype=h.dtype)) ** 2) / k ** 2
  quantization = jnp.mean((jnp.abs(h) - 1.0) ** 2)
  return {"balance": balance, "decorrelation": decorrelation, "quantization": quantization}

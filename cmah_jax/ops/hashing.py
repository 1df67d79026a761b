"""Binary hash codes: straight-through sign, bit packing, Hamming distance and top-k."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@jax.custom_jvp
def sign_ste(x: jax.Array) -> jax.Array:
  """Straight-through sign: forward `+1` where `x >= 0` else `-1` (never 0).

  The backward pass is the gradient of the identity, so `grad(f(sign_ste(h)))` flows into
  `h` unchanged.

  Args:
    x: any-shape float.
  Returns:
    same shape and dtype, values in {-1, +1}.
  """
  return jnp.where(x >= 0, 1, -1).astype(x.dtype)


@sign_ste.defjvp
def _sign_ste_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return sign_ste(x), dx


_BIT_WEIGHTS = np.array([128, 64, 32, 16, 8, 4, 2, 1], np.uint8)
# popcount of every byte value, for table lookups.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def pack_codes(codes: jax.Array) -> jax.Array:
  """Pack {-1, +1} codes into bytes, most significant bit first.

  Bit `j` of a code goes to byte `j // 8` at bit position `7 - j % 8`, set for +1
  (`np.packbits` order). K need not be a multiple of 8; trailing bits are 0.

  Args:
    codes: `[..., K]` with values in {-1, +1} (any real dtype; `>= 0` counts as +1).
  Returns:
    `[..., ceil(K / 8)]` uint8.
  """
  k = codes.shape[-1]
  nbytes = -(-k // 8)
  bits = (codes >= 0).astype(jnp.uint8)
  bits = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, nbytes * 8 - k)])
  bits = bits.reshape(bits.shape[:-1] + (nbytes, 8))
  return jnp.sum(bits * jnp.asarray(_BIT_WEIGHTS), axis=-1, dtype=jnp.uint8)


def unpack_codes(packed: jax.Array, num_bits: int, dtype=jnp.float32) -> jax.Array:
  """Inverse of `pack_codes`.

  Args:
    packed: `[..., ceil(K / 8)]` uint8.
    num_bits: K.
  Returns:
    `[..., K]` of `dtype`, values in {-1, +1}.
  """
  bits = (packed[..., None] & jnp.asarray(_BIT_WEIGHTS)) > 0
  bits = bits.reshape(packed.shape[:-1] + (-1,))[..., :num_bits]
  return jnp.where(bits, 1, -1).astype(dtype)


def _to_words(packed: jax.Array) -> jax.Array:
  """`[..., nbytes]` uint8 -> `[..., ceil(nbytes / 4)]` uint32 (byte order is irrelevant
  to popcount of XOR, as long as both sides use the same one)."""
  nbytes = packed.shape[-1]
  nwords = -(-nbytes // 4)
  padded = jnp.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, nwords * 4 - nbytes)])
  b = padded.reshape(packed.shape[:-1] + (nwords, 4)).astype(jnp.uint32)
  return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)


def hamming_distance(query_packed: jax.Array, db_packed: jax.Array) -> jax.Array:
  """All-pairs Hamming distance between packed codes.

  Args:
    query_packed: `[q, nbytes]` uint8.
    db_packed: `[n, nbytes]` uint8.
  Returns:
    `[q, n]` int32.
  """
  if query_packed.shape[-1] != db_packed.shape[-1]:
    raise ValueError(
        f"hamming_distance: byte widths differ: queries {tuple(query_packed.shape)} vs "
        f"database {tuple(db_packed.shape)}")
  qw, dw = _to_words(query_packed), _to_words(db_packed)
  dist = jnp.zeros((qw.shape[0], dw.shape[0]), jnp.int32)
  for w in range(qw.shape[-1]):  # static, tiny loop: one [q, n] word at a time
    x = jnp.bitwise_xor(qw[:, w, None], dw[None, :, w])
    dist = dist + jax.lax.population_count(x).astype(jnp.int32)
  return dist


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def hamming_topk(query_packed: jax.Array, db_packed: jax.Array, k: int,
                 chunk_size: int = 65536):
  """The k nearest database codes of each query by Hamming distance.

  Scans the database in chunks of `chunk_size` codes, keeping a running top-k, so memory
  is `O(q * (chunk_size + k))` and never `[q, n, nbytes]`. Ties go to the lower database
  index.

  Args:
    query_packed: `[q, nbytes]` uint8.
    db_packed: `[n, nbytes]` uint8.
    k: static, `1 <= k <= n`.
    chunk_size: database codes per scan step (static).
  Returns:
    distances: `[q, k]` int32, ascending.
    indices: `[q, k]` int32 database indices.
  """
  n = db_packed.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"hamming_topk: k={k} must be in [1, n={n}]")
  q = query_packed.shape[0]
  chunk = min(chunk_size, n)
  num_chunks = -(-n // chunk)
  pad = num_chunks * chunk - n
  db = jnp.pad(db_packed, ((0, pad), (0, 0)))
  db_chunks = db.reshape(num_chunks, chunk, db.shape[-1])
  # Distances are small integers (<= 8 * nbytes); encode (distance, index) in one float32
  # key whose order is lexicographic, so one float top_k (fast on CPU, unlike int32) does
  # both the ranking and the tie-break: key = -(distance * 2^b + local_index).
  # Exactness: distance * chunk + index < 2^24 keeps float32 exact.
  max_dist = 8 * query_packed.shape[-1]
  if (max_dist + 1) * (chunk + k) >= 2 ** 24:
    raise ValueError(
        f"hamming_topk: chunk_size={chunk} too large for {max_dist}-bit codes "
        f"(need (bits + 1) * (chunk_size + k) < 2^24)")

  def scan_chunk(carry, xs):
    best_d, best_i = carry  # [q, k]
    start, chunk_codes = xs
    d = hamming_distance(query_packed, chunk_codes)  # [q, chunk]
    idx = start + jnp.arange(chunk, dtype=jnp.int32)
    d = jnp.where(idx[None, :] < n, d, max_dist + 1)  # padding ranks last
    cand_d = jnp.concatenate([best_d, d], axis=1)
    cand_i = jnp.concatenate([best_i, jnp.broadcast_to(idx, (q, chunk))], axis=1)
    # Running best come first and have lower database indices than this chunk, so the
    # candidate position orders ties by database index.
    pos = jnp.arange(k + chunk, dtype=jnp.float32)
    key = -(cand_d.astype(jnp.float32) * float(k + chunk) + pos[None, :])
    _, sel = jax.lax.top_k(key, k)
    return (jnp.take_along_axis(cand_d, sel, axis=1),
            jnp.take_along_axis(cand_i, sel, axis=1)), None

  init = (jnp.full((q, k), max_dist + 2, jnp.int32), jnp.full((q, k), n, jnp.int32))
  starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk
  (dist, idx), _ = jax.lax.scan(scan_chunk, init, (starts, db_chunks))
  return dist, idx

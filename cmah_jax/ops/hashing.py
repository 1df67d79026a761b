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
  if codes.dtype == jnp.bool_ or jnp.issubdtype(codes.dtype, jnp.unsignedinteger):
    raise ValueError(f"pack_codes: codes are {{-1, +1}}; {codes.dtype} cannot hold -1, so "
                     "every bit would be set (for {0, 1} bits pass 2 * bits - 1)")
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
  """`[..., nbytes]` uint8 -> `[..., ceil(nbytes / 4)]` uint32, zero-padded.

  A bitcast (platform byte order): popcount of an XOR does not depend on the byte order as
  long as both sides use the same one, and inside a fused loop it is a plain load.
  """
  nbytes = packed.shape[-1]
  nwords = -(-nbytes // 4)
  padded = jnp.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, nwords * 4 - nbytes)])
  return jax.lax.bitcast_convert_type(
      padded.reshape(packed.shape[:-1] + (nwords, 4)), jnp.uint32)


def _check_packed(fn: str, query_packed, db_packed) -> None:
  """Both `[rows, nbytes]` uint8 (`pack_codes`'s), of one byte width; else a ValueError
  naming `fn` and the shapes and dtypes given (dtype and shape are static under jit)."""
  for name, x in (("queries", query_packed), ("database", db_packed)):
    if x.ndim != 2 or x.dtype != jnp.uint8:
      raise ValueError(
          f"{fn}: {name} must be packed codes [rows, nbytes] uint8 (pack_codes of {{-1, +1}} "
          f"codes), got {tuple(x.shape)} {x.dtype}")
  if query_packed.shape[-1] != db_packed.shape[-1]:
    raise ValueError(
        f"{fn}: byte widths differ: queries {tuple(query_packed.shape)} vs "
        f"database {tuple(db_packed.shape)}")


def hamming_distance(query_packed: jax.Array, db_packed: jax.Array) -> jax.Array:
  """All-pairs Hamming distance between packed codes.

  Args:
    query_packed: `[q, nbytes]` uint8.
    db_packed: `[n, nbytes]` uint8.
  Returns:
    `[q, n]` int32.
  """
  _check_packed("hamming_distance", query_packed, db_packed)
  qw, dw = _to_words(query_packed), _to_words(db_packed)
  dist = jnp.zeros((qw.shape[0], dw.shape[0]), jnp.int32)
  for w in range(qw.shape[-1]):  # static, tiny loop: one [q, n] word at a time
    x = jnp.bitwise_xor(qw[:, w, None], dw[None, :, w])
    dist = dist + jax.lax.population_count(x).astype(jnp.int32)
  return dist


# Block sizes of the hierarchical top-k below. 32 is also the longest reduction XLA:CPU
# keeps fused with its producer (longer ones are split by its tree-reduction rewriter,
# which would materialise the [n, q] distances).
_BLOCK = 32   # database codes per block
_GROUP = 32   # blocks per group


def _sum_popcount(a_words, b_words) -> jax.Array:
  """`sum_w popcount(a_w ^ b_w)` over two equal-length lists of broadcastable uint32
  arrays -> int32 of the broadcast shape."""
  acc = None
  for a, b in zip(a_words, b_words):
    c = jax.lax.population_count(jnp.bitwise_xor(a, b))
    acc = c if acc is None else acc + c
  return acc.astype(jnp.int32)


def _smallest(values: jax.Array, k: int) -> jax.Array:
  """Positions of the k smallest entries of each row of `values` (`[t, m]`, small
  non-negative ints), ties to the lower position: `[t, k]` int32, in `(value, position)`
  order.

  `lax.top_k` is stable (equal values: lower index first) and fast on float32 on CPU (not
  on int32); the values are small integers, so float32 is exact.
  """
  _, ids = jax.lax.top_k(-values.astype(jnp.float32), k)
  return ids


def _topk_tile(q_words: jax.Array, db_planar: jax.Array, n: int, k: int, max_dist: int):
  """Exact top-k of one tile of queries (the method is described in `hamming_topk`).

  Args:
    q_words: `[W, t]` uint32 query words, one row per word.
    db_planar: `[W, nb, 32]` uint32 database words, code `i` at `[:, i // 32, i % 32]`,
      zero past `n`.
    n: number of real database codes (static).
    k: static, `1 <= k <= n`.
    max_dist: largest possible distance, `8 * nbytes` (static).
  Returns:
    distances `[t, k]` int32 and indices `[t, k]` int32, in `(distance, index)` order.
  """
  num_words, nb, bsz = db_planar.shape
  t = q_words.shape[1]
  big = max_dist + 1  # ranks after every real distance
  if n <= 2 * k * bsz:  # small database: one flat top-k over all `[t, n]` distances
    flat = db_planar.reshape(num_words, nb * bsz)[:, :n]
    d = _sum_popcount([q_words[w][:, None] for w in range(num_words)],
                      [flat[w][None, :] for w in range(num_words)])
    sel = _smallest(d, k)
    return jnp.take_along_axis(d, sel, axis=1), sel

  # Level 1, the only scan of all pairs: the minimum distance of each block to each
  # query, `[nb, t]`, queries minor so the fused loop vectorises over queries; int16
  # halves the bytes written and re-read (distances are <= max_dist).
  small = jnp.int16 if big < 2 ** 15 else jnp.int32
  mins = _sum_popcount([q_words[w][None, None, :] for w in range(num_words)],
                       [db_planar[w][:, :, None] for w in range(num_words)])
  mins = mins.astype(small).min(axis=1)
  if n % bsz:  # the last block is part padding: its minimum must be over real codes only
    last = _sum_popcount([q_words[w][None, :] for w in range(num_words)],
                         [db_planar[w, nb - 1, :n % bsz][:, None] for w in range(num_words)])
    mins = mins.at[nb - 1].set(last.min(axis=0).astype(small))

  # Level 2: the k best blocks. Here nb > 2k, so there are at least k blocks.
  if nb > 2 * k * _GROUP:
    # ... found inside the k best groups of _GROUP blocks (by (group minimum, group
    # index)); here there are more than 2k groups.
    n_full = nb // _GROUP
    gmins = mins[:n_full * _GROUP].reshape(n_full, _GROUP, t).min(axis=1)  # [ng, t]
    if nb % _GROUP:
      gmins = jnp.concatenate([gmins, mins[n_full * _GROUP:].min(axis=0)[None]], axis=0)
    groups = jnp.sort(_smallest(gmins.T, k), axis=1)  # [t, k], ascending
    rows = groups[:, :, None] * _GROUP + jnp.arange(_GROUP, dtype=jnp.int32)
    rows = rows.reshape(t, k * _GROUP)  # candidate block ids, ascending
    cand = mins[jnp.minimum(rows, nb - 1), jnp.arange(t)[:, None]]  # [t, k * G]
    cand = jnp.where(rows < nb, cand, big)
    blocks = jnp.take_along_axis(rows, _smallest(cand, k), axis=1)
  else:
    blocks = _smallest(mins.T, k)
  blocks = jnp.sort(blocks, axis=1)  # [t, k] ascending: candidate order = index order

  # Level 3: exact distances to the 32 k codes of the chosen blocks, and the final top-k.
  codes = [db_planar[w][blocks] for w in range(num_words)]  # [t, k, 32] each
  d = _sum_popcount([q_words[w][:, None, None] for w in range(num_words)], codes)
  d = d.reshape(t, k * bsz)
  index = (blocks[:, :, None] * bsz + jnp.arange(bsz, dtype=jnp.int32)).reshape(t, k * bsz)
  d = jnp.where(index < n, d, big)
  sel = _smallest(d, k)
  return jnp.take_along_axis(d, sel, axis=1), jnp.take_along_axis(index, sel, axis=1)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def hamming_topk(query_packed: jax.Array, db_packed: jax.Array, k: int,
                 chunk_size: int = 65536):
  """The k nearest database codes of each query by Hamming distance (exact).

  Ties go to the lower database index: the result equals the first k columns of a stable
  argsort of the `[q, n]` distances, which is never built (nor `[q, n, nbytes]`).

  Method: cut the database into blocks of 32 consecutive codes and compute, in one fused
  XOR/popcount/min pass, the minimum distance of every block to every query (`[n / 32, q]`
  int16; the only work over all q * n pairs). The k best codes (by `(distance, index)`)
  lie in the k best blocks (by `(block minimum, block index)`), since each block ranked
  before a block holds a code ranked before all of that block's codes; by the same
  argument the k best blocks lie in the k best groups of 32 blocks. So small stable
  top-k's over `n / 1024`, `32 k` and `32 k` values per query replace one over `n`, and
  only the `32 k` codes of the chosen blocks get exact distances. Small databases
  (`n <= 64 k`) take one top-k over all distances.

  Args:
    query_packed: `[q, nbytes]` uint8.
    db_packed: `[n, nbytes]` uint8.
    k: static, `1 <= k <= n`.
    chunk_size: static memory knob; results never depend on it. Queries go in tiles of
      `t` with `t * m <= 512 * chunk_size`, `m = n / 32` (`n` for small databases): the
      per-tile scratch is about `2 KiB * chunk_size` (128 MiB at the default) plus
      `~20 * 32 k` bytes per query for the last step.
  Returns:
    distances: `[q, k]` int32, ascending.
    indices: `[q, k]` int32 database indices.
  """
  _check_packed("hamming_topk", query_packed, db_packed)
  n = db_packed.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"hamming_topk: k={k} must be in [1, n={n}]")
  if chunk_size < 1:
    raise ValueError(f"hamming_topk: chunk_size={chunk_size} must be >= 1")
  q = query_packed.shape[0]
  max_dist = 8 * query_packed.shape[-1]
  q_words = _to_words(query_packed).T  # [W, q]
  num_words = q_words.shape[0]
  nb = -(-n // _BLOCK)
  db_words = jnp.pad(_to_words(db_packed), ((0, nb * _BLOCK - n), (0, 0)))
  db_planar = db_words.T.reshape(num_words, nb, _BLOCK)  # [W, nb, 32]

  per_query = n if n <= 2 * k * _BLOCK else nb
  tile = max(1, (512 * chunk_size) // per_query)
  if tile >= q:
    return _topk_tile(q_words, db_planar, n, k, max_dist)
  num_tiles = -(-q // tile)
  tile = -(-q // num_tiles)  # equal tiles, least padding
  q_words = jnp.pad(q_words, ((0, 0), (0, num_tiles * tile - q)))
  tiles = q_words.reshape(num_words, num_tiles, tile).transpose(1, 0, 2)  # [T, W, t]
  dist, idx = jax.lax.map(lambda qt: _topk_tile(qt, db_planar, n, k, max_dist), tiles)
  return dist.reshape(num_tiles * tile, k)[:q], idx.reshape(num_tiles * tile, k)[:q]

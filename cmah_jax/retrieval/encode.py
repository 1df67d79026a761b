"""Model -> codes: batched, sharded encoding with one tower, faiss-order bit packing,
model fingerprints, and progress lines with an ETA.

A *bound model* is anything with the fields of `cmah_jax.inference.TrainedModel`:
`model` (a `CMAH` module), `params`, `bits`, `num_points`, `image_size` and a
`fingerprint` dict `{config_hash, bits, step, codes}` (and optionally a learned
`quantizer`, whose codes `sign((h - mean) R)` it then gives). `load_trained(workdir)` gives one for a
training run; `bind(model, params)` gives one for a model built in code (tests, notebooks).

Bit order ("faiss order"): bit j of a K-bit code is bit `j % 8`, least significant first,
of byte `j // 8`; a set bit means code +1 (`>= 0`). This is what faiss's own
`fvecs2bitvecs` / `IndexBinary*` use, so our bytes fed to faiss are faiss's packing of the
same codes (`np.packbits(codes >= 0, bitorder="little")`). `cmah_jax.ops.hashing.pack_codes`
packs most significant bit first; Hamming distances agree between the two orders, the bytes
do not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from typing import Iterable, Iterator

import jax
import numpy as np

from cmah_jax import quantizer as quantizer_lib
from cmah_jax import sharding as shd
from cmah_jax.config import ADDED_LATER, is_neutral
from cmah_jax.inference import TrainedModel

# modality -> (CMAH argument, its code output, its continuous-code output)
TOWERS = {"points": ("points", "point/code", "point/h"),
          "images": ("images", "image/code", "image/h")}


# ----------------------------------------------------------------------------------------
# Codes <-> bytes.
# ----------------------------------------------------------------------------------------


def pack_faiss(codes: np.ndarray) -> np.ndarray:
  """{-1, +1} codes `[..., K]` -> uint8 `[..., ceil(K / 8)]` in faiss order (see module
  doc); trailing bits of the last byte are 0."""
  return np.packbits(np.asarray(codes) >= 0, axis=-1, bitorder="little")


def unpack_faiss(packed: np.ndarray, bits: int) -> np.ndarray:
  """Inverse of `pack_faiss`: uint8 `[..., nbytes]` -> float32 `[..., bits]` in {-1, +1}."""
  b = np.unpackbits(np.asarray(packed, np.uint8), axis=-1, count=bits, bitorder="little")
  return np.where(b > 0, 1.0, -1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Bound models and fingerprints.
# ----------------------------------------------------------------------------------------


BoundModel = TrainedModel  # a model and its parameters, built in code or loaded from a run


def params_digest(params) -> str:
  """SHA-256 (hex, 16 chars) of every parameter leaf's path, dtype, shape and bytes."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    a = np.asarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def model_identity(cfg) -> dict:
  """`dataclasses.asdict(cfg)` of a `ModelConfig` without the model fields added after
  fingerprints were first stored (`config.ADDED_LATER`) while they hold their neutral
  value: a field added to the library leaves the identity of a model that does not use it
  unchanged, as `Config.fingerprint` does for training runs."""
  d = dataclasses.asdict(cfg)
  for path in ADDED_LATER:
    section, _, field = path.partition(".")
    if section == "model" and field in d and is_neutral(path, d[field]):
      del d[field]
  return d


def bind(model, params, step: int = 0, config_hash: str | None = None) -> BoundModel:
  """A `BoundModel` for a model built in code.

  Without `config_hash`, the hash covers the model config (`model_identity`) and the
  parameter values (`"model:" + sha256`), so two different initialisations never share a
  fingerprint, and a model field added later and registered in `config.ADDED_LATER` (as
  every new field must be) changes none while at its neutral value. (Hashes made before
  `model_identity`, 2026-12-08, included every field and differ from today's.)
  """
  cfg = model.config
  if config_hash is None:
    blob = json.dumps(model_identity(cfg), sort_keys=True, default=str)
    config_hash = "model:" + hashlib.sha256(
        (blob + params_digest(params)).encode()).hexdigest()[:16]
  return BoundModel(model=model, params=params, step=int(step), bits=int(cfg.bits),
                    num_points=int(cfg.num_points), image_size=int(cfg.image_size),
                    config_hash=str(config_hash))


# ----------------------------------------------------------------------------------------
# Progress.
# ----------------------------------------------------------------------------------------


def _hms(seconds: float) -> str:
  s = int(round(seconds))
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
  """`what: done/total (pct), rate unit/s, ETA h:mm:ss` lines on `stream` every
  `every` updates and at `close()`; silent when `stream` is None."""

  def __init__(self, what: str, total: int | None, unit: str = "items", every: int = 10,
               stream=sys.stderr):
    self.what, self.total, self.unit, self.every, self.stream = what, total, unit, every, stream
    self.done, self.updates, self.t0 = 0, 0, time.perf_counter()

  def line(self) -> str:
    dt = max(time.perf_counter() - self.t0, 1e-9)
    rate = self.done / dt
    if self.total:
      eta = (self.total - self.done) / rate if rate > 0 else float("inf")
      eta_s = _hms(eta) if np.isfinite(eta) else "?"
      return (f"{self.what}: {self.done:,}/{self.total:,} {self.unit} "
              f"({100 * self.done / self.total:.1f}%), {rate:,.1f} {self.unit}/s, ETA {eta_s}")
    return f"{self.what}: {self.done:,} {self.unit}, {rate:,.1f} {self.unit}/s"

  def update(self, n: int):
    self.done += n
    self.updates += 1
    if self.stream is not None and self.every and self.updates % self.every == 0:
      print(self.line(), file=self.stream, flush=True)

  def close(self):
    if self.stream is not None:
      dt = time.perf_counter() - self.t0
      print(f"{self.line()} -- done in {_hms(dt)}", file=self.stream, flush=True)


# ----------------------------------------------------------------------------------------
# The encoder.
# ----------------------------------------------------------------------------------------


class Encoder:
  """Encodes points or images with their own tower, in fixed-size batches sharded over a
  1-D mesh of every device (params replicated); the last batch is padded with copies of
  its last row and the padding dropped, so there is one compilation per modality.

  Single-process (each call puts host arrays on this process's mesh).
  """

  def __init__(self, bound, batch_size: int = 256, mesh=None):
    self.bound = bound
    self.mesh = shd.make_mesh() if mesh is None else mesh
    ndev = self.mesh.devices.size
    self.batch_size = max(ndev, -(-int(batch_size) // ndev) * ndev)  # multiple of devices
    self._in = shd.data_sharding(self.mesh)
    self._params = jax.device_put(bound.params, shd.replicated(self.mesh))
    self._fns = {}

  def _fn(self, modality: str):
    if modality not in TOWERS:
      raise ValueError(f"modality must be one of {sorted(TOWERS)}, got {modality!r}")
    if modality not in self._fns:
      arg, code_key, h_key = TOWERS[modality]
      model = self.bound.model
      q = getattr(self.bound, "quantizer", None)  # the run's learned quantiser, if any

      def fn(params, x):
        out = model.apply({"params": params}, **{arg: x}, train=False)
        return out[code_key] if q is None else quantizer_lib.quantize(out[h_key], q)

      self._fns[modality] = jax.jit(fn, in_shardings=(shd.replicated(self.mesh), self._in),
                                    out_shardings=self._in)
    return self._fns[modality]

  def expected_shape(self, modality: str) -> tuple[int, ...]:
    if modality == "points":
      return (self.bound.num_points, 3)
    s = self.bound.image_size
    return (s, s, 3)

  def _dispatch(self, modality: str, x: np.ndarray):
    """Check, pad and start encoding one host batch: (rows, device codes or None)."""
    x = np.asarray(x)
    b = x.shape[0]
    if tuple(x.shape[1:]) != self.expected_shape(modality):
      raise ValueError(f"{modality} batch has shape {x.shape[1:]}, the model expects "
                       f"{self.expected_shape(modality)}")
    if b > self.batch_size:
      raise ValueError(f"batch of {b} exceeds batch_size={self.batch_size}")
    if b == 0:
      return 0, None
    if b < self.batch_size:
      x = np.concatenate([x, np.repeat(x[-1:], self.batch_size - b, axis=0)])
    return b, self._fn(modality)(self._params, jax.device_put(x, self._in))

  def _collect(self, pending) -> np.ndarray:
    b, codes = pending
    if codes is None:
      return np.zeros((0, self.bound.bits), np.float32)
    return np.asarray(jax.device_get(codes))[:b]

  def encode_batch(self, modality: str, x: np.ndarray) -> np.ndarray:
    """One host batch `[b <= batch_size, ...]` (points float32 [b, N, 3], images uint8
    [b, S, S, 3]) -> float32 codes `[b, K]` in {-1, +1}."""
    return self._collect(self._dispatch(modality, x))

  def encode_batches(self, modality: str, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Codes of each batch, one batch ahead: the device encodes batch i + 1 while the host
    copies out the codes of batch i (and the caller reads files)."""
    pending = None
    for x in batches:
      nxt = self._dispatch(modality, x)
      if pending is not None:
        yield self._collect(pending)
      pending = nxt
    if pending is not None:
      yield self._collect(pending)

  def encode(self, modality: str, x: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """All of `x` `[n, ...]` -> float32 codes `[n, K]`."""
    bs = self.batch_size
    chunks = (x[i:i + bs] for i in range(0, len(x), bs))
    out = []
    for codes in self.encode_batches(modality, chunks):
      out.append(codes)
      if progress is not None:
        progress.update(len(codes))
    return np.concatenate(out) if out else np.zeros((0, self.bound.bits), np.float32)

"""The on-disk hash index: packed codes memory-mapped, ids and source paths, the model's
fingerprint, and atomic commits.

Layout of an index directory (format version 1)::

  INDEX/
    manifest.json          the commit point (below); an index is what it lists
    seg-<12 hex>/          one immutable segment per build / add
      codes.u8             raw uint8 [n, code_bytes], C order, faiss bit order
      entries.jsonl        one line per code: {"id": str, "path": str}
      entries.off          uint64 little-endian [n + 1]: byte offset of each line
      idhash.u64           uint64 little-endian [n]: first 8 bytes of sha256(id)
      skipped.jsonl        {"id", "path", "reason"} of every file that was not indexed
    .lock                  flock()ed by the one writer (build / add)

`manifest.json`::

  {"format": "cmah_jax.hash_index", "version": 1,
   "modality": "points" | "images",
   "bits": K, "code_bytes": ceil(K / 8), "bit_order": "faiss",
   "fingerprint": {"config_hash": str, "bits": K, "step": int, "codes": str},
   "model": {"workdir": str | null, "num_points": int, "image_size": int},
   "count": total codes,
   "segments": [{"name", "count", "skipped", "ignored", "source", "created"}, ...],
   "created": ISO time, "updated": ISO time}

Row `r` of the index is row `r - start` of the segment holding it, segments in manifest
order. Rows are never reordered: a build writes its files in id order, an `add` appends a
segment.

Atomicity: a writer writes a new segment directory, fsyncs its files and the directory,
then writes `manifest.json.tmp-*`, fsyncs it and `os.replace`s it over `manifest.json`
(atomic on POSIX), then fsyncs INDEX/. Until that rename the old manifest (or none) is
the index; a crash leaves at most an unlisted segment or temp file, which the next writer
deletes. An exception in a writer removes what it wrote. Readers see one manifest and
immutable segments.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import mmap
import os
import shutil
import uuid

import numpy as np

FORMAT = "cmah_jax.hash_index"
VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
SEG_PREFIX = "seg-"
TMP_MARK = ".tmp-"


class BadIndex(Exception):
  """Not an index, a broken index, or an index of another model."""


class FingerprintMismatch(BadIndex):
  """The index was made by another model than the one given."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def fsync_dir(path: str):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def id_hash(ids) -> np.ndarray:
  """uint64 [n]: the first 8 bytes (little-endian) of sha256 of each id (utf-8)."""
  return np.asarray([int.from_bytes(hashlib.sha256(i.encode("utf-8")).digest()[:8], "little")
                     for i in ids], np.uint64)


def atomic_write_bytes(path: str, data: bytes):
  """Write `data` to `path` via a temp file in the same directory, fsync, `os.replace`."""
  d = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(d, f".{os.path.basename(path)}{TMP_MARK}{uuid.uuid4().hex[:8]}")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  fsync_dir(d)


FINGERPRINT_KEYS = ("config_hash", "bits", "step", "codes")


def normalize_fingerprint(fp: dict) -> dict:
  """`{config_hash, bits, step, codes}` of a fingerprint (missing keys None); one written
  before fingerprints named their codes holds sign(h) codes."""
  return {k: fp.get(k, "sign" if k == "codes" else None) for k in FINGERPRINT_KEYS}


def fingerprint_of(bound) -> dict:
  """`{config_hash: str, bits: int, step: int, codes: str}` of a bound model,
  JSON-normalised ("codes": "sign", or "itq:<digest>" with a learned quantiser)."""
  fp = normalize_fingerprint(bound.fingerprint)
  return dict(config_hash=str(fp["config_hash"]), bits=int(fp["bits"]), step=int(fp["step"]),
              codes=str(fp["codes"]))


def format_fingerprint(fp: dict) -> str:
  """`config_hash=..., bits=..., step=..., codes=...` of a normalised fingerprint."""
  return ", ".join(f"{k}={fp[k]}" for k in FINGERPRINT_KEYS)


def check_fingerprint(index_fp: dict, model_fp: dict, index_path: str, model_name: str):
  """Raise `FingerprintMismatch` naming both fingerprints unless they are equal."""
  a, b = normalize_fingerprint(index_fp), normalize_fingerprint(model_fp)
  if a != b:
    diff = ", ".join(k for k in FINGERPRINT_KEYS if a[k] != b[k])
    raise FingerprintMismatch(
        f"index {index_path} was built by model [{format_fingerprint(a)}] but {model_name} is "
        f"[{format_fingerprint(b)}] (differs in {diff}); rebuild the index with this model "
        "or use the model that built it.")


# ----------------------------------------------------------------------------------------
# Reading.
# ----------------------------------------------------------------------------------------


class Segment:
  """One immutable segment: codes memory-mapped, entries read on demand."""

  def __init__(self, root: str, record: dict, code_bytes: int, start: int):
    self.root, self.record, self.start = root, record, start
    self.name = record["name"]
    self.count = int(record["count"])
    self.dir = os.path.join(root, self.name)
    self.code_bytes = code_bytes
    self._codes = self._off = None

  def _path(self, name):
    return os.path.join(self.dir, name)

  @property
  def codes(self) -> np.ndarray:
    """uint8 [count, code_bytes], read-only memory map (never loaded whole)."""
    if self._codes is None:
      path = self._path("codes.u8")
      size = os.path.getsize(path)
      if size != self.count * self.code_bytes:
        raise BadIndex(f"{path}: {size} bytes, the manifest says {self.count} codes of "
                          f"{self.code_bytes} bytes")
      if self.count == 0:
        self._codes = np.zeros((0, self.code_bytes), np.uint8)
      else:
        self._codes = np.memmap(path, np.uint8, "r", shape=(self.count, self.code_bytes))
    return self._codes

  @property
  def offsets(self) -> np.ndarray:
    if self._off is None:
      self._off = np.memmap(self._path("entries.off"), "<u8", "r", shape=(self.count + 1,))
    return self._off

  def entries(self, rows) -> list[dict]:
    """`{"id", "path"}` of local rows `rows` (any order)."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    if len(rows) == 0:
      return []
    off = self.offsets
    starts, ends = off[rows].astype(np.int64), off[rows + 1].astype(np.int64)
    with open(self._path("entries.jsonl"), "rb") as f, \
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as text:
      return [json.loads(text[a:b]) for a, b in zip(starts.tolist(), ends.tolist())]

  def id_hashes(self) -> np.ndarray:
    if self.count == 0:
      return np.zeros((0,), np.uint64)
    return np.memmap(self._path("idhash.u64"), "<u8", "r", shape=(self.count,))

  def skipped(self) -> list[dict]:
    path = self._path("skipped.jsonl")
    if not os.path.exists(path):
      return []
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]


class HashIndex:
  """A committed index (read-only view of one manifest)."""

  def __init__(self, path: str, manifest: dict):
    self.path = path
    self.manifest = manifest
    self.code_bytes = int(manifest["code_bytes"])
    self.segments, start = [], 0
    for rec in manifest["segments"]:
      self.segments.append(Segment(path, rec, self.code_bytes, start))
      start += int(rec["count"])
    if start != int(manifest["count"]):
      raise BadIndex(f"{path}: segments hold {start} codes, the manifest says "
                        f"{manifest['count']}")
    self._starts = np.asarray([s.start for s in self.segments] + [start], np.int64)

  @classmethod
  def open(cls, path: str) -> "HashIndex":
    path = os.path.abspath(os.path.expanduser(path))
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
      raise BadIndex(f"{path} does not exist or is not a directory (not an index)")
    if not os.path.exists(mpath):
      leftovers = [n for n in os.listdir(path) if n.startswith(SEG_PREFIX)]
      hint = (" (it holds uncommitted segments: an interrupted build; build again or delete "
              "it)") if leftovers else ""
      raise BadIndex(f"{path} is not an index: no {MANIFEST}{hint}")
    with open(mpath, encoding="utf-8") as f:
      manifest = json.load(f)
    if manifest.get("format") != FORMAT:
      raise BadIndex(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if int(manifest.get("version", -1)) > VERSION:
      raise BadIndex(f"{mpath}: version {manifest.get('version')} is newer than this "
                        f"code's {VERSION}; upgrade cmah_jax")
    return cls(path, manifest)

  # -- metadata
  @property
  def count(self) -> int:
    return int(self.manifest["count"])

  @property
  def bits(self) -> int:
    return int(self.manifest["bits"])

  @property
  def modality(self) -> str:
    return self.manifest["modality"]

  @property
  def fingerprint(self) -> dict:
    return normalize_fingerprint(self.manifest["fingerprint"])

  @property
  def workdir(self) -> str | None:
    return self.manifest.get("model", {}).get("workdir")

  def check_model(self, bound, model_name: str = "the model given"):
    """Raise `FingerprintMismatch` unless `bound` (a bound model) made this index."""
    check_fingerprint(self.fingerprint, fingerprint_of(bound), self.path, model_name)

  # -- codes
  def chunks(self, max_rows: int):
    """Yield `(start_row, codes uint8 [<= max_rows, code_bytes])` over the whole index in
    row order; each chunk is a slice of one segment's memory map."""
    for seg in self.segments:
      for a in range(0, seg.count, max_rows):
        yield seg.start + a, seg.codes[a:a + max_rows]

  def codes(self, rows=None) -> np.ndarray:
    """uint8 [n, code_bytes] of `rows` (default: all, copied into memory)."""
    if rows is None:
      parts = [np.asarray(s.codes) for s in self.segments]
      return np.concatenate(parts) if parts else np.zeros((0, self.code_bytes), np.uint8)
    rows = self._checked_rows(rows)
    out = np.zeros((len(rows), self.code_bytes), np.uint8)
    seg = np.searchsorted(self._starts, rows, side="right") - 1
    for s in np.unique(seg):
      m = seg == s
      out[m] = self.segments[s].codes[rows[m] - self.segments[s].start]
    return out

  def _checked_rows(self, rows) -> np.ndarray:
    """`rows` as int64 `[n]`; IndexError naming (up to 5 of) those outside the index."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    bad = rows[(rows < 0) | (rows >= self.count)]
    if len(bad):
      raise IndexError(f"rows outside [0, {self.count}): {bad[:5].tolist()}")
    return rows

  def locate(self, row: int) -> tuple["Segment", int]:
    if not 0 <= row < self.count:
      raise IndexError(f"row {row} outside [0, {self.count})")
    s = int(np.searchsorted(self._starts, row, side="right") - 1)
    return self.segments[s], row - self.segments[s].start

  def entries(self, rows) -> list[dict]:
    """`{"id", "path"}` of global rows (any order)."""
    rows = self._checked_rows(rows)
    seg = np.searchsorted(self._starts, rows, side="right") - 1
    out = [None] * len(rows)
    for s in np.unique(seg):
      pos = np.flatnonzero(seg == s)
      for p, e in zip(pos, self.segments[s].entries(rows[pos] - self.segments[s].start)):
        out[p] = e
    return out

  def skipped(self) -> list[dict]:
    return [s for seg in self.segments for s in seg.skipped()]

  def existing_ids(self, ids) -> list[str]:
    """Those of `ids` already in the index (a screen on stored id hashes, then an exact
    comparison of the few hits), sorted."""
    wanted = set(ids)
    if not wanted:
      return []
    hashes = id_hash(sorted(wanted))
    found = set()
    for seg in self.segments:
      hit_rows = np.flatnonzero(np.isin(np.asarray(seg.id_hashes()), hashes))
      found.update(e["id"] for e in seg.entries(hit_rows) if e["id"] in wanted)
    return sorted(found)

  def nbytes_on_disk(self) -> int:
    total = 0
    for dirpath, _, files in os.walk(self.path):
      total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


# ----------------------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------------------


class SegmentWriter:
  """Streams one new segment to disk; `finish()` fsyncs it, `abort()` deletes it."""

  def __init__(self, root: str, code_bytes: int):
    self.name = f"{SEG_PREFIX}{uuid.uuid4().hex[:12]}"
    self.dir = os.path.join(root, self.name)
    os.makedirs(self.dir)
    self.code_bytes = code_bytes
    self.count = 0
    self.num_skipped = 0
    self._pos = 0
    names = ("codes.u8", "entries.jsonl", "entries.off", "idhash.u64", "skipped.jsonl")
    self._files = {n: open(os.path.join(self.dir, n), "wb") for n in names}
    self._files["entries.off"].write(np.zeros(1, "<u8").tobytes())

  def add(self, codes: np.ndarray, ids: list[str], paths: list[str]):
    """Append packed codes uint8 [b, code_bytes] with their ids and source paths."""
    codes = np.ascontiguousarray(codes, np.uint8)
    if codes.shape != (len(ids), self.code_bytes) or len(paths) != len(ids):
      raise ValueError(f"codes {codes.shape} / {len(ids)} ids / {len(paths)} paths do not "
                       f"match ({self.code_bytes} bytes per code)")
    lines = [(json.dumps({"id": i, "path": p}, ensure_ascii=False) + "\n").encode("utf-8")
             for i, p in zip(ids, paths)]
    ends = self._pos + np.cumsum([len(line) for line in lines], dtype=np.uint64)
    self._files["codes.u8"].write(codes.tobytes())
    self._files["entries.jsonl"].write(b"".join(lines))
    self._files["entries.off"].write(ends.astype("<u8").tobytes())
    self._files["idhash.u64"].write(id_hash(ids).astype("<u8").tobytes())
    self._pos = int(ends[-1]) if len(ends) else self._pos
    self.count += len(ids)

  def skip(self, id_: str, path: str, reason: str):
    line = json.dumps({"id": id_, "path": path, "reason": reason}, ensure_ascii=False)
    self._files["skipped.jsonl"].write((line + "\n").encode("utf-8"))
    self.num_skipped += 1

  def _check_unique(self):
    """Raise `ValueError` naming duplicate ids (equal hashes, then exact comparison)."""
    hashes = np.fromfile(os.path.join(self.dir, "idhash.u64"), "<u8")
    srt = np.sort(hashes)
    same = np.unique(srt[1:][srt[1:] == srt[:-1]])
    if len(same):
      seg = Segment(os.path.dirname(self.dir), {"name": self.name, "count": self.count},
                    self.code_bytes, 0)
      ids = [e["id"] for e in seg.entries(np.flatnonzero(np.isin(hashes, same)))]
      dup = sorted({i for i in ids if ids.count(i) > 1})
      if dup:
        raise ValueError(f"{len(dup)} duplicate id(s): {dup[:5]}")

  def finish(self, source: dict, ignored: int = 0) -> dict:
    """Check the ids are unique, flush and fsync every file and the directory; returns
    the manifest record of the segment."""
    for f in self._files.values():
      f.flush()
      os.fsync(f.fileno())
      f.close()
    self._check_unique()
    fsync_dir(self.dir)
    return {"name": self.name, "count": self.count, "skipped": self.num_skipped,
            "ignored": int(ignored), "source": source, "created": _now()}

  def abort(self):
    for f in self._files.values():
      with contextlib.suppress(OSError):
        f.close()
    shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def writer_lock(root: str):
  """Exclusive `flock` on `root/.lock` (released when the process dies)."""
  fd = os.open(os.path.join(root, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise BadIndex(f"another build / add is writing {root}") from e
      raise
    yield
  finally:
    os.close(fd)


def new_manifest(modality: str, bits: int, fingerprint: dict, model: dict) -> dict:
  now = _now()
  return {"format": FORMAT, "version": VERSION, "modality": modality, "bits": int(bits),
          "code_bytes": -(-int(bits) // 8), "bit_order": "faiss", "fingerprint": fingerprint,
          "model": model, "count": 0, "segments": [], "created": now, "updated": now}


def commit(root: str, manifest: dict):
  """Atomically make `manifest` the index at `root`, then delete unlisted segments and
  temp files (leftovers of interrupted or replaced writes)."""
  manifest = dict(manifest, updated=_now(),
                  count=sum(int(s["count"]) for s in manifest["segments"]))
  atomic_write_bytes(os.path.join(root, MANIFEST),
                     (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
  collect_garbage(root, manifest)
  return manifest


def collect_garbage(root: str, manifest: dict | None):
  """Delete segment dirs not in `manifest` and stale temp files (call under the lock)."""
  listed = {s["name"] for s in manifest["segments"]} if manifest else set()
  for name in os.listdir(root):
    path = os.path.join(root, name)
    if name.startswith(SEG_PREFIX) and name not in listed:
      shutil.rmtree(path, ignore_errors=True)
    elif TMP_MARK in name and name.startswith(f".{MANIFEST}"):
      with contextlib.suppress(OSError):
        os.remove(path)


def read_manifest(root: str) -> dict | None:
  path = os.path.join(root, MANIFEST)
  if not os.path.exists(path):
    return None
  return HashIndex.open(root).manifest


def write_codes(path: str, codes: np.ndarray, ids: list[str], paths: list[str] | None = None,
                *, modality: str, bits: int, fingerprint: dict, model: dict | None = None,
                append: bool = False, source: dict | None = None) -> "HashIndex":
  """Commit already-packed codes (uint8 [n, ceil(bits / 8)], faiss order) as one new
  segment: a new index at `path` (replacing one there), or appended with `append=True`
  (then modality, bits and fingerprint must match). For precomputed codes and tests."""
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  paths = list(ids) if paths is None else paths
  with writer_lock(path):
    old = read_manifest(path)
    if append:
      if old is None:
        raise BadIndex(f"{path} is not an index; cannot append")
      check_fingerprint(old["fingerprint"], fingerprint, path, "the codes given")
      if old["modality"] != modality:
        raise ValueError(f"{path} is an index of {old['modality']}; cannot add {modality}")
      clash = HashIndex.open(path).existing_ids(ids)
      if clash:
        raise ValueError(f"{len(clash)} id(s) already in {path}: {clash[:5]}")
      manifest = old
    else:
      manifest = new_manifest(modality, bits, fingerprint, model or {"workdir": None})
    writer = SegmentWriter(path, int(manifest["code_bytes"]))
    try:
      for a in range(0, len(ids), 1 << 20):
        writer.add(codes[a:a + (1 << 20)], list(ids[a:a + (1 << 20)]),
                   list(paths[a:a + (1 << 20)]))
      record = writer.finish(source or {"kind": "codes"})
      commit(path, dict(manifest, segments=manifest["segments"] + [record]))
    except BaseException:
      writer.abort()
      raise
  return HashIndex.open(path)

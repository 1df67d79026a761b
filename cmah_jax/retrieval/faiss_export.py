"""Export an index to faiss (optional dependency: `pip install "cmah_jax[faiss]"`).

The codes are already in faiss's bit order, so the bytes go in unchanged:
`faiss.IndexBinaryFlat(8 * code_bytes)` (K rounded up to whole bytes; the padding bits are
0 in every code, so distances are unchanged). faiss row r is index row r; its ids and
paths are written beside it, one JSON object per line, to `OUT.ids.jsonl`.
faiss breaks ties among equal distances in its own order, so only rows tied at the k-th
distance may differ from `search`.
"""
from __future__ import annotations

import os
import shutil
import uuid

import numpy as np

from cmah_jax.retrieval.index import TMP_MARK, HashIndex, fsync_dir


def _faiss():
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("faiss export needs faiss: pip install 'cmah_jax[faiss]' "
                      "(or pip install faiss-cpu)") from e
  return faiss


def to_faiss(index: HashIndex, chunk_rows: int = 1 << 22):
  """A `faiss.IndexBinaryFlat` holding every code of `index`, in row order."""
  faiss = _faiss()
  out = faiss.IndexBinaryFlat(8 * index.code_bytes)
  for _, chunk in index.chunks(chunk_rows):
    out.add(np.ascontiguousarray(chunk))
  return out


def _replace_synced(tmp: str, path: str):
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  os.replace(tmp, path)
  fsync_dir(os.path.dirname(path))


def export_faiss(index: HashIndex, path: str, chunk_rows: int = 1 << 22) -> str:
  """Write `to_faiss(index)` to `path` and the ids to `path + ".ids.jsonl"`, each through
  a temp file in the same directory, fsync and `os.replace`; returns `path`."""
  faiss = _faiss()
  path = os.path.abspath(os.path.expanduser(path))
  tmps = [os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{s}{TMP_MARK}"
                       f"{uuid.uuid4().hex[:8]}") for s in ("", ".ids.jsonl")]
  try:
    with open(tmps[1], "wb") as f:  # segments' entries.jsonl are already {"id", "path"} lines
      for seg in index.segments:
        with open(os.path.join(seg.dir, "entries.jsonl"), "rb") as src:
          shutil.copyfileobj(src, f)
    faiss.write_index_binary(to_faiss(index, chunk_rows), tmps[0])
    _replace_synced(tmps[1], path + ".ids.jsonl")
    _replace_synced(tmps[0], path)
  finally:
    for t in tmps:
      if os.path.exists(t):
        os.remove(t)
  return path

"""File readers of the real-dataset builders, and the errors they raise.

Readers are built on maintained libraries (plyfile, Pillow, NumPy, h5py). A file that
cannot be read raises `UnreadableFileError` naming it; a missing folder or index file
raises `LayoutError` naming the expected path. Images are alpha composited onto a grey
`background` (255 = white), padded to a square with that colour and resized with Pillow's
bicubic filter (antialiased when shrinking). Views are kept evenly spaced over an object's
views in natural sort order (view `k` is the `floor(k * n / num_views)`-th of n).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class LayoutError(FileNotFoundError):
  """A folder or index file of the published layout is missing (the message names it)."""


class UnreadableFileError(ValueError):
  """A file exists but cannot be read or has the wrong content."""

  def __init__(self, path, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"Cannot read {self.path}: {reason}")


def _layout_error(path: Path, what: str, kind: str, dataset: str) -> LayoutError:
  return LayoutError(
      f"{dataset}: expected the {what} at {path}, but it "
      f"{'is not a ' + kind if path.exists() else 'does not exist'}. See the expected "
      f"layout in docs/real_datasets.md (or the builder's MANUAL_DOWNLOAD_INSTRUCTIONS).")


def require_dir(path, what: str, dataset: str) -> Path:
  """`path` as a Path if it is a directory, else a `LayoutError` naming it."""
  path = Path(path)
  if not path.is_dir():
    raise _layout_error(path, f"{what} folder", "folder", dataset)
  return path


def require_file(path, what: str, dataset: str) -> Path:
  """`path` as a Path if it is a file, else a `LayoutError` naming it."""
  path = Path(path)
  if not path.is_file():
    raise _layout_error(path, what, "file", dataset)
  return path


def read_ply_points(path) -> np.ndarray:
  """x, y, z of the `vertex` element of a binary or ASCII PLY file: float64 [N, 3]."""
  import plyfile  # pylint: disable=import-outside-toplevel

  try:
    ply = plyfile.PlyData.read(os.fspath(path))
    vertex = ply["vertex"]
    names = vertex.data.dtype.names or ()
    missing = [c for c in "xyz" if c not in names]
    if missing:
      raise ValueError(f"vertex element has no {missing} property (has {list(names)})")
    return np.stack([np.asarray(vertex[c], np.float64) for c in "xyz"], axis=-1)
  except (OSError, ValueError, KeyError, IndexError, EOFError, TypeError,
          plyfile.PlyParseError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e


def read_npy_points(path) -> np.ndarray:
  """A NumPy `.npy` array [N, C >= 3] (no pickles); the first 3 columns: float64 [N, 3]."""
  try:
    arr = np.load(os.fspath(path), allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e
  if arr.ndim != 2 or arr.shape[1] < 3 or not np.issubdtype(arr.dtype, np.number):
    raise UnreadableFileError(
        path, f"expected a numeric [N, 3] array, got {arr.dtype} {list(arr.shape)}")
  return np.asarray(arr[:, :3], np.float64)


def read_h5(path, keys: Sequence[str]) -> dict[str, np.ndarray]:
  """The named datasets of an HDF5 file, fully read: {key: array}."""
  import h5py  # pylint: disable=import-outside-toplevel

  try:
    with h5py.File(os.fspath(path), "r") as f:
      out = {}
      for k in keys:
        if k not in f:
          raise KeyError(f"no dataset {k!r} (has {sorted(f.keys())})")
        out[k] = np.asarray(f[k][...])
      return out
  except (OSError, KeyError, ValueError, TypeError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e


def read_lines(path) -> list[str]:
  """Non-empty stripped lines of a UTF-8 text file."""
  try:
    with open(path, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e


def read_json(path) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e


def load_image(path, size: int, background: int = 255) -> np.ndarray:
  """A PNG (any Pillow-readable image) as uint8 [size, size, 3].

  Transparent pixels are composited onto grey level `background`; a non-square image is
  padded to a square (centred) with that colour; then bicubic resize (antialiased when
  shrinking) to `size` x `size`.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  try:
    with Image.open(os.fspath(path)) as im:
      im.load()  # full decode now: a truncated file fails here, not later
      has_alpha = im.mode in ("RGBA", "LA", "PA") or (
          im.mode == "P" and "transparency" in im.info)
      if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (background,) * 3 + (255,))
        rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
      else:
        rgb = im.convert("RGB")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise UnreadableFileError(path, f"{type(e).__name__}: {e}") from e
  w, h = rgb.size
  if w != h:
    side = max(w, h)
    square = Image.new("RGB", (side, side), (background,) * 3)
    square.paste(rgb, ((side - w) // 2, (side - h) // 2))
    rgb = square
  if rgb.size != (size, size):
    rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
  return np.asarray(rgb, np.uint8)


def list_images(folder: Path, pattern: re.Pattern | None = None) -> list[Path]:
  """PNG files directly in `folder` (matching `pattern` on the name, if given)."""
  try:
    names = os.listdir(folder)
  except (FileNotFoundError, NotADirectoryError):
    return []
  out = []
  for n in names:
    if not n.lower().endswith(".png"):
      continue
    if pattern is not None and not pattern.fullmatch(n):
      continue
    out.append(folder / n)
  return out


def natural_key(text: str):
  """Sort key treating digit runs as numbers ("img.2" < "img.10")."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def select_views(paths: Sequence, num_views: int) -> list:
  """`num_views` of `paths` (natural order), evenly spaced: the `k*n//num_views`-th."""
  paths = sorted(paths, key=lambda p: natural_key(Path(p).name))
  n = len(paths)
  if n < num_views:
    raise ValueError(f"{n} views < num_views={num_views}")
  return [paths[k * n // num_views] for k in range(num_views)]

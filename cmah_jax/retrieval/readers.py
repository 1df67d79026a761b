"""Files -> model inputs: point clouds, meshes and images, each read the same way every time.

Point / mesh files (`POINT_EXTS`):
  .npy   float array [P, C >= 3]; the first 3 columns are x, y, z (extra columns, e.g.
         normals, are ignored)
  .ply   vertices (plyfile; ASCII or binary); with a non-empty `face` element a mesh
  .obj   `v` and `f` lines (polygons fan-triangulated, negative indices allowed); without
         `f` lines a point cloud
  .off   OFF / COFF / NOFF ... (counts on the header line or the next); extra vertex
         columns ignored; without faces a point cloud
  .stl   binary (`84 + 50 m` bytes exactly) or ASCII (`solid ... endsolid`)
Meshes are sampled area-uniformly on the surface (`cmah_jax.geometry.sample_surface`) with
`num_points` points; point clouds are normalised to the unit sphere
(`cmah_jax.geometry.normalize_unit_sphere_np`) first and then resampled to `num_points`:
  P > N: a subset of N distinct points, in stored order;
  P < N: every stored point once plus N - P extra draws with replacement, in stored order
         (duplicates only repeat real points; refusing would make small scans unusable);
  P = N: all points, no draw.
Mesh samples are normalised after sampling (as the datasets do). The only randomness is
`file_rng(key)`, seeded from a hash of the file's id (its relative path), so a file gets the
same points in every build, on every machine.

Images (`IMAGE_EXTS`, Pillow): EXIF orientation applied; transparency composited on white
(the renders' background); converted to RGB; centre-cropped to a square; resized to
`image_size` (box filter when shrinking, i.e. the area mean the training pipeline uses;
bicubic when enlarging): uint8 [S, S, 3].

Every failure is a `BadInput` whose message is the reason (truncated, empty, non-finite,
not an image, ...), so the caller can name the file and go on.
"""
from __future__ import annotations

import hashlib
import os
import re
import struct
import zlib

import numpy as np

from cmah_jax import geometry

POINT_EXTS = (".npy", ".ply", ".obj", ".off", ".stl")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
MODALITIES = ("points", "images")
READER_SEED = 20260101  # mixes with the file-id hash: fixes the points of every file [ours]


class BadInput(Exception):
  """A file that cannot be indexed; `str(e)` is the reason."""


def modality_of(path: str) -> str | None:
  """"points" / "images" by file extension (case-insensitive), None otherwise."""
  ext = os.path.splitext(path)[1].lower()
  if ext in POINT_EXTS:
    return "points"
  if ext in IMAGE_EXTS:
    return "images"
  return None


def scan_folder(root: str, modality: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """Every file under `root` (recursively, symlinks to files followed, sorted by id).

  Returns:
    files: (id, absolute path) of files of `modality`; id = posix path relative to root.
    ignored: (id, reason) of every other file (another modality, unknown extension), so
      the caller can report them: nothing is dropped silently.
  """
  if modality not in MODALITIES:
    raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root} is not a directory")
  files, ignored = [], []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
    dirnames.sort()
    for name in filenames:
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, root).replace(os.sep, "/")
      kind = modality_of(name)
      if kind == modality:
        files.append((rel, path))
      elif kind is not None:
        what = "an image" if kind == "images" else "a point cloud / mesh"
        ignored.append((rel, f"{what}; this index holds {modality}"))
      else:
        ext = os.path.splitext(name)[1] or "(none)"
        known = POINT_EXTS if modality == "points" else IMAGE_EXTS
        ignored.append((rel, f"extension {ext} is not one of {', '.join(known)}"))
  files.sort()
  ignored.sort()
  return files, ignored


def file_rng(key: str) -> np.random.Generator:
  """The generator of file `key` (its id): seeded from SHA-256 of the id, platform-free."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return np.random.default_rng([READER_SEED, int.from_bytes(digest[:16], "little")])


# ----------------------------------------------------------------------------------------
# Geometry files -> (vertices, faces or None).
# ----------------------------------------------------------------------------------------


def _read_bytes(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise BadInput(f"unreadable: {e.strerror or e}") from e
  if not data:
    raise BadInput("empty file (0 bytes)")
  return data


def _fan(polygons) -> np.ndarray:
  """Polygons (lists of vertex indices) -> triangles int64 [m, 3] (fan from the first)."""
  tris = [(p[0], p[i], p[i + 1]) for p in polygons for i in range(1, len(p) - 1)]
  return np.asarray(tris, np.int64).reshape(-1, 3)


def _read_npy(path: str):
  _read_bytes(path)  # empty / unreadable checks with a clear reason
  try:
    arr = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise BadInput(f"not a readable .npy array (truncated?): {e}") from e
  if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
    raise BadInput(f".npy holds {getattr(arr, 'dtype', type(arr))}, not numbers")
  if arr.ndim != 2 or arr.shape[1] < 3:
    raise BadInput(f".npy array has shape {arr.shape}; expected [P, 3] (or [P, C > 3])")
  return arr[:, :3].astype(np.float64), None


def _read_ply(path: str):
  import plyfile  # pylint: disable=import-outside-toplevel
  _read_bytes(path)
  try:
    ply = plyfile.PlyData.read(path)
    names = [e.name for e in ply.elements]
    if "vertex" not in names:
      raise BadInput(f"PLY without a vertex element (elements: {names})")
    v = ply["vertex"].data
    verts = np.stack([np.asarray(v[c], np.float64) for c in ("x", "y", "z")], -1)
    faces = None
    if "face" in names and len(ply["face"].data):
      fdata = ply["face"].data
      key = next((k for k in ("vertex_indices", "vertex_index") if k in fdata.dtype.names),
                 None)
      if key is None:
        raise BadInput(f"PLY faces without vertex_indices (properties: {fdata.dtype.names})")
      faces = _fan([np.asarray(p, np.int64) for p in fdata[key]])
  except BadInput:
    raise
  except (plyfile.PlyParseError, ValueError, KeyError, IndexError, EOFError, OSError,
          struct.error, TypeError) as e:
    raise BadInput(f"not a readable PLY (truncated?): {type(e).__name__}: {e}") from e
  return verts, faces


def _read_obj(path: str):
  text = _read_bytes(path).decode("utf-8", errors="replace")
  verts, polys = [], []
  for lineno, line in enumerate(text.splitlines(), 1):
    parts = line.split("#", 1)[0].split()
    if not parts:
      continue
    try:
      if parts[0] == "v":
        verts.append([float(x) for x in parts[1:4]])
        if len(verts[-1]) != 3:
          raise ValueError("fewer than 3 coordinates")
      elif parts[0] == "f":
        idx = [int(p.split("/")[0]) for p in parts[1:]]
        idx = [i - 1 if i > 0 else len(verts) + i for i in idx]  # 1-based; negative: relative
        if len(idx) < 3 or min(idx) < 0 or max(idx) >= len(verts):
          raise ValueError(f"bad face {parts[1:]} ({len(verts)} vertices so far)")
        polys.append(idx)
    except ValueError as e:
      raise BadInput(f"OBJ line {lineno}: {e}") from e
  if not verts:
    raise BadInput("OBJ without vertices")
  return np.asarray(verts, np.float64), (_fan(polys) if polys else None)


def _read_off(path: str):
  text = _read_bytes(path).decode("utf-8", errors="replace")
  lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
  lines = [ln for ln in lines if ln]
  m = re.match(r"^([A-Z]*OFF)(.*)$", lines[0]) if lines else None
  if m is None:
    raise BadInput("not an OFF file (first line is not OFF / COFF / NOFF ...)")
  if "BINARY" in m.group(2).upper():
    raise BadInput("binary OFF is not supported (convert to ASCII OFF, PLY or STL)")
  rest, body = m.group(2).split(), lines[1:]
  if len(rest) < 2:
    if not body:
      raise BadInput("OFF header without vertex / face counts")
    rest, body = body[0].split(), body[1:]
  try:
    nv, nf = int(rest[0]), int(rest[1])
    if len(body) < nv + nf:
      raise BadInput(f"truncated OFF: header says {nv} vertices and {nf} faces, file has "
                     f"{len(body)} data lines")
    verts = np.asarray([[float(x) for x in ln.split()[:3]] for ln in body[:nv]], np.float64)
    polys = []
    for ln in body[nv:nv + nf]:
      n, *rest = ln.split()   # n indices, then optional per-face colour values
      n = int(n)
      if len(rest) < n or n < 3:
        raise ValueError(f"bad face line {ln!r}")
      polys.append([int(x) for x in rest[:n]])
  except (ValueError, IndexError) as e:
    raise BadInput(f"bad OFF data: {e}") from e
  if verts.shape != (nv, 3):
    raise BadInput(f"bad OFF vertex lines (parsed shape {verts.shape}, expected ({nv}, 3))")
  return verts, (_fan(polys) if polys else None)


def _read_stl(path: str):
  data = _read_bytes(path)
  if len(data) >= 84:
    (m,) = struct.unpack_from("<I", data, 80)
    if len(data) == 84 + 50 * m:  # binary STL (may also start with "solid")
      rec = np.frombuffer(data, np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)),
                                          ("a", "<u2")]), count=m, offset=84)
      verts = rec["v"].reshape(-1, 3).astype(np.float64)
      return verts, np.arange(3 * m, dtype=np.int64).reshape(m, 3)
  # ASCII: "solid" and facet text early on (a binary header may also start with "solid").
  if data.lstrip()[:5].lower() == b"solid" and re.search(rb"\b(facet|endsolid)\b",
                                                         data[:4096]):
    text = data.decode("utf-8", errors="replace")
    if not re.search(r"\bendsolid\b", text):
      raise BadInput("truncated ASCII STL (no 'endsolid')")
    try:
      verts = np.asarray([[float(x) for x in v] for v in re.findall(
          r"\bvertex\s+(\S+)\s+(\S+)\s+(\S+)", text)], np.float64).reshape(-1, 3)
    except ValueError as e:
      raise BadInput(f"bad ASCII STL vertex: {e}") from e
    if len(verts) == 0 or len(verts) % 3:
      raise BadInput(f"ASCII STL with {len(verts)} vertices (not a positive multiple of 3)")
    return verts, np.arange(len(verts), dtype=np.int64).reshape(-1, 3)
  if len(data) < 84:
    raise BadInput(f"truncated binary STL: {len(data)} bytes, less than the 84-byte header")
  raise BadInput(f"truncated or corrupt binary STL: header says {m} triangles "
                 f"({84 + 50 * m} bytes), the file has {len(data)} bytes")


_GEOMETRY_READERS = {".npy": _read_npy, ".ply": _read_ply, ".obj": _read_obj,
                     ".off": _read_off, ".stl": _read_stl}


def read_geometry(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """A point / mesh file -> (vertices float64 [n, 3], triangles int64 [m, 3] or None for a
  point cloud). Raises `BadInput` with the reason."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in _GEOMETRY_READERS:
    raise BadInput(f"extension {ext or '(none)'} is not one of {', '.join(POINT_EXTS)}")
  verts, faces = _GEOMETRY_READERS[ext](path)
  if len(verts) == 0:
    raise BadInput("no vertices")
  bad = ~np.isfinite(verts).all(1)
  if bad.any():
    raise BadInput(f"non-finite coordinates (NaN / inf) in {int(bad.sum())} of {len(verts)} "
                   "vertices")
  if faces is not None and len(faces) and (faces.min() < 0 or faces.max() >= len(verts)):
    raise BadInput(f"face vertex index {int(faces.min() if faces.min() < 0 else faces.max())}"
                   f" outside [0, {len(verts)})")
  return verts, faces


def resample_points(points: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
  """[P, 3] -> [num_points, 3] as in the module docstring (subset / oversample / as is)."""
  p = len(points)
  if p == num_points:
    return points
  if p > num_points:
    idx = rng.choice(p, num_points, replace=False)
  else:
    idx = np.concatenate([np.arange(p), rng.integers(0, p, num_points - p)])
  return points[np.sort(idx)]


def load_points(path: str, num_points: int, key: str) -> np.ndarray:
  """A point / mesh file -> float32 [num_points, 3] on the unit sphere (see module doc).

  Args:
    path: the file; key: its id (seeds `file_rng`).
  Raises:
    BadInput: with the reason.
  """
  verts, faces = read_geometry(path)
  rng = file_rng(key)
  if faces is not None:
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not np.isfinite(area.sum()) or area.sum() <= 0:
      raise BadInput(f"mesh of {len(faces)} triangles has zero surface area")
    pts = geometry.normalize_unit_sphere_np(
        geometry.sample_surface(verts, faces, num_points, rng))
  else:
    if np.ptp(verts, axis=0).max() == 0:
      raise BadInput(f"all {len(verts)} points coincide (zero extent)")
    pts = resample_points(geometry.normalize_unit_sphere_np(verts), num_points, rng)
  return np.ascontiguousarray(pts, np.float32)


# ----------------------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------------------


def square_resize(image, image_size: int):
  """A PIL RGB image -> centre square crop resized to `image_size`: uint8 [S, S, 3]."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  w, h = image.size
  s = min(w, h)
  left, top = (w - s) // 2, (h - s) // 2
  image = image.crop((left, top, left + s, top + s))
  if s != image_size:
    resample = Image.Resampling.BOX if s > image_size else Image.Resampling.BICUBIC
    image = image.resize((image_size, image_size), resample)
  return np.asarray(image, np.uint8)


def load_image(path: str, image_size: int) -> np.ndarray:
  """An image file -> uint8 [image_size, image_size, 3] (see module doc).

  Raises:
    BadInput: with the reason (unreadable, empty, truncated, not an image).
  """
  from PIL import Image, ImageOps, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  _read_bytes(path)
  try:
    with Image.open(path) as im:
      im.load()
      im = ImageOps.exif_transpose(im)
      if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (255, 255, 255))
        im.paste(rgba, mask=rgba.getchannel("A"))
      im = im.convert("RGB")
      if min(im.size) < 1:
        raise BadInput(f"image of size {im.size}")
      return square_resize(im, image_size)
  except UnidentifiedImageError as e:
    raise BadInput("not an image (Pillow cannot identify it)") from e
  except (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError) as e:
    raise BadInput(f"unreadable image (truncated?): {e}") from e


def load_file(path: str, modality: str, key: str, num_points: int, image_size: int) -> np.ndarray:
  """`load_points` or `load_image` by modality."""
  if modality == "points":
    return load_points(path, num_points, key)
  if modality == "images":
    return load_image(path, image_size)
  raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")

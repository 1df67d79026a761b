"""A picture of search results: one row per query, the query then its results left to right,
each titled with its Hamming distance and id. Images are shown as the model sees them
(centre-cropped, resized); point clouds and meshes as the model's points, drawn like the
training report does (`cmah_jax.plotting.draw_points`)."""
from __future__ import annotations

import os
import re

import numpy as np

from cmah_jax.plotting import draw_points
from cmah_jax.retrieval import readers
from cmah_jax.retrieval.build import read_dataset

_DATASET_PATH = re.compile(r"^(?P<label>[^:]+):(?P<split>[^\[]+)\[(?P<i>\d+)\]$")


def load_entry(index, entry: dict, bound):
  """(modality, array) of an index entry as it was encoded, or (modality, None) when its
  source is gone or unreadable."""
  modality = index.modality
  m = _DATASET_PATH.match(entry["path"])
  if m and not os.path.exists(entry["path"]):
    for seg in index.segments:
      src = seg.record.get("source", {})
      label = f"{src.get('name')}/{src['config']}" if src.get("config") else src.get("name")
      if src.get("kind") == "dataset" and label == m["label"] and src["split"] == m["split"]:
        _, items = read_dataset(f"{label}:{src['split']}", src["data_dir"], modality,
                                bound.num_points, bound.image_size, src.get("eval_view", 0),
                                indices=[int(m["i"])])
        return modality, next(items)[2]
    return modality, None
  try:
    return modality, readers.load_file(entry["path"], modality, entry["id"],
                                       bound.num_points, bound.image_size)
  except (readers.BadInput, FileNotFoundError):
    return modality, None


def _show(ax, modality, x):
  if x is None:
    ax.text(0.5, 0.5, "unavailable", ha="center", va="center", transform=ax.transAxes)
  elif modality == "images":
    ax.imshow(x)
  else:
    draw_points(ax, x)
  ax.set_xticks([])
  ax.set_yticks([])


def _short(s: str, n: int = 22) -> str:
  return s if len(s) <= n else "..." + s[-(n - 3):]


def draw_results(path: str, results: list[dict], index, bound, top: int | None = None):
  """Write a PNG grid of `results` (from `search_files`) to `path`."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  top = max(len(r["results"]) for r in results) if top is None else top
  rows, cols = len(results), top + 1
  fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False)
  for row, r in zip(axes, results):
    q = r["query"]
    kind = readers.modality_of(q)
    try:
      x = readers.load_file(q, kind, os.path.basename(q), bound.num_points, bound.image_size)
    except (readers.BadInput, ValueError):
      x = None
    _show(row[0], kind, x)
    row[0].set_title("query\n" + _short(os.path.basename(q)), fontsize=7, color="tab:blue")
    for ax, e in zip(row[1:], r["results"][:top] + [None] * top):
      if e is None:
        ax.axis("off")
        continue
      _show(ax, *load_entry(index, e, bound))
      ax.set_title(f"d={e['distance']}\n{_short(e['id'])}", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)

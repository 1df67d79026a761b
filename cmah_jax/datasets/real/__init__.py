"""Real paired datasets, read from hand-downloaded files in their published layouts.

One TFDS builder per dataset (`shapenet_render`, `modelnet40`, `shapenet55`), each only
listing its files (`_scan`); the shared `builder.RealDatasetBuilder` pairs, splits, reads
and writes them, identically for all three:

* `readers`: PLY / NPY / HDF5 / JSON / text / image readers; `UnreadableFileError` and
  `LayoutError` name the file or folder at fault.
* `points`: point-cloud checks, FPS or seeded random subsampling, unit-sphere
  normalisation.
* `splits`: per-class seeded holdout and query/database splits; the seeded record order
  of each split (`record_order`: a fixed shuffle, not sorted by the class-prefixed ids).
* `skips`: what is skipped and why, the skip limit, the preparation summary.

Every example has the project's format (`cmah_jax.datasets.features`)
  {"points": float32 [P, 3], "images": uint8 [V, S, S, 3], "label": int64, "object_id": bytes}
and the splits are "train", "query" and "database" (disjoint objects). The recipe per
dataset is in docs/real_datasets.md.
"""

"""TFDS builder `modelnet40`: PointNet's ModelNet40 HDF5 point clouds with 180-view renders.

Point clouds are the rows of `modelnet40_ply_hdf5_2048/ply_data_{train,test}<i>.h5`
(datasets `data` [n, 2048, 3] and `label` [n, 1]); row `r` of file `<i>` is named by entry
`r` of `ply_data_{train,test}_<i>_id2file.json` (e.g. "airplane/airplane_0627.ply"), and
paired with the renders `ModelNet40-Images-180/<class>/<name>/<name>.<view>.png`
(view = 0 ... 179).

Labels: the HDF5 `label`, an index into `shape_names.txt` (40 names, alphabetical). A row
whose label disagrees with its id2file class is skipped (`label_mismatch`).
Splits: the official train files -> "train"; the official test files are divided per class
[ours]: the sorted ids of class `c` permuted by `default_rng([split_seed, 1, c])`, the first
`round(query_fraction * n)` (default 20%, at least 1) are queries, the rest the retrieval
database. Object ids are `<class>/<name>` (e.g. "airplane/airplane_0627").
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from cmah_jax.datasets.real import builder, readers
from cmah_jax.datasets.real.skips import Skip

H5_DIR = "modelnet40_ply_hdf5_2048"
IMAGE_DIR = "ModelNet40-Images-180"


class Modelnet40(builder.RealDatasetBuilder):
  """ModelNet40 (PointNet HDF5, 2048 points) paired with 180 rendered views per object."""

  name = "modelnet40"
  BUILDER_CONFIGS = builder.standard_configs("the 180 renders")
  DESCRIPTION = __doc__.split("\n\n")[0]
  HOMEPAGE = "https://modelnet.cs.princeton.edu/"
  CITATION = ("@inproceedings{wu2015modelnet, title={3D ShapeNets: A Deep Representation "
              "for Volumetric Shapes}, author={Wu, Zhirong and others}, booktitle={CVPR}, "
              "year={2015}}")
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download PointNet's modelnet40_ply_hdf5_2048.zip (https://github.com/charlesq34/pointnet,
"shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip"; mirrors are linked from
https://github.com/AutoAILab/Multimodal-Semi-Learning and
https://github.com/LongLong-Jing/Cross-Modal-Center-Loss) and the multi-view renders
ModelNet40-Images-180.zip (linked from the same two repositories), and extract both into
manual_dir. Expected layout (nothing is downloaded automatically):

  <manual_dir>/
    modelnet40_ply_hdf5_2048/
      ply_data_train0.h5 ... ply_data_train4.h5     data [n, 2048, 3], label [n, 1]
      ply_data_test0.h5, ply_data_test1.h5
      ply_data_train_0_id2file.json ...             ["airplane/airplane_0627.ply", ...]
      ply_data_test_0_id2file.json ...
      shape_names.txt                               40 class names, one a line
    ModelNet40-Images-180/<class>/<name>/<name>.<view>.png   view = 0 ... 179

Then:

  python -m cmah_jax.datasets.prepare --dataset=modelnet40 --manual_dir=<manual_dir> \\
      --data_dir=<data_dir> [--config=default|compact|small|tiny]
"""

  def _scan(self, root: Path) -> builder.Scan:
    h5_dir = readers.require_dir(root / H5_DIR, "PointNet HDF5", self.name)
    img_root = readers.require_dir(root / IMAGE_DIR, "ModelNet40-Images-180 render", self.name)
    names_file = h5_dir / "shape_names.txt"
    if not names_file.is_file() and (root / "shape_names.txt").is_file():
      names_file = root / "shape_names.txt"
    class_names = readers.read_lines(readers.require_file(names_file, "class list shape_names.txt",
                                                self.name))
    objects: list[builder.ObjectSpec] = []
    skips: list[Skip] = []
    seen: set[str] = set()
    files = {}
    for split in ("train", "test"):
      pattern = re.compile(rf"ply_data_{split}(\d+)\.h5")
      found = sorted((int(m.group(1)), n) for n in os.listdir(h5_dir)
                     if (m := pattern.fullmatch(n)))
      if not found:
        raise readers.LayoutError(
            f"{self.name}: no {split} HDF5 files in {h5_dir}: expected "
            f"{h5_dir / f'ply_data_{split}0.h5'} (and ply_data_{split}1.h5, ...).")
      files[split] = found
      for index, fname in found:
        h5_path = h5_dir / fname
        json_path = readers.require_file(h5_dir / f"ply_data_{split}_{index}_id2file.json",
                                    f"object-name list of {fname}", self.name)
        arrays = readers.read_h5(h5_path, ("data", "label"))
        data, label = arrays["data"], np.asarray(arrays["label"]).reshape(-1)
        if data.ndim != 3 or data.shape[-1] != 3 or len(label) != len(data):
          raise readers.UnreadableFileError(
              h5_path, f"expected data [n, P, 3] and label [n, 1], got data "
              f"{list(data.shape)} and label {list(arrays['label'].shape)}")
        names = readers.read_json(json_path)
        if not isinstance(names, list) or len(names) != len(data) or not all(
            isinstance(x, str) for x in names):
          raise readers.UnreadableFileError(
              json_path, f"expected a list of {len(data)} strings (one per row of {h5_path}),"
              f" got {type(names).__name__} of length "
              f"{len(names) if hasattr(names, '__len__') else '?'}")
        for row, entry in enumerate(names):
          where = f"{h5_path}[row {row}]"
          cls, _, fname_ply = entry.replace("\\", "/").rpartition("/")
          name = fname_ply[:-4] if fname_ply.lower().endswith(".ply") else fname_ply
          oid = f"{cls}/{name}"
          lab = int(label[row])
          if not 0 <= lab < len(class_names) or class_names[lab] != cls:
            skips.append(Skip(
                "label_mismatch", oid,
                f"HDF5 label {lab} "
                f"({class_names[lab] if 0 <= lab < len(class_names) else 'out of range'}) "
                f"but id2file class {cls!r}", where))
            continue
          if oid in seen:
            skips.append(Skip("duplicate", oid, "listed again", where))
            continue
          seen.add(oid)
          folder = img_root / cls / name
          view_re = re.compile(re.escape(name) + r"\.\d+\.png")
          objects.append(builder.ObjectSpec(
              oid, lab, points=data[row], points_file=where,
              image_paths=readers.list_images(folder, view_re), split=split,
              images_hint=os.fspath(folder / f"{name}.<view>.png")))

    unpaired = 0
    for cls in os.listdir(img_root):
      if (img_root / cls).is_dir():
        unpaired += sum(1 for n in os.listdir(img_root / cls)
                        if f"{cls}/{n}" not in seen and (img_root / cls / n).is_dir())
    return builder.Scan(
        class_names=class_names, objects=objects, skips=skips,
        ignored={"render folders with no HDF5 row": unpaired},
        metadata={"h5_files": {s: [n for _, n in f] for s, f in files.items()}})

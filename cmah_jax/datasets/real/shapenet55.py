"""TFDS builder `shapenet55`: Point-BERT's ShapeNet-55 point clouds with ULIP's renders.

Objects are the lines `<synset>-<model_id>.npy` of `ShapeNet-55/train.txt` and
`ShapeNet-55/test.txt`; point clouds `shapenet_pc/<synset>-<model_id>.npy` ([8192, 3]);
views `rendered_images/<synset>-<model_id>/<synset>-<model_id>_r_<deg>.png` (ULIP: 30
azimuths, deg = 000, 012, ..., 348; the `_depth0001` depth maps beside them are not used).

Labels: the index of the synset in the fixed sorted list `SYNSETS` of ShapeNetCore's 55
categories (0 = 02691156 airplane ... 54 = 04554684 washer), so label ids do not depend on
which categories are present; a listed object of another synset is skipped
(`unknown_class`). Splits: train.txt -> "train"; test.txt is divided per class [ours]: the
sorted ids of class `c` permuted by `default_rng([split_seed, 1, c])`, the first
`round(query_fraction * n)` (default 20%, at least 1) are queries, the rest the retrieval
database. An object listed twice (e.g. in both files) keeps its first listing (train.txt
is read first) and the repeat is skipped (`duplicate`). Object ids are
`<synset>-<model_id>`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from cmah_jax.datasets.real import builder, readers
from cmah_jax.datasets.real.skips import Skip

# (synset, name), sorted by synset: label = position [ShapeNetCore v2 / Point-BERT].
SYNSETS = (
    ("02691156", "airplane"), ("02747177", "trash_bin"), ("02773838", "bag"),
    ("02801938", "basket"), ("02808440", "bathtub"), ("02818832", "bed"),
    ("02828884", "bench"), ("02843684", "birdhouse"), ("02871439", "bookshelf"),
    ("02876657", "bottle"), ("02880940", "bowl"), ("02924116", "bus"),
    ("02933112", "cabinet"), ("02942699", "camera"), ("02946921", "can"),
    ("02954340", "cap"), ("02958343", "car"), ("02992529", "cellphone"),
    ("03001627", "chair"), ("03046257", "clock"), ("03085013", "keyboard"),
    ("03207941", "dishwasher"), ("03211117", "display"), ("03261776", "earphone"),
    ("03325088", "faucet"), ("03337140", "file_cabinet"), ("03467517", "guitar"),
    ("03513137", "helmet"), ("03593526", "jar"), ("03624134", "knife"),
    ("03636649", "lamp"), ("03642806", "laptop"), ("03691459", "loudspeaker"),
    ("03710193", "mailbox"), ("03759954", "microphone"), ("03761084", "microwave"),
    ("03790512", "motorbike"), ("03797390", "mug"), ("03928116", "piano"),
    ("03938244", "pillow"), ("03948459", "pistol"), ("03991062", "flowerpot"),
    ("04004475", "printer"), ("04074963", "remote"), ("04090263", "rifle"),
    ("04099429", "rocket"), ("04225987", "skateboard"), ("04256520", "sofa"),
    ("04330267", "stove"), ("04379243", "table"), ("04401088", "telephone"),
    ("04460130", "tower"), ("04468005", "train"), ("04530566", "watercraft"),
    ("04554684", "washer"),
)
_LINE = re.compile(r"(\d{8})-([^/\\\s]+)\.npy")


class Shapenet55(builder.RealDatasetBuilder):
  """ShapeNet-55 (Point-BERT, 8192-point .npy) paired with ULIP's 30 rendered views."""

  name = "shapenet55"
  BUILDER_CONFIGS = builder.standard_configs("ULIP's 30 renders")
  DESCRIPTION = __doc__.split("\n\n")[0]
  HOMEPAGE = "https://github.com/lulutang0608/Point-BERT"
  CITATION = ("@inproceedings{yu2022pointbert, title={Point-BERT: Pre-training 3D Point "
              "Cloud Transformers with Masked Point Modeling}, author={Yu, Xumin and "
              "others}, booktitle={CVPR}, year={2022}}")
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download Point-BERT's ShapeNet55-34 archive (https://github.com/lulutang0608/Point-BERT,
DATASET.md: ShapeNet55/34) and ULIP's rendered images of ShapeNet
(https://github.com/salesforce/ULIP, README "ShapeNet55": rendered_images), and place them
in manual_dir. Expected layout (nothing is downloaded automatically):

  <manual_dir>/
    ShapeNet-55/train.txt, ShapeNet-55/test.txt    one <synset>-<model_id>.npy a line
    shapenet_pc/<synset>-<model_id>.npy             [8192, 3] float
    rendered_images/<synset>-<model_id>/<synset>-<model_id>_r_<deg>.png   deg = 000 ... 348

Then:

  python -m cmah_jax.datasets.prepare --dataset=shapenet55 --manual_dir=<manual_dir> \\
      --data_dir=<data_dir> [--config=default|compact|small|tiny]
"""

  def _class_names_for_info(self):
    return [name for _, name in SYNSETS]

  def _scan(self, root: Path) -> builder.Scan:
    lists_dir = readers.require_dir(root / "ShapeNet-55", "ShapeNet-55 split list", self.name)
    pc_dir = readers.require_dir(root / "shapenet_pc", "shapenet_pc point-cloud", self.name)
    img_root = readers.require_dir(root / "rendered_images", "ULIP rendered_images", self.name)
    labels = {synset: i for i, (synset, _) in enumerate(SYNSETS)}
    present_pcs = {n for n in os.listdir(pc_dir) if n.endswith(".npy")}
    present_imgs = {n for n in os.listdir(img_root)}
    objects: list[builder.ObjectSpec] = []
    skips: list[Skip] = []
    seen: dict[str, str] = {}
    for split in ("train", "test"):
      list_file = readers.require_file(lists_dir / f"{split}.txt", f"split list {split}.txt",
                                  self.name)
      for lineno, line in enumerate(readers.read_lines(list_file), 1):
        m = _LINE.fullmatch(line)
        if not m:
          raise readers.UnreadableFileError(
              list_file, f"line {lineno}: {line!r} is not <synset>-<model_id>.npy")
        synset = m.group(1)
        oid = f"{synset}-{m.group(2)}"
        where = f"{list_file}:{lineno}"
        if oid in seen:
          skips.append(Skip("duplicate", oid, f"already listed in {seen[oid]}", where))
          continue
        seen[oid] = where
        if synset not in labels:
          skips.append(Skip("unknown_class", oid,
                               f"synset {synset} is not one of the 55 ShapeNet-55 classes",
                               where))
          continue
        pc_path = pc_dir / f"{oid}.npy"
        has_pc = f"{oid}.npy" in present_pcs
        folder = img_root / oid
        images = (readers.list_images(folder, re.compile(re.escape(oid) + r"_r_\d+\.png"))
                  if oid in present_imgs else [])
        objects.append(builder.ObjectSpec(
            oid, labels[synset], points=pc_path if has_pc else None,
            points_file=os.fspath(pc_path), image_paths=images, split=split,
            points_hint=os.fspath(pc_path),
            images_hint=os.fspath(folder / f"{oid}_r_<deg>.png")))
    listed = set(seen)
    ignored = {
        "point clouds not listed in train.txt/test.txt":
            sum(1 for n in present_pcs if n[:-4] not in listed),
        "render folders not listed in train.txt/test.txt":
            sum(1 for n in present_imgs if n not in listed),
    }
    return builder.Scan(class_names=[name for _, name in SYNSETS], objects=objects, skips=skips,
                   ignored=ignored, metadata={"synsets": [s for s, _ in SYNSETS]})

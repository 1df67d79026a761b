"""TFDS builder `shapenet_render`: CrossPoint's ShapeNetRender (13 ShapeNet categories).

Point clouds `ShapeNet/<synset>/<model_id>.ply` (binary or ASCII PLY, `vertex` x/y/z) are
paired by `<synset>/<model_id>` with the 3D-R2N2 renders
`ShapeNetRendering/<synset>/<model_id>/rendering/*.png` (24 views, 137x137 RGBA).

Labels: the index of the synset in the sorted list `SYNSETS` (13 classes, 0 = 02691156
airplane ... 12 = 04530566 watercraft). Synset folders outside the 13 are ignored (counted
in the summary). There is no official split, so one is made per class [ours]: the sorted
ids of class `c` permuted by `default_rng([split_seed, 0, c])`, the first
`round(test_fraction * n)` (default 20%) held out; of those, the first
`round(query_fraction * n_test)` after a `default_rng([split_seed, 1, c])` permutation of
the sorted held-out ids are queries (default 20%), the rest the retrieval database.
So by default train / query / database = 80% / 4% / 16% of each class.

Object ids are `<synset>/<model_id>`. See `cmah_jax.datasets.real` for reading,
subsampling, resizing and skip rules, and docs/real_datasets.md for the full recipe.
"""
from __future__ import annotations

import os
from pathlib import Path

from cmah_jax.datasets.real import builder, readers

# (synset, name), sorted by synset: label = position [3D-R2N2 / CrossPoint categories].
SYNSETS = (
    ("02691156", "airplane"), ("02828884", "bench"), ("02933112", "cabinet"),
    ("02958343", "car"), ("03001627", "chair"), ("03211117", "display"),
    ("03636649", "lamp"), ("03691459", "loudspeaker"), ("04090263", "rifle"),
    ("04256520", "sofa"), ("04379243", "table"), ("04401088", "telephone"),
    ("04530566", "watercraft"),
)


class ShapenetRender(builder.RealDatasetBuilder):
  """ShapeNetRender (CrossPoint): ShapeNet PLY point clouds + 3D-R2N2 renders, 13 classes."""

  name = "shapenet_render"
  BUILDER_CONFIGS = builder.standard_configs("the 24 3D-R2N2 renders")
  DESCRIPTION = __doc__.split("\n\n")[0]
  HOMEPAGE = "https://github.com/MohamedAfham/CrossPoint"
  CITATION = ("@inproceedings{afham2022crosspoint, title={CrossPoint: Self-Supervised "
              "Cross-Modal Contrastive Learning for 3D Point Cloud Understanding}, "
              "author={Afham, Mohamed and others}, booktitle={CVPR}, year={2022}}")
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download CrossPoint's ShapeNetRender data (https://github.com/MohamedAfham/CrossPoint,
"Download data": the Google Drive folder linked there, files shapenet.tar.gz and
shapenet_render.tar.gz, see its data/download_data.sh) and extract both into manual_dir.
The renders are 3D-R2N2's ShapeNetRendering.tgz (http://3d-r2n2.stanford.edu/).
Expected layout (nothing is downloaded automatically):

  <manual_dir>/
    ShapeNet/<synset>/<model_id>.ply                       point clouds (PLY, x/y/z)
    ShapeNetRendering/<synset>/<model_id>/rendering/*.png  views (00.png ... 23.png)

with the 13 synsets 02691156 02828884 02933112 02958343 03001627 03211117 03636649
03691459 04090263 04256520 04379243 04401088 04530566. Then:

  python -m cmah_jax.datasets.prepare --dataset=shapenet_render --manual_dir=<manual_dir> \\
      --data_dir=<data_dir> [--config=default|compact|small|tiny]
"""

  def _class_names_for_info(self):
    return [name for _, name in SYNSETS]

  def _split_rule_text(self) -> str:
    cfg = self.builder_config
    return (f"holdout: per class, sorted ids permuted by default_rng([{cfg.split_seed}, 0, "
            f"label]); first round({cfg.test_fraction} * n) (in [1, n-1]) held out; "
            + super()._split_rule_text())

  def _scan(self, root: Path) -> builder.Scan:
    pts_root = readers.require_dir(root / "ShapeNet", "ShapeNet point-cloud", self.name)
    img_root = readers.require_dir(root / "ShapeNetRendering", "ShapeNetRendering image",
                              self.name)
    labels = {synset: i for i, (synset, _) in enumerate(SYNSETS)}
    objects: dict[str, builder.ObjectSpec] = {}
    ignored = {}

    def ignore(what, n=1):
      ignored[what] = ignored.get(what, 0) + n

    for synset in sorted(os.listdir(pts_root)):
      folder = pts_root / synset
      if not folder.is_dir():
        continue
      plys = sorted(n for n in os.listdir(folder) if n.lower().endswith(".ply"))
      if synset not in labels:
        ignore("point clouds in synset folders outside the 13 classes", len(plys))
        continue
      for n in plys:
        oid = f"{synset}/{n[:-4]}"
        path = folder / n
        objects[oid] = builder.ObjectSpec(
            oid, labels[synset], points=path, points_file=os.fspath(path),
            images_hint=os.fspath(img_root / synset / n[:-4] / "rendering"))

    for synset in sorted(os.listdir(img_root)):
      folder = img_root / synset
      if not folder.is_dir():
        continue
      models = sorted(n for n in os.listdir(folder) if (folder / n).is_dir())
      if synset not in labels:
        ignore("render folders in synset folders outside the 13 classes", len(models))
        continue
      for model in models:
        oid = f"{synset}/{model}"
        images = readers.list_images(folder / model / "rendering")
        if oid in objects:
          objects[oid].image_paths = images
        elif images:
          objects[oid] = builder.ObjectSpec(
              oid, labels[synset], points=None, image_paths=images,
              points_hint=os.fspath(pts_root / synset / f"{model}.ply"))
        else:
          ignore("render folders with neither images nor a point cloud")
    return builder.Scan(class_names=[name for _, name in SYNSETS],
                   objects=[objects[k] for k in sorted(objects)], ignored=ignored,
                   metadata={"synsets": [s for s, _ in SYNSETS]})

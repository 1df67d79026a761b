"""Paper scale on ModelNet40 (PointNet HDF5) with multi-view renders.

  python -m cmah_jax.datasets.prepare --dataset=modelnet40 --manual_dir=DIR --data_dir=work/data
  python main.py --config=configs/modelnet40.py:data_dir=work/data --workdir=work/modelnet40

Arguments: bits, variant, supervised, runlocal, steps, batch, seed, data_dir, manual_dir,
dataset_config, epochs (counted over the prepared train split), paper (the paper-faithful
objective, see configs/default.py). See docs/real_datasets.md for the layout.
"""
from configs import paper_scale


def get_config(arg=None):
  return paper_scale.get_paper_config("modelnet40", arg)

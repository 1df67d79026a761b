"""Paper scale on ShapeNetRender (CrossPoint layout), 13 categories.

  python -m cmah_jax.datasets.prepare --dataset=shapenet_render --manual_dir=DIR --data_dir=work/data
  python main.py --config=configs/shapenet_render.py:data_dir=work/data --workdir=work/shapenet_render

Arguments: bits, variant, supervised, runlocal, steps, batch, seed, data_dir, manual_dir,
dataset_config, epochs (counted over the prepared train split), paper (the paper-faithful
objective, see configs/default.py). See docs/real_datasets.md for the layout.
"""
from configs import paper_scale


def get_config(arg=None):
  return paper_scale.get_paper_config("shapenet_render", arg)

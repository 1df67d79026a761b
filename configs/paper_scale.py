"""Shared paper-scale settings for the real datasets (imported by their config files).

`base` model (Point-MAE point tower, ViT-S/16 images at 224), batch 128, 300 epochs,
AdamW lr 1e-3 x batch/128, weight decay 0.05, cosine with 10 warm-up epochs [Point-MAE].

The schedule is sized from the dataset the run actually trains on: `total_steps` is left
None and the trainer sets it to `epochs` x (train examples // batch) of the prepared train
split (`cmah_jax.config.resolve_schedule`); the warm-up is 1/30 of the run (10 of 300
epochs) and periodic evaluation every 1/12 of it (25 of 300 epochs). `steps=N` replaces
the epoch count with N steps and keeps warm-up and evaluation in the same proportions.

Retrieval follows the UCCH protocol (docs/PAPER.md): the whole test side (query and
database splits) queries the training set as database (`eval.database_split="train"`);
pass `--config.eval.database_split=database` to match the query split against the smaller
held-out database split.
"""
from cmah_jax.config_args import parse_config_arg
from configs import default

ARGS = dict(default.ARGS, variant="base", manual_dir=None, epochs=300)
ARG_TYPES = dict(default.ARG_TYPES, manual_dir=str, epochs=float)


def get_paper_config(dataset: str, arg=None):
  """Config for `dataset` at paper scale (arguments: see `ARGS`)."""
  a = parse_config_arg(arg, ARGS, ARG_TYPES)
  c = default.make_config(dict(a, runlocal=False, steps=None, batch=None))
  c.dataset.name = dataset
  c.dataset.config = a["dataset_config"] or ("tiny" if a["runlocal"] else "default")
  c.dataset.manual_dir = a["manual_dir"]
  c.input.batch_size = 128                      # [Point-MAE]
  c.input.eval_batch_size = 256                 # [ours]
  c.total_steps = None                          # from epochs and the prepared train split
  c.epochs = float(a["epochs"])                 # 300 epochs [Point-MAE]
  c.optim.warmup_steps = None                   # 1/30 of the run: 10 of 300 epochs [Point-MAE]
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.eval_every_steps = None                     # 1/12 of the run: every 25 of 300 epochs
  c.eval.database_split = "train"               # database = training set [UCCH protocol]
  if a["runlocal"]:
    c.model.variant = "tiny"
  c = default.apply_common_args(c, a)
  if c.total_steps is not None:                 # steps=N or runlocal: a length in steps
    c.epochs = None
  return c

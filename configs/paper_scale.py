"""Shared paper-scale settings for the real datasets (imported by their config files).

`base` model (Point-MAE point tower, ViT-S/16 images at 224), batch 128, 300 epochs,
AdamW lr 1e-3 x batch/128, weight decay 0.05, cosine with 10 warm-up epochs [Point-MAE].
"""
from cmah_jax.config_args import parse_config_arg
from configs import default

ARGS = dict(default.ARGS, variant="base", manual_dir=None, epochs=300)


def get_paper_config(dataset: str, train_examples: int, arg=None):
  """Config for `dataset` at paper scale; `train_examples` sizes the epoch-based schedule."""
  a = parse_config_arg(arg, ARGS)
  c = default.make_config(dict(a, runlocal=False, steps=None, batch=None))
  c.dataset.name = dataset
  c.dataset.config = a["dataset_config"] or "default"
  c.dataset.manual_dir = a["manual_dir"]
  c.input.batch_size = 128                      # [Point-MAE]
  c.input.eval_batch_size = 256                 # [ours]
  steps_per_epoch = max(train_examples // c.input.batch_size, 1)
  c.total_steps = a["epochs"] * steps_per_epoch  # 300 epochs [Point-MAE]
  c.optim.warmup_steps = 10 * steps_per_epoch   # 10 epochs [Point-MAE]
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.eval_every_steps = 25 * steps_per_epoch
  if a["runlocal"]:
    c.model.variant = "tiny"
  return default.apply_common_args(c, a)

"""Default: the embedded `synthetic_shapes` dataset with the CPU-sized `small` model.

  python main.py --config=configs/default.py --workdir=work/default
  python main.py --config=configs/default.py:bits=32,runlocal --workdir=work/smoke

Arguments (`:key=value,...`): bits, variant, supervised, runlocal (a smoke run in seconds),
steps, batch, seed, data_dir, dataset_config.
"""
import ml_collections

from cmah_jax.config_args import parse_config_arg

_ARGS = dict(bits=64, variant="small", supervised=False, runlocal=False, steps=None,
             batch=None, seed=0, data_dir="work/data", dataset_config=None)


def get_config(arg=None):
  a = parse_config_arg(arg, _ARGS)
  c = ml_collections.ConfigDict()
  c.seed = a["seed"]

  c.dataset = ml_collections.ConfigDict(dict(
      name="synthetic_shapes",
      config=a["dataset_config"] or ("tiny" if a["runlocal"] else "default"),
      data_dir=a["data_dir"],
      manual_dir=None,
  ))

  c.input = ml_collections.ConfigDict(dict(
      batch_size=64,                 # global batch [ours: CPU-sized; paper scale 128]
      eval_batch_size=128,
      num_points=None,               # None: the model variant's (small: 512) [ours]
      image_size=None,               # None: the model variant's (small: 64) [ours]
      eval_view=0,                   # fixed view for retrieval [ours]
      num_train_views=None,          # None: all stored views [ours]
      point_scale=(2 / 3, 3 / 2),    # per-axis scale U[2/3, 3/2] [Point-MAE]
      point_translate=0.2,           # translate U[-0.2, 0.2] [Point-MAE]
      hflip=True,                    # [ours]
      color_jitter=0.4,              # [ours]
      prefetch=2,
  ))

  c.model = ml_collections.ConfigDict(dict(
      variant=a["variant"],
      bits=a["bits"],                # K [paper: 16/32/64/128]
      overrides=ml_collections.ConfigDict(),  # any ModelConfig field, e.g. depth=6
  ))

  c.loss = ml_collections.ConfigDict(dict(
      temperature=0.07,              # [ours; ConMH uses 0.5]
      pairs="full_full,masked_masked",  # [paper: full-full and masked pairs; choice ours]
      lambda_r=1.0,                  # [ours; ConMH weights 1:1]
      norm_pix_loss=True,            # [MAE]
      supervised=a["supervised"],    # SupCon-style upper bound using labels [ours]
  ))

  c.optim = ml_collections.ConfigDict(dict(
      base_learning_rate=1e-3,       # [Point-MAE], scaled by batch / 128
      learning_rate_base_batch=128,  # [Point-MAE]
      weight_decay=0.05,             # [Point-MAE]
      b1=0.9, b2=0.999,              # AdamW defaults [Point-MAE]
      warmup_steps=100,              # [ours: CPU budget; Point-MAE warms up 10 epochs]
      min_learning_rate_ratio=0.01,  # cosine floor [ours]
      grad_clip_norm=1.0,            # [ours]
  ))

  c.total_steps = 2400               # [ours: ~17 min on 2 CPU cores; the 30-minute budget]
  c.log_every_steps = 25
  c.checkpoint_every_steps = 400
  c.keep_checkpoints = 2
  c.eval_every_steps = 0             # 0: evaluate at the end only
  c.eval = ml_collections.ConfigDict(dict(
      precision_ks=(1, 10, 50, 100),
      num_examples_in_figure=4,      # query rows in retrieval_examples.png
  ))
  c.init_from = None                 # warm start: a checkpoint directory (params only)

  if a["runlocal"]:
    c.model.variant = a["variant"] if a["variant"] != "small" else "tiny"
  return apply_common_args(c, a)


def apply_common_args(c, a):
  """`runlocal` (a smoke run of a few steps at tiny batch), `steps` and `batch`."""
  if a["runlocal"]:
    c.input.batch_size = 8
    c.input.eval_batch_size = 16
    c.total_steps = 6
    c.optim.warmup_steps = 2
    c.log_every_steps = 2
    c.checkpoint_every_steps = 3
    c.eval_every_steps = 0
  if a["steps"] is not None:
    c.total_steps = int(a["steps"])
  if a["batch"] is not None:
    c.input.batch_size = int(a["batch"])
  return c

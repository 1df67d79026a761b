"""Default: the embedded `synthetic_shapes` dataset with the CPU-sized `small` model.

  python main.py --config=configs/default.py --workdir=work/default
  python main.py --config=configs/default.py:bits=32,runlocal --workdir=work/smoke

Arguments (`:key=value,...`): bits, variant, supervised, runlocal (a smoke run in seconds),
steps, batch, seed, data_dir, dataset_config, paper (the paper-faithful objective and image
tokens: temperature 0.07, an L_2D weight of 1, L_c's full-full and masked-masked pairs and
MAE's linear patch embedding, instead of our validated 0.2, 0.1, masked point view against
the full image and hMLP stem; the point scaling is per-axis, Point-MAE's, in both).
Every field and its default is in `cmah_jax/config.py`; this file sets only what the
CPU-sized setting changes.
"""
from cmah_jax.config import (LINEAR_PATCHES, PAPER_OBJECTIVE, PAPER_PAIRS, apply_overrides,
                             base_config)
from cmah_jax.config_args import parse_config_arg

ARGS = dict(bits=64, variant="small", supervised=False, runlocal=False, steps=None,
            batch=None, seed=0, data_dir="work/data", dataset_config=None, paper=False)
ARG_TYPES = dict(steps=int, batch=int, dataset_config=str)  # where the default is None


def get_config(arg=None):
  return make_config(parse_config_arg(arg, ARGS, ARG_TYPES))


def make_config(a: dict):
  """The config for parsed arguments `a` (keys of `ARGS`)."""
  c = base_config()
  c.seed = a["seed"]
  c.dataset.name = "synthetic_shapes"
  c.dataset.config = a["dataset_config"] or ("tiny" if a["runlocal"] else "default")
  c.dataset.data_dir = a["data_dir"]
  c.input.batch_size = 64            # [ours: CPU-sized; paper scale 128]
  c.input.eval_batch_size = 128      # [ours]
  c.model.variant = a["variant"]
  c.model.bits = a["bits"]           # K [paper: 16/32/64/128]
  c.loss.supervised = a["supervised"]  # SupCon-style upper bound using labels [ours]
  c.total_steps = 2400               # [ours: ~12 min on 2 CPU cores]
  if a["paper"]:
    apply_paper_objective(c)
  if a["runlocal"] and a["variant"] == "small":
    c.model.variant = "tiny"
  return apply_common_args(c, a)


def apply_paper_objective(c):
  """The paper-faithful objective, augmentation and image tokens where our defaults
  depart from them (`cmah_jax.config.PAPER_OBJECTIVE`: temperature 0.07, per-axis point
  scaling, L_2D weight 1; `PAPER_PAIRS`: L_c over the full-full and masked-masked pairs;
  `LINEAR_PATCHES`: MAE's linear patch embedding)."""
  apply_overrides(c, {**PAPER_OBJECTIVE, **PAPER_PAIRS, **LINEAR_PATCHES}.items())
  return c


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

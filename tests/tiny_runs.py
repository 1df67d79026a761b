"""A training config sized for tests: the `runlocal` smoke setting of `configs/default.py`."""
from cmah_jax.config import apply_overrides
from configs import default


def tiny_config(data_dir: str, steps: int = 6, **changes):
  """`runlocal` on `data_dir` for `steps` steps, logging every step; `changes` are dotted
  config keys: `tiny_config(d, **{"loss.lambda_r": 0})`."""
  c = default.get_config(f"runlocal,steps={steps},data_dir={data_dir}")
  c.log_every_steps = 1
  apply_overrides(c, changes.items())
  return c

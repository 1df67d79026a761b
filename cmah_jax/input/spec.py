"""`InputSpec`: the resolved `config.input`, the only argument the input pipeline reads."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """Input pipeline settings (defaults and their sources).

  `num_points` / `image_size` None means "the model variant's"; `cmah_jax.config.resolve`
  fills them in, and the pipeline refuses an unresolved spec.
  """
  batch_size: int = 128                # global batch [Point-MAE]
  eval_batch_size: int = 256           # [ours]
  num_points: int | None = None        # None: the model variant's [ours]
  image_size: int | None = None        # None: the model variant's [ours]
  eval_view: int = 0                   # fixed view for retrieval [ours]
  num_train_views: int | None = None   # None: all stored views [ours]
  point_scale: tuple[float, float] = (2 / 3, 3 / 2)  # per-axis scale [Point-MAE]
  point_scale_isotropic: bool = False  # False: per-axis factors [Point-MAE; the carve
                                       # chose them back at 4,800 steps, round 16b]; True:
                                       # one factor for all three axes, so the cloud keeps
                                       # the proportions its paired image shows [ours: the
                                       # default of rounds 1-16, docs/tuning.md]
  point_translate: float = 0.2         # translate U[-0.2, 0.2] [Point-MAE]
  hflip: bool = True                   # [ours]
  color_jitter: float = 0.4            # [ours]
  random_crop_min_scale: float = 1.0   # < 1: a random crop of [this, 1] of the image's area,
                                       # aspect ratio in [3/4, 4/3], bilinearly resized
                                       # back; 1.0: off [ours, after SimCLR / CLIP's
                                       # RandomResizedCrop]; not kept: 0.5
                                       # weakened the image tower (README, round 7)
  prefetch: int = 2                    # batches prepared ahead in a thread [ours]
  second_view: bool = False            # also a second rendered view of each train object
                                       # ("images_second"); set by `config.resolve` from
                                       # `loss.pairs` ("image_views"), not by hand [ours,
                                       # after CMC and MSN; round 21, not kept]

  def __post_init__(self):
    object.__setattr__(self, "point_scale", tuple(float(x) for x in self.point_scale))

  def validate(self) -> "InputSpec":
    """Raise `ValueError` naming the `config.input` field; return self."""
    for key in ("num_points", "image_size"):
      if getattr(self, key) is None:
        raise ValueError(f"config.input.{key} is unresolved (None); build the spec with "
                         "cmah_jax.config.resolve(config) or set it explicitly.")
    for key in ("batch_size", "eval_batch_size", "num_points", "image_size"):
      if int(getattr(self, key)) <= 0:
        raise ValueError(f"config.input.{key}={getattr(self, key)} must be positive.")
    lo, hi = self.point_scale
    if not 0 < lo <= hi:
      raise ValueError(f"config.input.point_scale={self.point_scale} needs 0 < low <= high.")
    if not 0.0 < float(self.random_crop_min_scale) <= 1.0:
      raise ValueError(f"config.input.random_crop_min_scale={self.random_crop_min_scale} "
                       "must be in (0, 1] (1: no crop).")
    if self.point_translate < 0 or self.color_jitter < 0 or self.prefetch < 0:
      raise ValueError("config.input.point_translate, color_jitter and prefetch must be >= 0.")
    return self


def check_spec(spec) -> InputSpec:
  """`spec` itself if it is a valid `InputSpec`, else a `TypeError` saying how to make one."""
  if not isinstance(spec, InputSpec):
    raise TypeError(f"expected a cmah_jax.input.InputSpec, got {type(spec).__name__}; "
                    "resolve a config with cmah_jax.config.resolve(config).input or build "
                    "InputSpec(batch_size=..., num_points=..., image_size=...)")
  return spec.validate()

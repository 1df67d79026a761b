"""Named model sizes (`tiny`, `small`, `base`), all in one place, and `resolve_config`.

Every architecture hyper-parameter is a field of `ModelConfig`; a variant is a set of
values for those fields and any field can be overridden by name
(`build("small", 64, key, depth=6)`). Defaults carry their source tag.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# What the fusion decoders' cross-attention may read (`ModelConfig.fusion_context`).
FUSION_CONTEXTS = ("tokens", "code", "tokens_and_code")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes of the CMAH network (hashable: it is a static field of the Linen module).

  Point tower: `num_points` -> `num_groups` FPS centres x `group_size` kNN neighbours ->
  mini-PointNet with hidden widths `pointnet_dims = (c1, c2, c3)`
  (3 -> c1 -> c2, max-pool, concat -> 2*c2, -> c3 -> width, max-pool) -> tokens.
  Image tower: `image_size`^2 images cut into `patch_size`^2 patches -> tokens.
  Both towers: pre-norm transformer of `depth` blocks, `width` channels, `num_heads`
  heads; fusion decoders of `decoder_depth` blocks at the same width.
  """
  bits: int = 64                       # code length K [paper: 16/32/64/128]
  # -- point tokens [Point-MAE]
  num_points: int = 1024               # [Point-MAE]
  num_groups: int = 64                 # [Point-MAE]
  group_size: int = 32                 # [Point-MAE]
  pointnet_dims: tuple[int, int, int] = (128, 256, 512)  # [Point-MAE]
  point_pos_hidden: int = 128          # centre position MLP 3 -> 128 -> width [Point-MAE]
  point_mask_ratio: float = 0.6        # [Point-MAE]
  point_qkv_bias: bool = False         # [Point-MAE]
  # -- image tokens [MAE]
  image_size: int = 224                # [MAE]
  patch_size: int = 16                 # [MAE]
  image_mask_ratio: float = 0.75       # [MAE]
  image_qkv_bias: bool = True          # [MAE]
  image_stem_dims: tuple[int, ...] = ()  # (): MAE's linear patch embedding; (c_1, ..., c_m):
                                       # the hMLP stem, blocks of patch_size / 2^m pixels
                                       # then m patch-local 2x2 merges (`ImageTokenizer`)
                                       # [ours; after Touvron et al. ECCV 2022]
  # -- transformers
  width: int = 384                     # [Point-MAE]; ViT-S [MAE]
  depth: int = 12                      # [Point-MAE]; ViT-S [MAE]
  num_heads: int = 6                   # [Point-MAE]; ViT-S [MAE]
  mlp_ratio: float = 4.0               # [Point-MAE]
  drop_path: float = 0.1               # max rate, linear over blocks [Point-MAE]
  dropout: float = 0.0                 # attention / MLP dropout [Point-MAE]
  decoder_depth: int = 4               # [Point-MAE]
  decoder_num_heads: int = 6           # [Point-MAE]
  fusion_cross_attention: bool = True  # decoders attend to the other modality [paper: MFB];
                                       # False: each decoder sees its own modality only
                                       # (an ablation) [ours]
  fusion_context: str = "tokens"       # what that cross-attention reads: "tokens", the
                                       # other modality's encoded visible tokens [paper:
                                       # MFB]; "code", one token, a linear map of the other
                                       # modality's full-pass continuous code h, so the
                                       # reconstruction reaches the codes [ours, round 26;
                                       # after DBRC, Hu et al. ACM MM 2017];
                                       # "tokens_and_code", the tokens and that token beside
                                       # them [ours, round 27]
  embed_dim: int = 0                   # > 0: each tower also projects its pooled feature
                                       # to an embed_dim-wide embedding z for an auxiliary
                                       # contrastive loss (loss.embed_weight), so the
                                       # encoders learn from a wider space than K bits;
                                       # 0: none (the paper's network) [ours]
  num_prototypes: int = 0              # > 0: P learned prototypes [P, K] for the swapped
                                       # prototype loss (loss.prototype_weight); 0: none
                                       # (the paper's network) [ours, after SwAV]
  masked_views: int = 1                # independent masked views of each object per
                                       # training step; view 0 feeds the fusion decoders,
                                       # every view joins the masked pairs of L_c that read
                                       # it (averaged): masked-masked, masked points
                                       # against the full image; 1: the paper's single
                                       # view [ours, after multi-crop, Caron et al.
                                       # NeurIPS 2020]
  extra_image_views: bool = True       # with masked_views > 1, views 1 .. V-1 of the
                                       # image tower too; False: the point tower's only
                                       # (`config.resolve` sets it where no pair of L_c
                                       # reads the image's extra views) [ours, round 19]
  hash_sharpness_end: float = 1.0      # beta of h = tanh(beta LayerNorm(.)) at the last
                                       # training step, reached by HashNet's continuation
                                       # (`hash_head.hash_sharpness`) and kept at
                                       # evaluation; 1: none (the paper's tanh) [ours,
                                       # after HashNet, Cao et al. ICCV 2017]
  dtype: str = "float32"               # compute dtype; params stay float32 [ours]

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def uses_dropout_rng(self) -> bool:
    """True when `train=True` needs `rngs={"dropout": key}`."""
    return self.drop_path > 0 or self.dropout > 0

  def validate(self) -> "ModelConfig":
    """Raise `ValueError` naming the field on inconsistent sizes; return self."""
    def need(ok, msg):
      if not ok:
        raise ValueError(f"model config: {msg}")
    need(isinstance(self.bits, int) and not isinstance(self.bits, bool) and self.bits > 0,
         f"bits must be a positive int, got {self.bits!r}")
    for name in ("num_points", "num_groups", "group_size", "point_pos_hidden", "image_size",
                 "patch_size", "width", "depth", "num_heads", "decoder_depth",
                 "decoder_num_heads"):
      v = getattr(self, name)
      need(isinstance(v, int) and not isinstance(v, bool) and v > 0,
           f"{name} must be a positive int, got {v!r}")
    need(len(self.pointnet_dims) == 3 and all(int(d) > 0 for d in self.pointnet_dims),
         f"pointnet_dims must be 3 positive ints, got {self.pointnet_dims!r}")
    need(self.num_groups <= self.num_points,
         f"num_groups={self.num_groups} > num_points={self.num_points}")
    need(self.group_size <= self.num_points,
         f"group_size={self.group_size} > num_points={self.num_points}")
    need(self.image_size % self.patch_size == 0,
         f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
    need(all(isinstance(d, int) and not isinstance(d, bool) and d > 0
             for d in self.image_stem_dims),
         f"image_stem_dims must be positive ints, got {self.image_stem_dims!r}")
    need(self.patch_size % 2 ** len(self.image_stem_dims) == 0,
         f"image_stem_dims={self.image_stem_dims!r} merges 2x2 blocks "
         f"{len(self.image_stem_dims)} times, so patch_size must be a multiple of "
         f"{2 ** len(self.image_stem_dims)}; it is {self.patch_size}")
    need(self.width % self.num_heads == 0,
         f"width={self.width} is not divisible by num_heads={self.num_heads}")
    need(self.width % self.decoder_num_heads == 0,
         f"width={self.width} is not divisible by decoder_num_heads={self.decoder_num_heads}")
    need(self.width % 4 == 0, f"width={self.width} must be a multiple of 4 (2D sin-cos)")
    for name in ("point_mask_ratio", "image_mask_ratio"):
      r = getattr(self, name)
      need(0.0 < r < 1.0, f"{name} must be in (0, 1), got {r!r}")
    for name, tokens in (("point_mask_ratio", self.num_groups),
                         ("image_mask_ratio", self.num_patches)):
      m = int(getattr(self, name) * tokens)
      need(0 < m < tokens, f"{name}={getattr(self, name)} masks {m} of {tokens} tokens; "
           "need at least one masked and one visible token")
    for name in ("drop_path", "dropout"):
      r = getattr(self, name)
      need(0.0 <= r < 1.0, f"{name} must be in [0, 1), got {r!r}")
    for name, least in (("embed_dim", 0), ("num_prototypes", 0), ("masked_views", 1)):
      v = getattr(self, name)
      need(isinstance(v, int) and not isinstance(v, bool) and v >= least,
           f"{name} must be an int >= {least}, got {v!r}")
    need(isinstance(self.extra_image_views, bool),
         f"extra_image_views must be True or False, got {self.extra_image_views!r}")
    need(self.fusion_context in FUSION_CONTEXTS,
         f"fusion_context must be one of {', '.join(map(repr, FUSION_CONTEXTS))}, "
         f"got {self.fusion_context!r}")
    need(self.fusion_context == "tokens" or self.fusion_cross_attention,
         f"fusion_context={self.fusion_context!r} is read by the decoders' cross-attention, "
         "which fusion_cross_attention=False removes")
    need(self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
    need(isinstance(self.hash_sharpness_end, (int, float))
         and not isinstance(self.hash_sharpness_end, bool) and self.hash_sharpness_end >= 1,
         f"hash_sharpness_end must be a number >= 1, got {self.hash_sharpness_end!r}")
    need(self.dtype in ("float32", "bfloat16", "float16"),
         f"dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
    return self


VARIANTS: dict[str, dict[str, Any]] = {
    # Unit tests: a forward+backward in well under a second on CPU [ours].
    "tiny": dict(
        num_points=256, num_groups=16, group_size=16, pointnet_dims=(16, 32, 64),
        point_pos_hidden=32, image_size=32, patch_size=8, width=64, depth=2, num_heads=4,
        decoder_depth=1, decoder_num_heads=4, drop_path=0.0),
    # CPU default for the embedded dataset: 0.28 GFLOP per example for forward+backward of
    # a train step at 64 bits (benchmarks/bench_model.py; budget ~0.3). Narrow
    # mini-PointNet: at Point-MAE widths (128/256/512) it alone would cost more than the
    # whole budget. 512 points, 32 groups x 16 cover each point about once [ours]. The
    # image tokens come from the hMLP stem (4x4-pixel blocks -> 32 channels, then 2x2 of
    # them -> the token) instead of MAE's one linear map of 192 pixels to 64 channels,
    # which made the weaker tower's first layer narrow and linear: kept in round 25 on the
    # validation carve, at a train step's cost within its noise (docs/tuning.md;
    # `cmah_jax.config.LINEAR_PATCHES` restores MAE's) [ours; after Touvron et al. ECCV 2022].
    "small": dict(
        num_points=512, num_groups=32, group_size=16, pointnet_dims=(32, 64, 64),
        point_pos_hidden=64, image_size=64, patch_size=8, width=64, depth=4, num_heads=4,
        decoder_depth=1, decoder_num_heads=4, drop_path=0.05, image_stem_dims=(32,)),
    # Paper scale: Point-MAE point tower, ViT-S/16 image tower at 224 [Point-MAE, MAE].
    "base": dict(),
}


def field_names() -> list[str]:
  return [f.name for f in dataclasses.fields(ModelConfig)]


def resolve_config(variant: str, bits: int, overrides: Mapping[str, Any] | None = None
                   ) -> ModelConfig:
  """`ModelConfig` for a named variant with `bits` and `overrides` applied and validated.

  Raises:
    ValueError: unknown variant, unknown override key (the valid ones are listed), or an
      inconsistent size.
  """
  if variant not in VARIANTS:
    raise ValueError(f"unknown model variant {variant!r}; choose one of {sorted(VARIANTS)}")
  if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0:
    raise ValueError(f"bits must be a positive int (e.g. 16, 32, 64, 128), got {bits!r}")
  overrides = dict(overrides or {})
  valid = field_names()
  unknown = sorted(k for k in overrides if k not in valid or k == "bits")
  if unknown:
    raise ValueError(
        f"unknown model override(s) {unknown} for variant {variant!r}; valid keys: "
        f"{sorted(k for k in valid if k != 'bits')} (code length is the `bits` argument)")
  values = dict(VARIANTS[variant])
  values.update(overrides)
  for name in ("pointnet_dims", "image_stem_dims"):
    if name in values:
      values[name] = tuple(int(d) for d in values[name])
  return ModelConfig(bits=bits, **values).validate()

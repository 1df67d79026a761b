"""The CMAH network: two towers with hash heads, plus cross-modal fusion decoders.

`CMAH(config)` is a Flax Linen module; everything it does is a pure function of
`(variables, inputs, mask_key, dropout key)`:

- `apply(variables, images=None, points=None, train=False)`: either modality alone or
  both; no masking, no dropout, no batch statistics (all norms are LayerNorm), so an
  object's code is the same whether it is encoded alone or inside a batch.
- `apply(variables, images, points, train=True, mask_key=k, rngs={"dropout": d})`
  (the `"dropout"` stream only when `drop_path > 0` or `dropout > 0`): a full (unmasked)
  encoder pass gives `h` and codes; a masked pass (visible tokens only) gives `h_masked`;
  the fusion decoders reconstruct the masked point groups and image patches, their
  cross-attention reading the other modality's visible tokens or, with
  `config.fusion_context="code"`, one token made from its full-pass code h (with
  `"tokens_and_code"`, both: that token beside the tokens).
- `hash_sharpness=beta` (either call): the hash heads compute `tanh(beta * LayerNorm(.))`;
  the train step passes HashNet's schedule when `config.hash_sharpness_end > 1`, other
  calls get that end value (the codes, signs of h, do not depend on beta).

Output keys (per modality present; shapes for batch B, code length K):
  "point/h", "image/h"        [B, K] float32 tanh (continuous codes, full pass)
  "point/code", "image/code"  [B, K] float32 +-1 (straight-through sign of h)
and in training with both modalities also
  "point/h_masked", "image/h_masked"  [B, K] float32 (masked pass)
  with `config.masked_views = V > 1` also
  "point/h_masked_extra", "image/h_masked_extra"  [V - 1, B, K] float32: masked views
                                      1 .. V-1 (independent masks; encoders and hash
                                      heads only, no decoders); the image's only with
                                      `config.extra_image_views`
  "point/pred", "point/target"        [B, G_mask, k, 3] float32 (target: re-centred
                                      masked neighbourhoods)
  "image/pred", "image/target"        [B, T_mask, p*p*3] float32 (target: masked patches
                                      of the normalised input image; per-patch
                                      normalisation is applied in the loss)
  "point/mask", "image/mask"          [B, G] / [B, T] bool, True = masked.
  "point/pooled", "image/pooled"      [B, C] float32: the full pass's pooled encoder
                                      features (what the hash heads read).
  with `config.embed_dim = E > 0` also
  "point/z", "image/z", "point/z_masked", "image/z_masked"  [B, E] float32: linear
                                      embeddings of the full / masked pooled features.
  with `config.num_prototypes = P > 0` also
  "prototypes"                        [P, K] float32: the learned prototypes (a parameter,
                                      for `losses.swapped_prototype_loss`).
  with `second_images` (train=True, both modalities) also
  "image/h_second"                    [B, K] float32: continuous codes of a second view
                                      of each object, masked as view 0's image would be
                                      under `fold_in(mask_key, 2)` (its visible tokens
                                      only; the pair `image_views` of L_c); with
                                      `embed_dim` also "image/z_second" [B, E].
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmah_jax.models.encoders import TokenEncoder, global_pool
from cmah_jax.models.fusion import FusionDecoder
from cmah_jax.models.hash_head import HashHead
from cmah_jax.models.image_tokenizer import ImageTokenizer
from cmah_jax.models.point_tokenizer import PointTokenizer, PositionMLP
from cmah_jax.models.transformer import StackSpec, dense
from cmah_jax.models.variants import ModelConfig, resolve_config
from cmah_jax.ops.image import normalize_images
from cmah_jax.ops.masking import random_mask, take_tokens


class CMAH(nn.Module):
  """Contrastive masked auto-encoder hashing network [paper]; sizes in `config`."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    dt = jnp.dtype(cfg.dtype)

    def stack(depth, num_heads, qkv_bias):
      return StackSpec(depth, num_heads, cfg.mlp_ratio, qkv_bias, cfg.drop_path,
                       cfg.dropout, dt)

    # Point tower [Point-MAE]: positions added at every block, encoder and decoder.
    self.point_tokenizer = PointTokenizer(cfg.num_groups, cfg.group_size, cfg.pointnet_dims,
                                          cfg.point_pos_hidden, cfg.width, dt)
    self.point_encoder = TokenEncoder(stack(cfg.depth, cfg.num_heads, cfg.point_qkv_bias),
                                      pos_every_block=True)
    self.point_hash = HashHead(cfg.bits, dt)
    if cfg.embed_dim:  # [ours] auxiliary wide embedding (training only)
      self.point_embed = dense(cfg.embed_dim, dt, "point_embed")
      self.image_embed = dense(cfg.embed_dim, dt, "image_embed")
    if cfg.num_prototypes:  # [ours, after SwAV] shared by both towers (training only)
      self.prototypes = self.param("prototypes", nn.initializers.normal(1.0),
                                   (cfg.num_prototypes, cfg.bits), jnp.float32)
    self.point_decoder_pos = PositionMLP(cfg.point_pos_hidden, cfg.width, dt)
    self.point_decoder = FusionDecoder(
        stack(cfg.decoder_depth, cfg.decoder_num_heads, cfg.point_qkv_bias),
        out_dim=3 * cfg.group_size, pos_every_block=True,
        cross_attention=cfg.fusion_cross_attention)
    if cfg.fusion_context != "tokens":  # [ours, rounds 26-27] decoders read the other's code
      self.point_code_context = dense(cfg.width, dt, "point_code_context")
      self.image_code_context = dense(cfg.width, dt, "image_code_context")
    # Image tower [MAE]: fixed sin-cos positions added once, encoder and decoder.
    self.image_tokenizer = ImageTokenizer(cfg.patch_size, cfg.width, dt, cfg.image_stem_dims)
    self.image_encoder = TokenEncoder(stack(cfg.depth, cfg.num_heads, cfg.image_qkv_bias),
                                      pos_every_block=False)
    self.image_hash = HashHead(cfg.bits, dt)
    self.image_decoder = FusionDecoder(
        stack(cfg.decoder_depth, cfg.decoder_num_heads, cfg.image_qkv_bias),
        out_dim=cfg.patch_size ** 2 * 3, pos_every_block=False,
        cross_attention=cfg.fusion_cross_attention)

  # -- input checks --------------------------------------------------------------------
  def _check_images(self, images) -> jax.Array:
    s = self.config.image_size
    if images.ndim != 4 or tuple(images.shape[1:]) != (s, s, 3):
      raise ValueError(f"CMAH: images must have shape [B, {s}, {s}, 3] (model.config.image_size="
                       f"{s}), got {tuple(images.shape)}")
    return normalize_images(images)

  def _check_points(self, points) -> jax.Array:
    n = self.config.num_points
    if points.ndim != 3 or tuple(points.shape[1:]) != (n, 3):
      raise ValueError(f"CMAH: points must have shape [B, {n}, 3] (model.config.num_points={n}), "
                       f"got {tuple(points.shape)}")
    return jnp.asarray(points, jnp.float32)

  # -- forward -------------------------------------------------------------------------
  def __call__(self, images=None, points=None, *, train: bool, mask_key=None,
               hash_sharpness=None, second_images=None):
    """images: `[B, S, S, 3]` float32 normalised (or uint8, normalised here);
    points: `[B, N, 3]` float32; hash_sharpness: beta of the hash heads' tanh (a float or
    float32 `[]`; the train step passes HashNet's schedule), None: the trained network's
    `config.hash_sharpness_end`; second_images: None, or (train=True, both modalities) a
    second view of each object, like `images`, masked and encoded with view 0's masked
    pass (one encoder call over `[2B, T_keep]`). See the module docstring for the
    outputs."""
    cfg = self.config
    beta = cfg.hash_sharpness_end if hash_sharpness is None else hash_sharpness
    if images is None and points is None:
      raise ValueError("CMAH: pass images, points, or both")
    if train and cfg.uses_dropout_rng and not self.has_rng("dropout"):
      raise ValueError(
          f"CMAH: train=True with drop_path={cfg.drop_path}, dropout={cfg.dropout} needs "
          "rngs={'dropout': key} in apply()")
    det = not train
    out = {}

    if points is not None:
      points = self._check_points(points)
      p_tok, p_pos, neighborhoods, centers = self.point_tokenizer(points)
      p_pooled = global_pool(self.point_encoder(p_tok, p_pos, det))
      h, code = self.point_hash(p_pooled, beta)
      out["point/h"], out["point/code"] = h, code
    if second_images is not None and not (train and images is not None
                                          and points is not None):
      raise ValueError("CMAH: second_images is for training (train=True) with images and "
                       "points")
    if images is not None:
      images = self._check_images(images)
      i_tok, i_pos, patches = self.image_tokenizer(images)
      i_pooled = global_pool(self.image_encoder(i_tok, i_pos, det))
      h, code = self.image_hash(i_pooled, beta)
      out["image/h"], out["image/code"] = h, code

    if not (train and images is not None and points is not None):
      return out

    # -- masked pass and fusion decoders (training with both modalities) ----------------
    if mask_key is None:
      raise ValueError("CMAH: train=True with both modalities needs mask_key")
    b = points.shape[0]
    if images.shape[0] != b:
      raise ValueError(f"CMAH: images and points batch sizes differ: {images.shape[0]} vs {b}")
    key_p, key_i = jax.random.split(mask_key)
    keep_p, masked_p, mask_p = random_mask(key_p, b, cfg.num_groups, cfg.point_mask_ratio)
    keep_i, masked_i, mask_i = random_mask(key_i, b, cfg.num_patches, cfg.image_mask_ratio)
    # Tokenisers are per-token functions (no batch statistics), so the visible tokens of
    # the masked pass are a gather of the full pass's tokens.
    i_pos = jnp.broadcast_to(i_pos, i_tok.shape[:2] + i_pos.shape[2:])
    p_vis = self.point_encoder(take_tokens(p_tok, keep_p), take_tokens(p_pos, keep_p), det)
    i_vis_tok, i_vis_pos = take_tokens(i_tok, keep_i), take_tokens(i_pos, keep_i)
    if second_images is not None:
      # The second view is masked as view 0's image would be under `fold_in(mask_key, 2)`,
      # and encoded in the same call as view 0's visible tokens ([2B, T_keep]).
      second_images = self._check_images(second_images)
      if second_images.shape[0] != b:
        raise ValueError(f"CMAH: second_images batch {second_images.shape[0]} differs from "
                         f"images batch {b}")
      second_tok = self.image_tokenizer(second_images)[0]
      keep_2 = random_mask(jax.random.split(jax.random.fold_in(mask_key, 2))[1], b,
                           cfg.num_patches, cfg.image_mask_ratio)[0]
      i_vis_tok = jnp.concatenate([i_vis_tok, take_tokens(second_tok, keep_2)], axis=0)
      i_vis_pos = jnp.concatenate([i_vis_pos, take_tokens(i_pos, keep_2)], axis=0)
    i_vis = self.image_encoder(i_vis_tok, i_vis_pos, det)
    if second_images is not None:
      second_pooled, i_vis = global_pool(i_vis[b:]), i_vis[:b]
      out["image/h_second"], _ = self.image_hash(second_pooled, beta)
    p_vis_pooled, i_vis_pooled = global_pool(p_vis), global_pool(i_vis)
    out["point/h_masked"], _ = self.point_hash(p_vis_pooled, beta)
    out["image/h_masked"], _ = self.image_hash(i_vis_pooled, beta)
    if cfg.masked_views > 1:
      p_extra, i_extra = self._extra_masked_views(mask_key, p_tok, p_pos, i_tok, i_pos, det,
                                                  beta)
      out["point/h_masked_extra"] = p_extra
      if i_extra is not None:
        out["image/h_masked_extra"] = i_extra
    if cfg.embed_dim:
      out["point/z"] = self.point_embed(p_pooled).astype(jnp.float32)
      out["image/z"] = self.image_embed(i_pooled).astype(jnp.float32)
      out["point/z_masked"] = self.point_embed(p_vis_pooled).astype(jnp.float32)
      out["image/z_masked"] = self.image_embed(i_vis_pooled).astype(jnp.float32)
      if second_images is not None:
        out["image/z_second"] = self.image_embed(second_pooled).astype(jnp.float32)

    if cfg.num_prototypes:
      out["prototypes"] = self.prototypes
    # What each decoder's cross-attention reads: the other modality's visible tokens
    # [paper], one token made from its full-pass code h [ours, round 26], or both, the
    # code's token after the tokens [ours, round 27].
    point_context, image_context = i_vis, p_vis
    if cfg.fusion_context != "tokens":
      image_code = self.image_code_context(out["image/h"])[:, None, :]
      point_code = self.point_code_context(out["point/h"])[:, None, :]
      if cfg.fusion_context == "code":
        point_context, image_context = image_code, point_code
      else:
        point_context = jnp.concatenate([i_vis, image_code], axis=1)
        image_context = jnp.concatenate([p_vis, point_code], axis=1)
    dec_pos = self.point_decoder_pos(centers)
    p_pred = self.point_decoder(p_vis, take_tokens(dec_pos, keep_p),
                                take_tokens(dec_pos, masked_p), point_context, det)
    out["point/pred"] = p_pred.reshape(b, masked_p.shape[1], cfg.group_size, 3)
    out["point/target"] = take_tokens(neighborhoods, masked_p)
    out["image/pred"] = self.image_decoder(i_vis, take_tokens(i_pos, keep_i),
                                           take_tokens(i_pos, masked_i), image_context, det)
    out["image/target"] = take_tokens(patches, masked_i)
    out["point/mask"], out["image/mask"] = mask_p, mask_i
    out["point/pooled"], out["image/pooled"] = p_pooled, i_pooled
    return out

  def _extra_masked_views(self, mask_key, p_tok, p_pos, i_tok, i_pos, det, beta):
    """Codes of masked views 1 .. V-1 (`config.masked_views = V`), for L_c only.

    View v >= 1 masks with `split(split(fold_in(mask_key, 1), V - 1)[v - 1])` (points,
    images), as view 0 masks with `split(mask_key)`; all views go through each encoder in
    one call, stacked on the batch axis. Without `config.extra_image_views` the image
    tower's views are neither masked nor encoded (the point views keep their masks).

    Returns:
      (point h, image h): `[V - 1, B, K]` float32 each; image h None without
      `config.extra_image_views`.
    """
    cfg = self.config
    b, views = p_tok.shape[0], cfg.masked_views - 1
    # Per view, (point key, image key), as view 0's `split(mask_key)`.
    keys = [jax.random.split(k) for k in jax.random.split(jax.random.fold_in(mask_key, 1),
                                                           views)]
    cat = functools.partial(jnp.concatenate, axis=0)

    def encode(tower_keys, tok, pos, num_tokens, mask_ratio, encoder, head):
      kept = [random_mask(k, b, num_tokens, mask_ratio)[0] for k in tower_keys]
      pooled = global_pool(encoder(cat([take_tokens(tok, keep) for keep in kept]),
                                   cat([take_tokens(pos, keep) for keep in kept]), det))
      return head(pooled, beta)[0].reshape(views, b, -1).astype(jnp.float32)

    p_h = encode([k[0] for k in keys], p_tok, p_pos, cfg.num_groups, cfg.point_mask_ratio,
                 self.point_encoder, self.point_hash)
    if not cfg.extra_image_views:
      return p_h, None
    return p_h, encode([k[1] for k in keys], i_tok, i_pos, cfg.num_patches,
                       cfg.image_mask_ratio, self.image_encoder, self.image_hash)


# -- construction ------------------------------------------------------------------------
def _dummy_inputs(model: CMAH, batch_size: int = 1):
  cfg = model.config
  return (jnp.zeros((batch_size, cfg.image_size, cfg.image_size, 3), jnp.float32),
          jnp.zeros((batch_size, cfg.num_points, 3), jnp.float32))


def init_variables(model: CMAH, key: jax.Array) -> dict:
  """All variables (`{"params": ...}`; nothing else) of `model`, from `key` alone.

  Initialises through a training call with both modalities so that the decoders exist.
  Call under `jax.jit` (as `build` does) or `jax.eval_shape` (`abstract_variables`).
  """
  k_params, k_dropout, k_mask = jax.random.split(key, 3)
  images, points = _dummy_inputs(model)
  return model.init({"params": k_params, "dropout": k_dropout}, images=images,
                    points=points, train=True, mask_key=k_mask)


def abstract_variables(model: CMAH) -> dict:
  """`jax.ShapeDtypeStruct` tree of `model`'s variables, without computing them."""
  return jax.eval_shape(functools.partial(init_variables, model), jax.random.key(0))


def build(variant: str, bits: int, key: jax.Array, **overrides):
  """Build a named variant (see `variants.VARIANTS`) with code length `bits`.

  Args:
    variant: "tiny" | "small" | "base".
    bits: code length K, a positive int.
    key: PRNG key for the parameters.
    **overrides: any `ModelConfig` field (e.g. `depth=6`); an unknown key raises
      `ValueError` listing the valid ones.
  Returns:
    (model, variables): the `CMAH` module and its `{"params": ...}`.
  """
  model = CMAH(resolve_config(variant, bits, overrides))
  variables = jax.jit(functools.partial(init_variables, model))(key)
  return model, variables


# -- pure encoding helpers ---------------------------------------------------------------
def hash_features(model: CMAH, variables, images=None, points=None) -> dict:
  """Continuous codes at inference: `{"image/h": [B, K], "point/h": [B, K]}` float32 for
  the modalities given (`train=False`: no masking, no dropout)."""
  out = model.apply(variables, images=images, points=points, train=False)
  return {k: v for k, v in out.items() if k.endswith("/h")}


def encode_images(model: CMAH, variables, images) -> jax.Array:
  """Hash codes of images.

  Args:
    images: `[B, S, S, 3]` uint8, or float32 already normalised with
      `ops.image.normalize_images`; S = `model.image_size`.
  Returns:
    `[B, K]` float32 in {-1, +1}.

  Under jit bind the model statically, e.g.
  `enc = jax.jit(functools.partial(encode_images, model)); enc(variables, images)`.
  """
  return model.apply(variables, images=images, train=False)["image/code"]


def encode_points(model: CMAH, variables, points) -> jax.Array:
  """Hash codes of point clouds.

  Args:
    points: `[B, N, 3]` float32 (unit-sphere normalised), N = `model.config.num_points`.
  Returns:
    `[B, K]` float32 in {-1, +1}.

  Under jit: `jax.jit(functools.partial(encode_points, model))(variables, points)`.
  """
  return model.apply(variables, points=points, train=False)["point/code"]

"""CMAH model tests on the `tiny` variant: purity, masking, gradient reach, batch
independence, layers against NumPy references, and the `base` parameter count by hand."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import losses
from cmah_jax.models import (CMAH, abstract_variables, build, encode_images,
                             encode_points, hash_features, init_variables, resolve_config)
from cmah_jax.models.encoders import global_pool
from cmah_jax.models.hash_head import HashHead
from cmah_jax.models.image_tokenizer import ImageTokenizer, sincos_2d
from cmah_jax.models.point_tokenizer import MiniPointNet
from cmah_jax.models.transformer import (Block, CrossAttention, DropPath, SelfAttention,
                                         StackSpec)
from cmah_jax.ops.image import normalize_images, patchify, unpatchify
from cmah_jax.ops.pointcloud import group_points
from cmah_jax.sharding import data_sharding, make_mesh, replicated

BITS = 16
B = 4


def _inputs(model, b=B, seed=0):
  rng = np.random.default_rng(seed)
  pts = rng.normal(size=(b, model.config.num_points, 3))
  pts /= np.linalg.norm(pts, axis=-1, keepdims=True)
  imgs = rng.normal(size=(b, model.config.image_size, model.config.image_size, 3))
  return jnp.asarray(imgs, jnp.float32), jnp.asarray(pts, jnp.float32)


@pytest.fixture(scope="module")
def tiny():
  model, variables = build("tiny", BITS, jax.random.key(0))

  @jax.jit
  def fwd(variables, images, points, mask_key, dropout_key):
    return model.apply(variables, images, points, train=True, mask_key=mask_key,
                       rngs={"dropout": dropout_key})

  images, points = _inputs(model)
  return model, variables, fwd, images, points


def _equal_trees(a, b):
  """Same structure (no leaf more or less) and the same values."""
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# -- purity and masking ------------------------------------------------------------------
def test_outputs_and_shapes(tiny):
  model, variables, fwd, images, points = tiny
  out = fwd(variables, images, points, jax.random.key(1), jax.random.key(2))
  cfg = model.config
  gm, tm = int(0.6 * cfg.num_groups), int(0.75 * cfg.num_patches)
  p = model.config.patch_size
  want = {"point/h": (B, BITS), "point/code": (B, BITS), "image/h": (B, BITS),
          "image/code": (B, BITS), "point/h_masked": (B, BITS), "image/h_masked": (B, BITS),
          "point/pred": (B, gm, cfg.group_size, 3), "point/target": (B, gm, cfg.group_size, 3),
          "image/pred": (B, tm, p * p * 3), "image/target": (B, tm, p * p * 3),
          "point/mask": (B, cfg.num_groups), "image/mask": (B, cfg.num_patches),
          "point/pooled": (B, cfg.width), "image/pooled": (B, cfg.width)}
  assert {k: v.shape for k, v in out.items()} == want
  for t in ("point", "image"):
    h, code = np.asarray(out[f"{t}/h"]), np.asarray(out[f"{t}/code"])
    assert np.all(np.abs(h) < 1)
    np.testing.assert_array_equal(code, np.where(h >= 0, 1.0, -1.0))
  np.testing.assert_array_equal(np.sum(out["point/mask"], 1), gm)
  np.testing.assert_array_equal(np.sum(out["image/mask"], 1), tm)
  # "pooled" is what the hash head reads: h = tanh(LayerNorm(pooled W + b)), in NumPy.
  from cmah_jax.models.transformer import LN_EPS  # pylint: disable=import-outside-toplevel
  for t in ("point", "image"):
    head = variables["params"][f"{t}_hash"]
    x = np.asarray(out[f"{t}/pooled"], np.float64) @ np.asarray(head["proj"]["kernel"])
    x = x + np.asarray(head["proj"]["bias"])
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + LN_EPS)
    h = np.tanh(x * np.asarray(head["norm"]["scale"]) + np.asarray(head["norm"]["bias"]))
    np.testing.assert_allclose(out[f"{t}/h"], h, atol=1e-5)


def test_deterministic_given_params_and_keys(tiny):
  model, variables, fwd, images, points = tiny
  a = fwd(variables, images, points, jax.random.key(1), jax.random.key(2))
  b = fwd(variables, images, points, jax.random.key(1), jax.random.key(2))
  assert _equal_trees(a, b)
  _, variables2 = build("tiny", BITS, jax.random.key(0))
  assert _equal_trees(variables, variables2)
  _, variables3 = build("tiny", BITS, jax.random.key(7))
  assert not _equal_trees(variables, variables3)


def test_mask_key_changes_masks(tiny):
  model, variables, fwd, images, points = tiny
  a = fwd(variables, images, points, jax.random.key(1), jax.random.key(2))
  b = fwd(variables, images, points, jax.random.key(3), jax.random.key(2))
  assert not np.array_equal(a["point/mask"], b["point/mask"])
  assert not np.array_equal(a["image/mask"], b["image/mask"])
  assert not np.allclose(a["image/pred"], b["image/pred"])
  # The full pass does not depend on the mask.
  np.testing.assert_array_equal(a["point/h"], b["point/h"])
  np.testing.assert_array_equal(a["image/h"], b["image/h"])


def test_no_other_randomness(tiny):
  """tiny has drop_path = dropout = 0: the dropout key must not matter."""
  model, variables, fwd, images, points = tiny
  assert not model.config.uses_dropout_rng
  a = fwd(variables, images, points, jax.random.key(1), jax.random.key(2))
  b = fwd(variables, images, points, jax.random.key(1), jax.random.key(99))
  assert _equal_trees(a, b)


def test_drop_path_uses_dropout_rng_only_in_training():
  model = CMAH(resolve_config("tiny", BITS, dict(drop_path=0.5)))
  variables = jax.jit(functools.partial(init_variables, model))(jax.random.key(0))
  images, points = _inputs(model, b=8)

  @jax.jit
  def fwd(dropout_key):
    return model.apply(variables, images, points, train=True, mask_key=jax.random.key(1),
                       rngs={"dropout": dropout_key})

  a, b, a2 = fwd(jax.random.key(2)), fwd(jax.random.key(3)), fwd(jax.random.key(2))
  assert not np.allclose(a["point/h"], b["point/h"])
  assert _equal_trees(a, a2)
  with pytest.raises(ValueError, match="rngs"):
    model.apply(variables, images, points, train=True, mask_key=jax.random.key(1))
  # Inference needs no key and ignores drop-path.
  ev = jax.jit(lambda v, i, p: model.apply(v, i, p, train=False))
  assert _equal_trees(ev(variables, images, points), ev(variables, images, points))


def test_eval_has_no_masking_and_matches_full_pass(tiny):
  model, variables, fwd, images, points = tiny
  ev = jax.jit(lambda v, i, p: model.apply(v, i, p, train=False))(variables, images, points)
  assert set(ev) == {"point/h", "point/code", "image/h", "image/code"}
  tr = fwd(variables, images, points, jax.random.key(1), jax.random.key(2))
  for k in ev:
    np.testing.assert_allclose(ev[k], tr[k], atol=1e-5)
  with pytest.raises(ValueError, match="mask_key"):
    model.apply(variables, images, points, train=True)


def test_single_modality_calls(tiny):
  model, variables, _, images, points = tiny
  only_p = model.apply(variables, points=points, train=False)
  only_i = model.apply(variables, images=images, train=False)
  assert set(only_p) == {"point/h", "point/code"} and set(only_i) == {"image/h", "image/code"}
  both = model.apply(variables, images, points, train=False)
  np.testing.assert_allclose(only_p["point/h"], both["point/h"], atol=1e-6)
  np.testing.assert_allclose(only_i["image/h"], both["image/h"], atol=1e-6)
  feats = hash_features(model, variables, points=points)
  np.testing.assert_allclose(feats["point/h"], both["point/h"], atol=1e-6)


def test_code_identical_alone_or_in_batch(tiny):
  model, variables, _, images, points = tiny
  enc_p = jax.jit(functools.partial(encode_points, model))
  enc_i = jax.jit(functools.partial(encode_images, model))
  batch_p, batch_i = enc_p(variables, points), enc_i(variables, images)
  assert set(np.unique(batch_p)) <= {-1.0, 1.0} and batch_p.shape == (B, BITS)
  for j in range(B):
    np.testing.assert_array_equal(enc_p(variables, points[j:j + 1])[0], batch_p[j])
    np.testing.assert_array_equal(enc_i(variables, images[j:j + 1])[0], batch_i[j])
  # Shuffling the batch shuffles the codes.
  perm = np.array([2, 0, 3, 1])
  np.testing.assert_array_equal(enc_p(variables, points[perm]), batch_p[perm])


def test_codes_same_with_batch_sharded_over_4_devices(tiny):
  model, variables, _, images, points = tiny
  mesh = make_mesh(jax.devices()[:4])
  enc_p = jax.jit(functools.partial(encode_points, model))
  sharded = enc_p(jax.device_put(variables, replicated(mesh)),
                  jax.device_put(points, data_sharding(mesh)))
  assert len(sharded.sharding.device_set) == 4
  np.testing.assert_array_equal(sharded, enc_p(variables, points))


def test_encode_images_accepts_uint8(tiny):
  model, variables, _, _, _ = tiny
  u8 = np.random.default_rng(3).integers(0, 256, (2, model.config.image_size, model.config.image_size, 3),
                                          dtype=np.uint8)
  a = encode_images(model, variables, jnp.asarray(u8))
  b = encode_images(model, variables, normalize_images(jnp.asarray(u8)))
  np.testing.assert_array_equal(a, b)


def test_targets_are_the_masked_inputs(tiny):
  model, variables, fwd, images, points = tiny
  out = fwd(variables, images, points, jax.random.key(5), jax.random.key(2))
  pm, im = np.asarray(out["point/mask"]), np.asarray(out["image/mask"])
  patches = np.asarray(patchify(images, model.config.patch_size))
  nbhd, _ = group_points(points, model.config.num_groups, model.config.group_size)
  for j in range(B):
    np.testing.assert_array_equal(out["image/target"][j], patches[j][im[j]])
    np.testing.assert_array_equal(out["point/target"][j], np.asarray(nbhd)[j][pm[j]])


def test_masked_pass_sees_visible_tokens_only(tiny):
  """Scrambling the masked image patches changes the full-pass code but nothing the
  masked pass or the decoders compute (except the image target)."""
  model, variables, fwd, images, points = tiny
  mk, dk = jax.random.key(5), jax.random.key(2)
  out = fwd(variables, images, points, mk, dk)
  patches = np.asarray(patchify(images, model.config.patch_size))
  noise = np.random.default_rng(0).normal(size=patches.shape).astype(np.float32) * 3
  mask = np.asarray(out["image/mask"])[..., None]
  s = model.config.image_size
  scrambled = unpatchify(jnp.asarray(np.where(mask, noise, patches)), model.config.patch_size, s, s)
  out2 = fwd(variables, scrambled, points, mk, dk)
  for k in ("image/h_masked", "point/h_masked", "point/pred", "image/pred"):
    np.testing.assert_allclose(out2[k], out[k], atol=1e-6, err_msg=k)
  assert not np.allclose(out2["image/h"], out["image/h"], atol=1e-4)
  assert not np.allclose(out2["image/target"], out["image/target"])


@pytest.mark.parametrize("fusion_context", ["tokens", "code", "tokens_and_code"])
def test_masked_pass_and_decoders_against_per_example_boolean_gathers(fusion_context):
  """The masked pass and both decoders, recomputed one example at a time from the full
  pass's tokens with NumPy boolean indexing on the returned masks: each encoder sees its
  visible tokens at their own positions, each decoder the visible tokens' positions and
  then the masked ones', and as context the other modality's visible tokens ("tokens"),
  the linear map of its full-pass h as one token ("code", round 26), or those tokens and
  then that token ("tokens_and_code", round 27). (Scrambling inputs, above, cannot see a
  position gathered from the wrong row.)"""
  model, variables = build("tiny", BITS, jax.random.key(0), drop_path=0.0,
                           fusion_context=fusion_context)
  images, points = _inputs(model, b=3, seed=4)
  out = model.apply(variables, images, points, train=True, mask_key=jax.random.key(7))
  mask_i, mask_p = np.asarray(out["image/mask"]), np.asarray(out["point/mask"])
  assert mask_i.any(axis=1).all() and (~mask_i).any(axis=1).all()

  def context(m, vis, other, b):
    """What a decoder reads of the other modality (`other` "image" or "point") for row b."""
    if fusion_context == "tokens":
      return vis
    code = getattr(m, f"{other}_code_context")(out[f"{other}/h"][b:b + 1])[:, None, :]
    return code if fusion_context == "code" else jnp.concatenate([vis, code], axis=1)

  def reference(m, images, points):
    i_tok, i_pos, _ = m.image_tokenizer(images)
    p_tok, p_pos, _, centers = m.point_tokenizer(points)
    i_pos = jnp.broadcast_to(i_pos, i_tok.shape)
    dec_pos = m.point_decoder_pos(centers)
    rows = []
    for b in range(images.shape[0]):
      vi, vp = ~mask_i[b], ~mask_p[b]  # visible
      i_vis = m.image_encoder(i_tok[b:b + 1, vi], i_pos[b:b + 1, vi], True)
      p_vis = m.point_encoder(p_tok[b:b + 1, vp], p_pos[b:b + 1, vp], True)
      rows.append({
          "image/h_masked": m.image_hash(global_pool(i_vis))[0],
          "point/h_masked": m.point_hash(global_pool(p_vis))[0],
          "image/pred": m.image_decoder(i_vis, i_pos[b:b + 1, vi],
                                        i_pos[b:b + 1, mask_i[b]],
                                        context(m, p_vis, "point", b), True),
          "point/pred": m.point_decoder(p_vis, dec_pos[b:b + 1, vp],
                                        dec_pos[b:b + 1, mask_p[b]],
                                        context(m, i_vis, "image", b), True),
      })
    return {k: jnp.concatenate([r[k] for r in rows]) for k in rows[0]}

  want = model.apply(variables, images, points, method=reference)
  for k, v in want.items():
    got = np.asarray(out[k]).reshape(v.shape)
    np.testing.assert_allclose(got, v, atol=2e-5, err_msg=k)


# -- gradient reach ----------------------------------------------------------------------
TOP_LEVEL = {"point_tokenizer", "point_encoder", "point_hash", "point_decoder_pos",
             "point_decoder", "image_tokenizer", "image_encoder", "image_hash",
             "image_decoder"}
TOWERS = {"point_tokenizer", "point_encoder", "image_tokenizer", "image_encoder"}
REACH = {
    "contrastive_full": TOWERS | {"point_hash", "image_hash"},
    "contrastive_masked": TOWERS | {"point_hash", "image_hash"},
    # Cross-attention: each reconstruction reaches the other modality's encoder too.
    "point_recon": TOWERS | {"point_decoder_pos", "point_decoder"},
    "image_recon": TOWERS | {"image_decoder"},
}


def _term_jacobian(model, params, images, points):
  """The Jacobian of the four terms of `REACH` (in its order) w.r.t. `params`: each leaf
  `[4, *leaf.shape]`."""
  def terms(params):
    out = model.apply({"params": params}, images, points, train=True,
                      mask_key=jax.random.key(1))
    return jnp.stack([
        losses.contrastive_loss(out["point/h"], out["image/h"], 0.07),
        losses.contrastive_loss(out["point/h_masked"], out["image/h_masked"], 0.07),
        losses.point_reconstruction_loss(out["point/pred"], out["point/target"]),
        losses.image_reconstruction_loss(out["image/pred"], out["image/target"]),
    ])
  return jax.jit(jax.jacrev(terms))(params)


def test_each_loss_term_reaches_exactly_its_params(tiny):
  model, variables, _, images, points = tiny
  params = variables["params"]
  assert set(params) == TOP_LEVEL

  jac = _term_jacobian(model, params, images, points)
  for row, (name, reach) in enumerate(REACH.items()):
    for path, g in jax.tree_util.tree_leaves_with_path(jac):
      top = path[0].key
      norm = float(jnp.max(jnp.abs(g[row])))
      where = f"{name}: {jax.tree_util.keystr(path)}"
      if top in reach:
        assert norm > 0, f"{where} should receive gradient"
      else:
        assert norm == 0, f"{where} should receive none, got {norm}"


# With `fusion_context="code"` (round 26) each decoder reads the other modality's code:
# the reconstruction terms reach that modality's hash head and the linear map of its code.
CODE_CONTEXT_REACH = {
    **REACH,
    "point_recon": REACH["point_recon"] | {"image_hash", "image_code_context"},
    "image_recon": REACH["image_recon"] | {"point_hash", "point_code_context"},
}
# ... and cross-attention over one key gives that key's value whatever the query: the
# queries' projection and norm of every fusion block then get no gradient from any term.
INERT_UNDER_ONE_KEY = ("cross_attn']['q']", "['norm_q']")


@pytest.mark.parametrize("fusion_context, inert_leaves", [
    ("code", 4 * (3 + 4)),  # q kernel and bias (qkv_bias: image decoder only), norm_q's two
    ("tokens_and_code", 0),  # more than one key: every query projection is live
])
def test_each_loss_term_reaches_exactly_its_params_under_the_code_context(fusion_context,
                                                                          inert_leaves):
  """Leaf by leaf, as `test_each_loss_term_reaches_exactly_its_params`: with
  `fusion_context="code"` (round 26) or `"tokens_and_code"` (round 27) L_3D reaches the
  image hash head and L_2D the point hash head (through the code each decoder reads), and
  every leaf of a reached group gets gradient except, under "code", the fusion blocks'
  query projections and norms, which get none from any term."""
  model, variables = build("tiny", BITS, jax.random.key(0), fusion_context=fusion_context)
  images, points = _inputs(model)
  params = variables["params"]
  assert set(params) == TOP_LEVEL | {"point_code_context", "image_code_context"}

  jac = _term_jacobian(model, params, images, points)
  inert = 0
  for row, (name, reach) in enumerate(CODE_CONTEXT_REACH.items()):
    for path, g in jax.tree_util.tree_leaves_with_path(jac):
      where = f"{name}: {jax.tree_util.keystr(path)}"
      norm = float(jnp.max(jnp.abs(g[row])))
      if inert_leaves and any(part in jax.tree_util.keystr(path)
                              for part in INERT_UNDER_ONE_KEY):
        assert path[0].key in ("point_decoder", "image_decoder"), where
        assert norm == 0, f"{where} should receive none under one key, got {norm}"
        inert += 1
      elif path[0].key in reach:
        assert norm > 0, f"{where} should receive gradient"
      else:
        assert norm == 0, f"{where} should receive none, got {norm}"
  assert inert == inert_leaves


def test_code_context_is_the_only_route_from_the_other_modality():
  """With `fusion_context="code"` the point decoder sees the images only through the linear
  map of the image code: zero that map's kernel and the point predictions no longer change
  when only the images do; with it, they do (and the predictions differ from the token
  context's, the same parameters elsewhere)."""
  key = jax.random.key(0)
  rng = np.random.default_rng(8)
  model, variables = build("tiny", 16, key, fusion_context="code", drop_path=0.0)
  c = model.config
  pts = jnp.asarray(rng.normal(size=(2, c.num_points, 3)).astype(np.float32))
  imgs = [jnp.asarray(rng.normal(size=(2, c.image_size, c.image_size, 3)).astype(np.float32))
          for _ in range(2)]

  def preds(variables):
    return [model.apply(variables, images=im, points=pts, train=True,
                        mask_key=jax.random.key(1))["point/pred"] for im in imgs]

  live = preds(variables)
  assert not np.allclose(live[0], live[1], atol=1e-6)
  # The token each decoder reads is the linear map of the other modality's full-pass h.
  out, state = model.apply(variables, images=imgs[0], points=pts, train=True,
                           mask_key=jax.random.key(1), capture_intermediates=True,
                           mutable=["intermediates"])
  for reader, code in (("image_code_context", "image/h"), ("point_code_context", "point/h")):
    dense = variables["params"][reader]
    np.testing.assert_allclose(
        state["intermediates"][reader]["__call__"][0],
        np.asarray(out[code]) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]),
        rtol=1e-5, atol=1e-6)
  params = dict(variables["params"])
  params["image_code_context"] = dict(params["image_code_context"],
                                      kernel=jnp.zeros_like(
                                          params["image_code_context"]["kernel"]))
  cut = preds({"params": params})
  np.testing.assert_array_equal(cut[0], cut[1])
  tokens_model, _ = build("tiny", 16, key, drop_path=0.0)
  shared = {k: v for k, v in variables["params"].items() if not k.endswith("code_context")}
  by_tokens = tokens_model.apply({"params": shared}, images=imgs[0], points=pts, train=True,
                                 mask_key=jax.random.key(1))
  assert not np.allclose(by_tokens["point/pred"], live[0], atol=1e-6)
  np.testing.assert_array_equal(by_tokens["point/h"], model.apply(
      variables, images=imgs[0], points=pts, train=True,
      mask_key=jax.random.key(1))["point/h"])


def test_fusion_context_is_validated():
  with pytest.raises(ValueError, match="fusion_context must be one of 'tokens', 'code', "
                     "'tokens_and_code', got 'pixels'"):
    resolve_config("tiny", 16, dict(fusion_context="pixels"))
  for context in ("code", "tokens_and_code"):
    with pytest.raises(ValueError, match=f"fusion_context='{context}' is read by the decoders' "
                       "cross-attention, which fusion_cross_attention=False removes"):
      resolve_config("tiny", 16, dict(fusion_context=context, fusion_cross_attention=False))


# -- layers against references -----------------------------------------------------------
def _np_layer_norm(x, scale, bias, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def test_hash_head_vs_numpy():
  head = HashHead(8)
  pooled = np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)
  variables = head.init(jax.random.key(0), pooled)
  p = jax.tree.map(np.asarray, variables["params"])
  h, code = head.apply(variables, pooled)
  want = np.tanh(_np_layer_norm(pooled @ p["proj"]["kernel"] + p["proj"]["bias"],
                                p["norm"]["scale"], p["norm"]["bias"]))
  np.testing.assert_allclose(h, want, atol=1e-5)
  np.testing.assert_array_equal(code, np.where(want >= 0, 1, -1))
  # sign(0) -> +1: a zero feature gives h = LN bias = 0 exactly.
  _, code0 = head.apply(variables, np.zeros((1, 12), np.float32))
  np.testing.assert_array_equal(code0, np.ones((1, 8)))


def test_self_attention_vs_numpy():
  heads, c, t = 2, 8, 5
  attn = SelfAttention(heads, qkv_bias=True)
  x = np.random.default_rng(1).normal(size=(2, t, c)).astype(np.float32)
  variables = attn.init(jax.random.key(0), x, True)
  p = jax.tree.map(np.asarray, variables["params"])
  got = attn.apply(variables, x, True)
  qkv = x @ p["qkv"]["kernel"] + p["qkv"]["bias"]
  q, k, v = np.split(qkv, 3, axis=-1)
  d = c // heads
  out = np.zeros_like(x)
  for b in range(2):
    for hd in range(heads):
      sl = slice(hd * d, (hd + 1) * d)
      s = q[b][:, sl] @ k[b][:, sl].T / np.sqrt(d)
      w = np.exp(s - s.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      out[b][:, sl] = w @ v[b][:, sl]
  want = out @ p["proj"]["kernel"] + p["proj"]["bias"]
  np.testing.assert_allclose(got, want, atol=1e-5)


def _np_attention(q, k, v, heads):
  """Multi-head softmax attention, one batch element: q [Tq, C], k/v [Tk, C]."""
  d = q.shape[-1] // heads
  out = np.zeros((q.shape[0], q.shape[1]), np.float64)
  for hd in range(heads):
    sl = slice(hd * d, (hd + 1) * d)
    s = q[:, sl] @ k[:, sl].T / np.sqrt(d)
    w = np.exp(s - s.max(-1, keepdims=True))
    out[:, sl] = (w / w.sum(-1, keepdims=True)) @ v[:, sl]
  return out


def test_cross_attention_vs_numpy():
  heads, c = 2, 8
  attn = CrossAttention(heads, qkv_bias=True)
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 3, c)).astype(np.float32)
  ctx = rng.normal(size=(2, 5, c)).astype(np.float32)
  variables = attn.init(jax.random.key(0), x, ctx, True)
  p = jax.tree.map(np.asarray, variables["params"])
  got = attn.apply(variables, x, ctx, True)
  lin = lambda a, name: a @ p[name]["kernel"] + p[name]["bias"]
  for b in range(2):
    k, v = np.split(lin(ctx[b], "kv"), 2, axis=-1)
    want = lin(_np_attention(lin(x[b], "q"), k, v, heads), "proj")
    np.testing.assert_allclose(got[b], want, atol=1e-5)
  # Queries attend to the context only: permuting the context tokens changes nothing.
  np.testing.assert_allclose(attn.apply(variables, x, ctx[:, ::-1], True), got, atol=1e-5)


def test_fusion_block_vs_numpy():
  """x + SA(LN x); x + CA(LN x, LN ctx); x + MLP(LN x), exact GELU, no drop-path."""
  heads, c = 2, 8
  block = Block(StackSpec(1, heads, 2.0, True), cross_attention=True)
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 4, c)).astype(np.float32)
  ctx = rng.normal(size=(2, 3, c)).astype(np.float32)
  variables = block.init(jax.random.key(0), x, ctx)
  p = jax.tree.map(np.asarray, variables["params"])
  got = block.apply(variables, x, ctx)
  ln = lambda a, name: _np_layer_norm(a, p[name]["scale"], p[name]["bias"])
  lin = lambda a, mod, name: a @ p[mod][name]["kernel"] + p[mod][name]["bias"]
  gelu = lambda a: 0.5 * a * (1 + np.vectorize(math.erf)(a / np.sqrt(2)))
  for b in range(2):
    y = x[b].astype(np.float64)
    q, k, v = np.split(lin(ln(y, "norm1"), "self_attn", "qkv"), 3, axis=-1)
    y = y + lin(_np_attention(q, k, v, heads), "self_attn", "proj")
    kc, vc = np.split(lin(ln(ctx[b], "norm_kv"), "cross_attn", "kv"), 2, axis=-1)
    qc = lin(ln(y, "norm_q"), "cross_attn", "q")
    y = y + lin(_np_attention(qc, kc, vc, heads), "cross_attn", "proj")
    h = gelu(lin(ln(y, "norm2"), "mlp", "fc1"))
    y = y + lin(h, "mlp", "fc2")
    np.testing.assert_allclose(got[b], y, atol=1e-4)
  with pytest.raises(ValueError, match="context"):
    block.apply(variables, x)


def test_drop_path_statistics_and_scaling():
  """Each sample's branch is either dropped (all zeros) or kept and scaled by 1/(1-rate);
  over many samples the kept fraction is 1 - rate (binomial bound)."""
  rate, n = 0.3, 4000
  x = np.ones((n, 2, 3), np.float32)
  y = np.asarray(DropPath(rate).apply({}, x, False, rngs={"dropout": jax.random.key(7)}))
  kept = np.all(y == np.float32(1 / (1 - rate)), axis=(1, 2))
  dropped = np.all(y == 0, axis=(1, 2))
  assert np.all(kept | dropped)
  assert abs(kept.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / n)
  np.testing.assert_array_equal(DropPath(rate).apply({}, x, True), x)  # deterministic


def test_mini_pointnet_vs_numpy_and_permutation_invariant():
  net = MiniPointNet((4, 6, 10), 5)
  nb = np.random.default_rng(2).normal(size=(2, 3, 7, 3)).astype(np.float32)
  variables = net.init(jax.random.key(0), nb)
  p = jax.tree.map(np.asarray, variables["params"])
  lin = lambda x, name: x @ p[name]["kernel"] + p[name]["bias"]
  relu = lambda x: np.maximum(x, 0)
  f = lin(relu(_np_layer_norm(lin(nb, "conv1"), p["norm1"]["scale"], p["norm1"]["bias"])),
          "conv2")
  g = np.broadcast_to(f.max(-2, keepdims=True), f.shape)
  f = np.concatenate([g, f], -1)
  f = lin(relu(_np_layer_norm(lin(f, "conv3"), p["norm2"]["scale"], p["norm2"]["bias"])),
          "conv4")
  got = net.apply(variables, nb)
  np.testing.assert_allclose(got, f.max(-2), atol=1e-5)
  perm = np.random.default_rng(3).permutation(7)
  np.testing.assert_allclose(net.apply(variables, nb[:, :, perm]), got, atol=1e-6)


def test_sincos_2d_hand_worked():
  # width 4: per axis [sin(pos), cos(pos)] (one frequency, omega = 1); columns first.
  emb = sincos_2d(4, 2, 2)  # tokens row-major: (0,0), (0,1), (1,0), (1,1)
  s, c = np.sin(1.0), np.cos(1.0)
  want = np.array([[0, 1, 0, 1], [s, c, 0, 1], [0, 1, s, c], [s, c, s, c]], np.float32)
  np.testing.assert_allclose(emb, want, atol=1e-7)


def _naive_hmlp_stem(image, params, dims, patch):
  """One image `[H, W, 3]` -> `[T, width]` by loops, patch by patch (row-major): the
  patch's blocks of patch / 2^m pixels (m = len(dims)), each flattened (row, column,
  channel) -> stem0 -> LayerNorm (eps 1e-6) -> exact GELU; then, level by level, each 2x2
  of them concatenated row-major -> the next Dense (the last, `patch_embed`, without norm
  or GELU)."""
  from scipy.special import erf  # pylint: disable=import-outside-toplevel
  def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))
  def norm(x, p):
    return (x - x.mean()) / np.sqrt(x.var() + 1e-6) * p["scale"] + p["bias"]
  def layer(x, level):
    last = level == len(dims)
    name = "patch_embed" if last else f"stem{level}"
    x = x @ np.asarray(params[name]["kernel"], np.float64) + params[name]["bias"]
    return x if last else gelu(norm(x, params[f"stem{level}_norm"]))
  first = patch // 2 ** len(dims)
  def block(r, c, level):  # the features of the block at pixel (r, c) after `level`
    if level == 0:
      return layer(np.asarray(image[r:r + first, c:c + first], np.float64).reshape(-1), 0)
    half = first * 2 ** (level - 1)
    return layer(np.concatenate([block(r + dr * half, c + dc * half, level - 1)
                                 for dr in (0, 1) for dc in (0, 1)]), level)
  h, w, _ = image.shape
  return np.stack([block(r, c, len(dims)) for r in range(0, h, patch)
                   for c in range(0, w, patch)])


@pytest.mark.parametrize("dims", [(4, 6), (5,)])  # first blocks of 2x2 / 4x4 pixels
def test_hmlp_stem_against_naive_loops_and_patch_local(dims):
  patch = 8
  tok = ImageTokenizer(patch, 16, stem_dims=dims)
  images = jax.random.normal(jax.random.key(0), (2, 16, 24, 3))
  variables = tok.init(jax.random.key(1), images)
  tokens, _, patches = tok.apply(variables, images)
  assert tokens.shape == (2, 6, 16) and patches.shape == (2, 6, patch * patch * 3)
  params = jax.tree.map(np.asarray, variables["params"])
  for b in range(2):
    np.testing.assert_allclose(tokens[b], _naive_hmlp_stem(np.asarray(images[b]), params,
                                                           dims, patch), atol=2e-5)
  # A pixel of patch (1, 2) (token 5) moves that token alone: masking a token hides its patch.
  moved = tok.apply(variables, images.at[0, 8 + 3, 16 + 7, 1].add(5.0))[0]
  changed = np.abs(np.asarray(moved - tokens)).max(axis=-1) > 1e-6
  assert changed[0].tolist() == [False] * 5 + [True] and not changed[1].any()


def test_hmlp_stem_needs_a_divisible_patch_size():
  with pytest.raises(ValueError, match=r"image_stem_dims=\(8, 8, 8, 8\) merges 2x2 blocks 4 "
                                       r"times, so patch_size must be a multiple of 16; it is 8"):
    resolve_config("tiny", 16, dict(image_stem_dims=(8, 8, 8, 8)))
  with pytest.raises(ValueError, match="positive ints"):
    resolve_config("tiny", 16, dict(image_stem_dims=(32, 0)))
  with pytest.raises(ValueError, match="multiple of 16; it is 8"):
    ImageTokenizer(8, 16, stem_dims=(4,) * 4).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  # The model builds and trains through it: the stem's first layer gets a gradient.
  model, variables = build("tiny", 16, jax.random.key(0), image_stem_dims=(8,))
  images, points = _inputs(model, b=2)
  def loss(params):
    h = model.apply({**variables, "params": params}, images, points, train=False)
    return jnp.sum(h["image/h"] ** 2)
  grads = jax.grad(loss)(variables["params"])
  assert float(jnp.abs(grads["image_tokenizer"]["stem0"]["kernel"]).max()) > 0


# -- configuration -----------------------------------------------------------------------
def test_build_validates_arguments():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="deepth") as err:
    build("tiny", 16, key, deepth=3)
  assert "depth" in str(err.value) and "num_points" in str(err.value)
  for bad in (0, -8, 1.5, "64", True):
    with pytest.raises(ValueError, match="bits"):
      build("tiny", bad, key)
  with pytest.raises(ValueError, match="huge"):
    build("huge", 16, key)
  with pytest.raises(ValueError, match="num_heads"):
    resolve_config("tiny", 16, dict(num_heads=5))


def test_overrides_and_attributes():
  model = CMAH(resolve_config("tiny", 32, dict(depth=1, image_size=48, num_points=300)))
  c = model.config
  assert (c.image_size, c.num_points, c.patch_size, c.bits) == (48, 300, 8, 32)
  shapes = abstract_variables(model)["params"]
  assert set(shapes["point_encoder"]["transformer"]) == {"block_0", "norm"}
  assert shapes["image_hash"]["proj"]["kernel"].shape == (64, 32)
  # Decoder heads predict k x 3 coordinates per group and p*p*3 pixels per patch, at the
  # variant's width (tiny: width 64, group_size 16, patch 8).
  assert shapes["point_decoder"]["head"]["kernel"].shape == (64, 16 * 3)
  assert shapes["image_decoder"]["head"]["kernel"].shape == (64, 8 * 8 * 3)
  # Fusion blocks carry cross-attention, encoder blocks do not.
  dec_block = shapes["point_decoder"]["transformer"]["block_0"]
  enc_block = shapes["point_encoder"]["transformer"]["block_0"]
  assert {"self_attn", "cross_attn", "norm_q", "norm_kv"} <= set(dec_block)
  assert "cross_attn" not in enc_block and "attn" in enc_block


def test_wrong_input_shapes_raise_clear_errors(tiny):
  model, variables, _, images, points = tiny
  with pytest.raises(ValueError, match="image_size"):
    model.apply(variables, images=images[:, :16], train=False)
  with pytest.raises(ValueError, match="num_points"):
    model.apply(variables, points=points[:, :100], train=False)
  with pytest.raises(ValueError, match="batch sizes"):
    model.apply(variables, images[:2], points, train=True, mask_key=jax.random.key(0))


def _hand_count_base(bits: int) -> int:
  """Parameters of the `base` variant from its layer sizes (independent of the modules)."""
  C, hidden, depth, dec_depth = 384, 4 * 384, 12, 4
  c1, c2, c3, pos_h, k, p, K = 128, 256, 512, 128, 32, 16, bits
  dense = lambda i, o, bias=True: i * o + (o if bias else 0)
  ln = lambda n: 2 * n
  mlp = dense(C, hidden) + dense(hidden, C)

  def block(qkv_bias):
    return ln(C) + dense(C, 3 * C, qkv_bias) + dense(C, C) + ln(C) + mlp

  def fusion_block(qkv_bias):
    return (ln(C) + dense(C, 3 * C, qkv_bias) + dense(C, C)                      # self-attn
            + ln(C) + ln(C) + dense(C, C, qkv_bias) + dense(C, 2 * C, qkv_bias)  # cross-attn
            + dense(C, C) + ln(C) + mlp)

  pos_mlp = dense(3, pos_h) + dense(pos_h, C)
  hash_head = dense(C, K) + ln(K)
  pointnet = dense(3, c1) + ln(c1) + dense(c1, c2) + dense(2 * c2, c3) + ln(c3) + dense(c3, C)
  point = (pointnet + pos_mlp + depth * block(False) + ln(C) + hash_head
           + pos_mlp + C + dec_depth * fusion_block(False) + ln(C) + dense(C, 3 * k))
  image = (dense(p * p * 3, C) + depth * block(True) + ln(C) + hash_head
           + C + dec_depth * fusion_block(True) + ln(C) + dense(C, p * p * 3))
  return point + image


def test_base_parameter_count_matches_hand_count():
  for bits in (16, 64):
    model = CMAH(resolve_config("base", bits))
    shapes = abstract_variables(model)
    assert set(shapes) == {"params"}  # no batch statistics anywhere
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    print(f"base ({bits} bits): {count:,} parameters")
    assert count == _hand_count_base(bits)
  assert (model.config.image_size, model.config.patch_size, model.config.num_points) == (224, 16, 1024)


def test_fusion_without_cross_attention_ignores_the_other_modality():
  """With fusion_cross_attention=False (an ablation) the point decoder's predictions do not
  change when only the images change; with it (the default) they do."""
  key = jax.random.key(0)
  rng = np.random.default_rng(8)
  for cross in (False, True):
    model, variables = build("tiny", 16, key, fusion_cross_attention=cross, drop_path=0.0)
    c = model.config
    pts = jnp.asarray(rng.normal(size=(2, c.num_points, 3)).astype(np.float32))
    imgs = [jnp.asarray(rng.normal(size=(2, c.image_size, c.image_size, 3)).astype(np.float32))
            for _ in range(2)]
    preds = [model.apply(variables, images=im, points=pts, train=True,
                         mask_key=jax.random.key(1))["point/pred"] for im in imgs]
    same = np.allclose(preds[0], preds[1], atol=1e-6)
    assert same == (not cross)
    dec = variables["params"]["point_decoder"]["transformer"]["block_0"]
    assert ("cross_attn" in dec) == cross


def test_embed_dim_adds_linear_embeddings_and_leaves_the_rest(tiny):
  model, variables, _, images, points = tiny
  wide, wide_vars = build("tiny", BITS, jax.random.key(0), embed_dim=24)
  params = wide_vars["params"]
  assert set(params) - set(variables["params"]) == {"point_embed", "image_embed"}
  # Adding the heads leaves every other parameter's initial value unchanged.
  rest = {k: v for k, v in params.items() if not k.endswith("_embed")}
  assert set(rest) == set(variables["params"]) and _equal_trees(rest, variables["params"])
  out = wide.apply(wide_vars, images, points, train=True, mask_key=jax.random.key(1),
                   rngs={"dropout": jax.random.key(2)})
  for tower in ("point", "image"):
    w = np.asarray(params[f"{tower}_embed"]["kernel"])
    bias = np.asarray(params[f"{tower}_embed"]["bias"])
    np.testing.assert_allclose(out[f"{tower}/z"],
                               np.asarray(out[f"{tower}/pooled"]) @ w + bias, atol=1e-5)
    assert out[f"{tower}/z_masked"].shape == (B, 24)
  # Inference outputs are the codes only, with or without the heads.
  assert set(wide.apply(wide_vars, images, points, train=False)) == {
      "point/h", "point/code", "image/h", "image/code"}
  with pytest.raises(ValueError, match="embed_dim"):
    resolve_config("tiny", BITS, {"embed_dim": -1})


def test_extra_masked_views_are_independent_masked_passes(tiny):
  """`masked_views=3`: the same parameters; view 0 and everything else as with one view;
  views 1-2 are exactly the one-view model's masked pass under the documented keys
  `split(fold_in(mask_key, 1), 2)` (tiny has no dropout, so passes are deterministic)."""
  model, variables, fwd, images, points = tiny
  model3, variables3 = build("tiny", BITS, jax.random.key(0), masked_views=3)
  assert _equal_trees(variables3, variables)
  mk, dk = jax.random.key(5), jax.random.key(2)
  out3 = model3.apply(variables, images, points, train=True, mask_key=mk,
                      rngs={"dropout": dk})
  out1 = fwd(variables, images, points, mk, dk)
  assert set(out3) == set(out1) | {"point/h_masked_extra", "image/h_masked_extra"}
  for k in out1:
    np.testing.assert_allclose(out3[k], out1[k], rtol=1e-5, atol=1e-5, err_msg=k)
  for tower in ("point", "image"):
    extra = np.asarray(out3[f"{tower}/h_masked_extra"])
    assert extra.shape == (2, B, BITS) and extra.dtype == np.float32
    for v, key in enumerate(jax.random.split(jax.random.fold_in(mk, 1), 2)):
      ref = fwd(variables, images, points, key, dk)[f"{tower}/h_masked"]
      np.testing.assert_allclose(extra[v], ref, atol=1e-5, err_msg=f"{tower} view {v + 1}")
      assert not np.allclose(extra[v], out1[f"{tower}/h_masked"], atol=1e-3)
  for field, bad, want in (("masked_views", 0, ">= 1"), ("masked_views", 2.0, ">= 1"),
                           ("embed_dim", -1, ">= 0"), ("num_prototypes", True, ">= 0")):
    with pytest.raises(ValueError, match=f"{field} must be an int {want}, got {bad!r}"):
      resolve_config("tiny", BITS, {field: bad})


def test_extra_masked_views_of_the_point_tower_alone(tiny):
  """`masked_views=3, extra_image_views=False` (round 19): the point tower's extra views
  are exactly those of the two-tower model (same masks), the image tower's are not
  computed, and every other output is unchanged."""
  _, variables, _, images, points = tiny
  both, _ = build("tiny", BITS, jax.random.key(0), masked_views=3)
  points_only, _ = build("tiny", BITS, jax.random.key(0), masked_views=3,
                         extra_image_views=False)
  mk, dk = jax.random.key(7), jax.random.key(2)
  call = dict(train=True, mask_key=mk, rngs={"dropout": dk})
  out_both = both.apply(variables, images, points, **call)
  out_points = points_only.apply(variables, images, points, **call)
  assert set(out_points) == set(out_both) - {"image/h_masked_extra"}
  for k in out_points:
    np.testing.assert_allclose(out_points[k], out_both[k], rtol=1e-5, atol=1e-5, err_msg=k)
  assert out_points["point/h_masked_extra"].shape == (2, B, BITS)
  with pytest.raises(ValueError, match="extra_image_views must be True or False, got 0"):
    resolve_config("tiny", BITS, {"extra_image_views": 0})


def test_hash_sharpness_schedule_by_hand():
  """HashNet's beta_t = sqrt(1 + gamma t), gamma fixed by the end value and run length:
  end 5 over 4,800 steps is HashNet's gamma 0.005."""
  from cmah_jax.models.hash_head import hash_sharpness  # pylint: disable=import-outside-toplevel
  got = [float(hash_sharpness(t, 4800, 5.0)) for t in (0, 200, 2400, 4800, 9600)]
  want = [1.0, math.sqrt(1 + 0.005 * 200), math.sqrt(13.0), 5.0, 5.0]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(hash_sharpness(jnp.int32(3000), 4800, 1.0)) == 1.0
  jitted = jax.jit(hash_sharpness, static_argnums=(1, 2))
  assert float(jitted(jnp.int32(2400), 4800, 5.0)) == pytest.approx(math.sqrt(13.0))


def test_hash_sharpness_scales_the_tanh_not_the_codes(tiny):
  """h = tanh(beta LayerNorm(pooled W + b)), in NumPy, for the configured end value (at
  evaluation) and for a beta passed to apply; the codes (signs) are beta's at 1. The
  LayerNorm output y is recovered from beta 1's h = tanh(y) (checked against NumPy in
  test_outputs_and_shapes)."""
  plain, variables, _, images, points = tiny
  sharp, sharp_vars = build("tiny", BITS, jax.random.key(0), hash_sharpness_end=3.0)
  assert plain.config.hash_sharpness_end == 1.0 and _equal_trees(sharp_vars, variables)
  base = plain.apply(variables, images, points, train=False)
  for beta, out in ((3.0, sharp.apply(variables, images, points, train=False)),
                    (2.0, plain.apply(variables, images, points, train=False,
                                      hash_sharpness=jnp.float32(2.0)))):
    for t in ("point", "image"):
      y = np.arctanh(np.asarray(base[f"{t}/h"], np.float64))
      np.testing.assert_allclose(out[f"{t}/h"], np.tanh(beta * y), atol=2e-5,
                                 err_msg=f"{t} beta {beta}")
      np.testing.assert_array_equal(out[f"{t}/code"], base[f"{t}/code"])
  for bad in (0.5, True, "2"):
    with pytest.raises(ValueError, match="hash_sharpness_end must be a number >= 1"):
      resolve_config("tiny", BITS, {"hash_sharpness_end": bad})


def test_train_step_follows_the_sharpness_schedule():
  """With end 5 over 10 steps, a train step at step 0 (beta 1) gives the same loss as
  without the switch, and at step 10 (beta 5) the loss of the model applied at beta 5
  directly; the step logs beta."""
  from cmah_jax.config import OptimSpec  # pylint: disable=import-outside-toplevel
  from cmah_jax.objectives import get_objective  # pylint: disable=import-outside-toplevel
  from cmah_jax.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  from cmah_jax.train import make_train_step  # pylint: disable=import-outside-toplevel
  images, points = _inputs(build("tiny", BITS, jax.random.key(0))[0], b=8)
  batch = {"points": points, "images": images, "label": jnp.arange(8, dtype=jnp.int32),
           "index": jnp.arange(8, dtype=jnp.int32)}
  objective = get_objective(losses.LossSpec(), BITS)
  root = jax.random.key(1)
  results = {}
  for end in (1.0, 5.0):
    model, variables = build("tiny", BITS, jax.random.key(0), hash_sharpness_end=end)
    tx, schedule = make_optimizer(OptimSpec(warmup_steps=1), 8, 10)
    step_fn = jax.jit(make_train_step(model, tx, schedule, objective, root, total_steps=10))
    params = variables["params"]
    for t in (0, 10):
      state = {"step": jnp.int32(t), "params": params, "opt_state": tx.init(params)}
      results[end, t] = jax.device_get(step_fn(state, batch)[1])
  assert "hash_sharpness" not in results[1.0, 0]
  assert [float(results[5.0, t]["hash_sharpness"]) for t in (0, 10)] == [1.0, 5.0]
  np.testing.assert_allclose(results[5.0, 0]["loss/total"], results[1.0, 0]["loss/total"],
                             rtol=1e-6)
  # Step 10 by hand: the model at beta 5 under the step's keys, then the objective.
  model, variables = build("tiny", BITS, jax.random.key(0), hash_sharpness_end=5.0)
  mask_key, dropout_key = jax.random.split(jax.random.fold_in(root, 10))
  out = model.apply(variables, images, points, train=True, mask_key=mask_key,
                    rngs={"dropout": dropout_key}, hash_sharpness=jnp.float32(5.0))
  total, _, _ = objective(out, batch, None, jnp.int32(10))
  np.testing.assert_allclose(results[5.0, 10]["loss/total"], total, rtol=1e-5)
  assert abs(results[5.0, 10]["loss/total"] - results[1.0, 10]["loss/total"]) > 1e-3
  with pytest.raises(ValueError, match="needs the run's total_steps"):
    make_train_step(model, tx, schedule, objective, root)


def test_reconstruction_only_steps_train_the_reconstruction_alone_first(tiny):
  """`loss.reconstruction_only_steps=3`: at step 2 the total is L_3D + 0.1 L_2D computed
  from the reconstruction losses directly, and its gradient is that sum's (the hash heads
  get none); at step 3 the total is the objective's without the switch."""
  from cmah_jax.objectives import get_objective  # pylint: disable=import-outside-toplevel
  model, variables, _, images, points = tiny
  batch = {"points": points, "images": images, "label": jnp.arange(B, dtype=jnp.int32),
           "index": jnp.arange(B, dtype=jnp.int32)}
  spec = losses.LossSpec(reconstruction_only_steps=3).validate()
  switched, plain = get_objective(spec, BITS), get_objective(losses.LossSpec(), BITS)
  keys = jax.random.split(jax.random.key(5))

  def forward(params):
    return model.apply({"params": params}, images, points, train=True, mask_key=keys[0],
                       rngs={"dropout": keys[1]})

  def by_hand(params):
    out = forward(params)
    return (losses.point_reconstruction_loss(out["point/pred"], out["point/target"])
            + 0.1 * losses.image_reconstruction_loss(out["image/pred"], out["image/target"]))

  def total(objective, step):
    return lambda params: objective(forward(params), batch, None, jnp.int32(step))[0]

  params = variables["params"]
  np.testing.assert_allclose(total(switched, 2)(params), by_hand(params), rtol=1e-6)
  grads, reference = jax.grad(total(switched, 2))(params), jax.grad(by_hand)(params)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
  for head in ("point_hash", "image_hash"):
    assert all(not np.any(g) for g in jax.tree.leaves(grads[head])), head
  assert any(np.any(g) for g in jax.tree.leaves(grads["image_encoder"]))
  _, terms, _ = switched(forward(params), batch, None, jnp.int32(2))
  assert float(terms["contrastive_on"]) == 0.0
  assert float(terms["loss/contrastive"]) > 1.0  # computed, multiplied by 0
  np.testing.assert_allclose(total(switched, 3)(params), total(plain, 3)(params), rtol=1e-6)
  np.testing.assert_allclose(total(switched, 3)(params), total(switched, 100)(params))
  assert abs(float(total(plain, 3)(params)) - float(by_hand(params))) > 1.0


def test_reconstruction_only_steps_need_a_reconstruction():
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match="reconstruction_only_steps must be an int >= 0"):
      losses.LossSpec(reconstruction_only_steps=bad).validate()
  for kw in (dict(lambda_r=0.0), dict(use_point_recon=False, use_image_recon=False),
             dict(objective="ucch"), dict(point_recon_weight=0.0, use_image_recon=False)):
    with pytest.raises(ValueError, match="trains the reconstruction alone first, but"):
      losses.LossSpec(reconstruction_only_steps=10, **kw).validate()
  losses.LossSpec(reconstruction_only_steps=10, use_point_recon=False).validate()

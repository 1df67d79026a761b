"""Losses against NumPy references and hand-worked examples; sharded == unsharded."""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import losses
from cmah_jax.sharding import data_sharding, make_mesh


# -- NumPy references ------------------------------------------------------------------
def np_info_nce(a, b, tau):
  """-(1/B) sum_i log(exp(<a_i,b_i>/tau) / sum_j exp(<a_i,b_j>/tau)), plain loops."""
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  n = len(a)
  total = 0.0
  for i in range(n):
    sims = [float(np.dot(a[i], b[j])) / tau for j in range(n)]
    total += -(sims[i] - np.log(np.sum(np.exp(sims))))
  return total / n


def np_contrastive(p, i, tau):
  return 0.5 * (np_info_nce(p, i, tau) + np_info_nce(i, p, tau))


def np_supcon_one_way(a, b, labels, tau):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  n = len(a)
  total = 0.0
  for i in range(n):
    sims = np.array([float(np.dot(a[i], b[j])) / tau for j in range(n)])
    log_den = np.log(np.sum(np.exp(sims)))
    positives = [j for j in range(n) if labels[j] == labels[i]]
    total += -np.mean([sims[j] - log_den for j in positives])
  return total / n


def _codes(seed, b=6, k=16):
  rng = np.random.default_rng(seed)
  return (np.tanh(rng.normal(size=(b, k))).astype(np.float32),
          np.tanh(rng.normal(size=(b, k))).astype(np.float32))


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_contrastive_matches_numpy(tau):
  p, i = _codes(0)
  got = float(losses.contrastive_loss(jnp.asarray(p), jnp.asarray(i), tau))
  np.testing.assert_allclose(got, np_contrastive(p.astype(np.float64), i.astype(np.float64),
                                                 tau), rtol=1e-5)


def test_contrastive_lowest_when_pairs_match():
  rng = np.random.default_rng(1)
  p = rng.normal(size=(5, 16)).astype(np.float32)
  i = p + 0.05 * rng.normal(size=p.shape).astype(np.float32)
  matched = float(losses.contrastive_loss(p, i, 0.1))
  for perm in itertools.permutations(range(5)):
    if perm == tuple(range(5)):
      continue
    shuffled = float(losses.contrastive_loss(p, i[list(perm)], 0.1))
    assert matched < shuffled, perm


def test_contrastive_scale_invariant_and_symmetric():
  p, i = _codes(2)
  base = losses.contrastive_loss(p, i, 0.2)
  np.testing.assert_allclose(losses.contrastive_loss(3.0 * p, 0.5 * i, 0.2), base, rtol=1e-5)
  np.testing.assert_allclose(losses.contrastive_loss(i, p, 0.2), base, rtol=1e-5)


def test_contrastive_sharded_equals_single_device():
  p, i = _codes(3, b=8)
  single = jax.jit(losses.contrastive_loss, static_argnums=2)(p, i, 0.07)
  mesh = make_mesh(jax.devices()[:4])
  ps = jax.device_put(p, data_sharding(mesh))
  is_ = jax.device_put(i, data_sharding(mesh))
  assert len(ps.sharding.device_set) == 4 and ps.addressable_shards[0].data.shape == (2, 16)
  sharded = jax.jit(losses.contrastive_loss, static_argnums=2)(ps, is_, 0.07)
  np.testing.assert_allclose(float(sharded), float(single), rtol=1e-6)
  np.testing.assert_allclose(float(single), np_contrastive(p, i, 0.07), rtol=1e-5)


def test_supervised_contrastive_matches_numpy():
  p, i = _codes(4)
  labels = np.array([0, 1, 0, 2, 1, 0])
  tau = 0.1
  want = 0.5 * (np_supcon_one_way(p, i, labels, tau) + np_supcon_one_way(i, p, labels, tau))
  got = float(losses.supervised_contrastive_loss(p, i, jnp.asarray(labels), tau))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # With all labels distinct it is the self-supervised loss.
  np.testing.assert_allclose(
      float(losses.supervised_contrastive_loss(p, i, jnp.arange(6), tau)),
      float(losses.contrastive_loss(p, i, tau)), rtol=1e-6)


def test_point_reconstruction_hand_worked():
  # Group 0: pred {(0,0,0), (1,0,0)}, target {(0,0,0), (0,2,0)}.
  #   pred->target mins: 0, 1 -> mean 0.5; target->pred mins: 0, 4 -> mean 2; sum 2.5.
  # Group 1: identical sets in a different order -> 0.  Mean over groups: 1.25.
  pred = np.array([[[[0, 0, 0], [1, 0, 0]],
                    [[1, 1, 1], [0, 0, 1]]]], np.float32)
  target = np.array([[[[0, 0, 0], [0, 2, 0]],
                      [[0, 0, 1], [1, 1, 1]]]], np.float32)
  np.testing.assert_allclose(float(losses.point_reconstruction_loss(pred, target)), 1.25,
                             rtol=1e-6)


def test_image_reconstruction_hand_worked():
  pred = np.zeros((1, 2, 4), np.float32)
  target = np.array([[[1, 2, 3, 4], [2, 2, 2, 2]]], np.float32)
  # Raw MSE: patch 0 (1+4+9+16)/4 = 7.5; patch 1 4; mean 5.75.
  np.testing.assert_allclose(
      float(losses.image_reconstruction_loss(pred, target, norm_pix_loss=False)), 5.75,
      rtol=1e-6)
  # Normalised: patch 0 mean 2.5, unbiased var 5/3 -> sum of squares 5 / (5/3) = 3, /4 =
  # 0.75; patch 1 is constant -> normalised target 0 -> 0. Mean 0.375.
  want = 0.5 * (5.0 / (5.0 / 3.0 + 1e-6)) / 4.0
  np.testing.assert_allclose(
      float(losses.image_reconstruction_loss(pred, target, norm_pix_loss=True)), want,
      rtol=1e-6)


def _fake_outputs(seed=5, b=4, k=8):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))
  return {"point/h": f(b, k), "image/h": f(b, k), "point/h_masked": f(b, k),
          "image/h_masked": f(b, k), "point/pred": f(b, 3, 5, 3), "point/target": f(b, 3, 5, 3),
          "image/pred": f(b, 6, 12), "image/target": f(b, 6, 12)}


def test_cmah_loss_combines_terms():
  out = _fake_outputs()
  c = losses.contrastive_loss
  tau = 0.3
  ff = c(out["point/h"], out["image/h"], tau)
  mm = c(out["point/h_masked"], out["image/h_masked"], tau)
  fm = 0.5 * (c(out["point/h"], out["image/h_masked"], tau)
              + c(out["point/h_masked"], out["image/h"], tau))
  pr = losses.point_reconstruction_loss(out["point/pred"], out["point/target"])
  ir = losses.image_reconstruction_loss(out["image/pred"], out["image/target"], False)
  cfg = losses.LossSpec(temperature=tau, pairs="full_full, masked_masked,full_masked",
                        lambda_r=0.5, norm_pix_loss=False, supervised=False,
                        image_recon_weight=1.0)  # the paper's 1:1 (ours is below)
  total, terms = losses.cmah_loss(out, cfg)
  assert set(terms) == {"loss/contrastive", "loss/point_recon", "loss/image_recon",
                        "loss/total"}
  np.testing.assert_allclose(terms["loss/contrastive"], ff + mm + fm, rtol=1e-6)
  np.testing.assert_allclose(terms["loss/point_recon"], pr, rtol=1e-6)
  np.testing.assert_allclose(terms["loss/image_recon"], ir, rtol=1e-6)
  np.testing.assert_allclose(total, ff + mm + fm + 0.5 * (pr + ir), rtol=1e-6)
  np.testing.assert_allclose(terms["loss/total"], total)
  # Relative reconstruction weights: L_c + lambda_r (w_3D L_3D + w_2D L_2D); the logged
  # terms stay unweighted.
  weighted = dataclasses.replace(cfg, point_recon_weight=300.0, image_recon_weight=10.0)
  total_w, terms_w = losses.cmah_loss(out, weighted)
  np.testing.assert_allclose(total_w, ff + mm + fm + 0.5 * (300 * pr + 10 * ir), rtol=1e-5)
  np.testing.assert_allclose(terms_w["loss/point_recon"], pr, rtol=1e-6)
  with pytest.raises(ValueError, match="point_recon_weight"):
    dataclasses.replace(cfg, point_recon_weight=-1.0).validate()
  # intra_modal: each tower's full h against its own masked h (NumPy InfoNCE reference).
  np_out = {k: np.asarray(v) for k, v in out.items()}
  want = 0.5 * (np_contrastive(np_out["point/h"], np_out["point/h_masked"], tau)
                + np_contrastive(np_out["image/h"], np_out["image/h_masked"], tau))
  _, terms = losses.cmah_loss(out, dataclasses.replace(cfg, pairs="intra_modal"))
  np.testing.assert_allclose(terms["loss/contrastive"], want, rtol=1e-5)
  # masked_point_full_image: the masked point view against the full image, one direction
  # pair of the symmetric InfoNCE (NumPy reference), added to full_full like any pair.
  want = (np_contrastive(np_out["point/h"], np_out["image/h"], tau)
          + np_contrastive(np_out["point/h_masked"], np_out["image/h"], tau))
  _, terms = losses.cmah_loss(
      out, dataclasses.replace(cfg, pairs="full_full,masked_point_full_image"))
  np.testing.assert_allclose(terms["loss/contrastive"], want, rtol=1e-5)
  # Only full_full: masked outputs are not needed.
  only_full = {k: v for k, v in out.items() if "masked" not in k}
  total, terms = losses.cmah_loss(
      only_full, dataclasses.replace(cfg, pairs="full_full", lambda_r=0.0))
  np.testing.assert_allclose(total, ff, rtol=1e-6)


def test_cmah_loss_supervised_uses_labels():
  out = _fake_outputs()
  cfg = losses.LossSpec(temperature=0.2, pairs="full_full", lambda_r=0.0, supervised=True)
  labels = jnp.array([0, 0, 1, 1])
  total, _ = losses.cmah_loss(out, cfg, labels)
  np.testing.assert_allclose(
      total, losses.supervised_contrastive_loss(out["point/h"], out["image/h"], labels, 0.2),
      rtol=1e-6)
  with pytest.raises(ValueError, match="labels"):
    losses.cmah_loss(out, cfg)


def test_cmah_loss_clear_errors():
  out = _fake_outputs()
  with pytest.raises(ValueError, match="full_fll"):
    losses.LossSpec(pairs="full_full,full_fll")
  with pytest.raises(ValueError, match="pairs"):
    losses.LossSpec(pairs="")
  with pytest.raises(ValueError, match="temperature"):
    losses.LossSpec(temperature=0.0).validate()
  with pytest.raises(TypeError, match="LossSpec"):
    losses.cmah_loss(out, dict(pairs="full_full"))
  # A spec built directly (not through config.resolve) is checked by the loss itself.
  with pytest.raises(ValueError, match=r"config\.loss\.lambda_r must be >= 0, got -1\.0"):
    losses.cmah_loss(out, losses.LossSpec(lambda_r=-1.0))
  eval_out = {"point/h": out["point/h"], "image/h": out["image/h"]}
  with pytest.raises(KeyError, match="point/h_masked"):
    losses.cmah_loss(eval_out, losses.LossSpec(pairs="masked_masked", lambda_r=0.0))
  with pytest.raises(KeyError, match="point/pred"):
    losses.cmah_loss(eval_out, losses.LossSpec(pairs="full_full", lambda_r=1.0))
  with pytest.raises(ValueError, match="must both be"):
    losses.contrastive_loss(out["point/h"], out["image/h"][:3], 0.1)


def test_code_quality_terms_vs_numpy():
  rng = np.random.default_rng(3)
  h = np.tanh(rng.normal(size=(6, 4))).astype(np.float32)
  got = losses.code_quality_terms(jnp.asarray(h))
  mean = h.mean(0)
  np.testing.assert_allclose(got["balance"], (mean ** 2).sum() / 4, rtol=1e-5)
  corr = sum(np.outer(r, r) for r in h) / 6
  np.testing.assert_allclose(got["decorrelation"], ((corr - np.eye(4)) ** 2).sum() / 16,
                             rtol=1e-5)
  np.testing.assert_allclose(got["quantization"], ((np.abs(h) - 1) ** 2).mean(), rtol=1e-5)
  # Balanced, uncorrelated binary codes (rows of a Hadamard matrix) score 0 on every term.
  hadamard = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]],
                      np.float32)[:, 1:]
  for v in losses.code_quality_terms(jnp.asarray(hadamard)).values():
    assert abs(float(v)) < 1e-6


def test_cmah_loss_switches_and_quality_weights():
  out = _fake_outputs()
  base = losses.LossSpec(temperature=0.3, pairs="full_full", lambda_r=1.0)
  total, terms = losses.cmah_loss(out, base)
  pr = losses.point_reconstruction_loss(out["point/pred"], out["point/target"])
  ir = losses.image_reconstruction_loss(out["image/pred"], out["image/target"])
  no3d, t3 = losses.cmah_loss(out, dataclasses.replace(base, use_point_recon=False))
  no2d, t2 = losses.cmah_loss(out, dataclasses.replace(base, use_image_recon=False))
  # L_c + lambda_r (w_3D L_3D + w_2D L_2D) at the default weights (w_2D 0.1 since round 10).
  assert (base.point_recon_weight, base.image_recon_weight) == (1.0, 0.1)
  np.testing.assert_allclose(total - no3d, pr, rtol=1e-5)
  np.testing.assert_allclose(total - no2d, 0.1 * ir, rtol=1e-5)
  assert float(t3["loss/point_recon"]) == 0.0 and float(t2["loss/image_recon"]) == 0.0
  spec = dataclasses.replace(base, balance_weight=2.0, quantization_weight=0.5)
  with_q, tq = losses.cmah_loss(out, spec)
  qp = losses.code_quality_terms(out["point/h"])
  qi = losses.code_quality_terms(out["image/h"])
  want = (total + 2.0 * 0.5 * (qp["balance"] + qi["balance"])
          + 0.5 * 0.5 * (qp["quantization"] + qi["quantization"]))
  np.testing.assert_allclose(with_q, want, rtol=1e-5)
  assert "loss/balance" in tq and "loss/decorrelation" not in tq
  with pytest.raises(ValueError, match="balance_weight"):
    losses.LossSpec(balance_weight=-1.0).validate()


# -- soft joint-affinity targets -----------------------------------------------------------
def np_joint_affinity_targets(fp, fi, weight, temperature):
  """Plain loops: centre, normalise, average the two cosine matrices, softmax over j != i."""
  def cosine(f):
    f = f - f.mean(axis=0)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    n = len(f)
    return np.array([[float(np.dot(f[i], f[j])) for j in range(n)] for i in range(n)])
  s = 0.5 * (cosine(fp) + cosine(fi))
  n = len(s)
  t = np.zeros((n, n))
  for i in range(n):
    others = [j for j in range(n) if j != i]
    e = np.exp([s[i, j] / temperature for j in others])
    for j, v in zip(others, e / e.sum()):
      t[i, j] = weight * v
    t[i, i] = 1.0 - weight
  return t


def np_soft_contrastive(p, i, t, tau):
  p = p / np.linalg.norm(p, axis=1, keepdims=True)
  i = i / np.linalg.norm(i, axis=1, keepdims=True)
  n = len(p)
  sims = np.array([[float(np.dot(p[a], i[b])) / tau for b in range(n)] for a in range(n)])
  l_pi = -np.mean([sum(t[a, b] * (sims[a, b] - np.log(np.exp(sims[a]).sum()))
                       for b in range(n)) for a in range(n)])
  l_ip = -np.mean([sum(t[b, a] * (sims[a, b] - np.log(np.exp(sims[:, b]).sum()))
                       for a in range(n)) for b in range(n)])
  return 0.5 * (l_pi + l_ip)


def test_joint_affinity_targets_and_soft_loss_vs_numpy():
  rng = np.random.default_rng(7)
  fp, fi = rng.normal(size=(6, 10)), rng.normal(size=(6, 10))
  got = np.asarray(losses.joint_affinity_targets(jnp.asarray(fp, jnp.float32),
                                                 jnp.asarray(fi, jnp.float32), 0.3, 0.1))
  want = np_joint_affinity_targets(fp, fi, 0.3, 0.1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
  p, i = _codes(8)
  np.testing.assert_allclose(float(losses.soft_contrastive_loss(p, i, jnp.asarray(got), 0.2)),
                             np_soft_contrastive(p.astype(np.float64), i.astype(np.float64),
                                                 want, 0.2), rtol=1e-5)
  # Identity targets: the one-hot InfoNCE.
  np.testing.assert_allclose(float(losses.soft_contrastive_loss(p, i, jnp.eye(6), 0.2)),
                             np_contrastive(p, i, 0.2), rtol=1e-5)
  # No gradient flows into the features the targets are computed from.
  g = jax.grad(lambda f: losses.soft_contrastive_loss(
      p, i, losses.joint_affinity_targets(f, jnp.asarray(fi, jnp.float32), 0.3, 0.1), 0.2))(
          jnp.asarray(fp, jnp.float32))
  assert float(jnp.abs(g).max()) == 0.0


def test_cmah_loss_soft_targets_replace_cross_modal_pairs_only():
  out = _fake_outputs()
  rng = np.random.default_rng(9)
  out["point/pooled"] = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  out["image/pooled"] = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  np_out = {k: np.asarray(v, np.float64) for k, v in out.items()}
  t = np_joint_affinity_targets(np_out["point/pooled"], np_out["image/pooled"], 0.4, 0.2)
  tau = 0.3
  spec = losses.LossSpec(temperature=tau, pairs="full_full,masked_masked,intra_modal",
                         lambda_r=0.0, soft_target_weight=0.4, soft_target_temperature=0.2)
  _, terms = losses.cmah_loss(out, spec)
  want = (np_soft_contrastive(np_out["point/h"], np_out["image/h"], t, tau)
          + np_soft_contrastive(np_out["point/h_masked"], np_out["image/h_masked"], t, tau)
          + 0.5 * (np_contrastive(np_out["point/h"], np_out["point/h_masked"], tau)
                   + np_contrastive(np_out["image/h"], np_out["image/h_masked"], tau)))
  np.testing.assert_allclose(float(terms["loss/contrastive"]), want, rtol=1e-5)
  with pytest.raises(KeyError, match="point/pooled"):
    losses.cmah_loss({k: v for k, v in out.items() if "pooled" not in k}, spec)
  with pytest.raises(ValueError, match="soft_target_weight"):
    losses.LossSpec(soft_target_weight=1.0).validate()


def test_cmah_loss_embed_weight_adds_the_pairs_on_z():
  out = _fake_outputs()
  rng = np.random.default_rng(11)
  for name in ("point/z", "image/z", "point/z_masked", "image/z_masked"):
    out[name] = jnp.asarray(rng.normal(size=(4, 12)), jnp.float32)
  np_out = {k: np.asarray(v, np.float64) for k, v in out.items()}
  tau = 0.2
  spec = losses.LossSpec(temperature=tau, pairs="full_full,masked_masked", lambda_r=0.0,
                         embed_weight=0.5)
  total, terms = losses.cmah_loss(out, spec)
  want_z = (np_contrastive(np_out["point/z"], np_out["image/z"], tau)
            + np_contrastive(np_out["point/z_masked"], np_out["image/z_masked"], tau))
  want_h = (np_contrastive(np_out["point/h"], np_out["image/h"], tau)
            + np_contrastive(np_out["point/h_masked"], np_out["image/h_masked"], tau))
  np.testing.assert_allclose(float(terms["loss/embed_contrastive"]), want_z, rtol=1e-5)
  np.testing.assert_allclose(float(total), want_h + 0.5 * want_z, rtol=1e-5)
  with pytest.raises(KeyError, match="embed_dim"):
    losses.cmah_loss({k: v for k, v in out.items() if "/z" not in k}, spec)


def test_cmah_loss_code_contrast_ranks_by_hamming_with_straight_through_gradient():
  out = _fake_outputs()
  np_out = {k: np.asarray(v, np.float64) for k, v in out.items()}
  tau = 0.25
  spec = losses.LossSpec(temperature=tau, pairs="full_full", lambda_r=0.0,
                         code_contrast_weight=2.0)
  total, terms = losses.cmah_loss(out, spec)
  code = lambda x: np.where(x >= 0, 1.0, -1.0)
  want = np_contrastive(code(np_out["point/h"]), code(np_out["image/h"]), tau)
  np.testing.assert_allclose(float(terms["loss/code_contrastive"]), want, rtol=1e-5)
  # On +-1 codes the cosine is 1 - 2 d_H / K: the same loss from Hamming distances.
  k = out["point/h"].shape[1]
  d = (code(np_out["point/h"])[:, None, :] != code(np_out["image/h"])[None, :, :]).sum(-1)
  logits = (1 - 2 * d / k) / tau
  lse = lambda x, axis: np.log(np.exp(x).sum(axis))
  by_hamming = 0.5 * (np.mean(lse(logits, 1) - np.diag(logits))
                      + np.mean(lse(logits, 0) - np.diag(logits)))
  np.testing.assert_allclose(float(terms["loss/code_contrastive"]), by_hamming, rtol=1e-5)
  np.testing.assert_allclose(float(total),
                             np_contrastive(np_out["point/h"], np_out["image/h"], tau)
                             + 2.0 * want, rtol=1e-5)
  # Straight-through: the code term's gradient w.r.t. h is that of the loss on the codes.
  g = jax.grad(lambda h: losses.cmah_loss(dict(out, **{"point/h": h}),
                                          dataclasses.replace(spec, code_contrast_weight=1.0))
               [1]["loss/code_contrastive"])(out["point/h"])
  g_codes = jax.grad(lambda c: losses.contrastive_loss(c, jnp.sign(out["image/h"]), tau))(
      jnp.sign(out["point/h"]))
  np.testing.assert_allclose(g, g_codes, rtol=1e-5, atol=1e-7)


def test_masked_pair_is_averaged_over_masked_views():
  """`*/h_masked_extra` `[V-1, B, K]`: the masked-masked pair is the mean of InfoNCE over
  the V views (NumPy reference); the other pairs read view 0 only."""
  out = _fake_outputs(seed=9)
  rng = np.random.default_rng(3)
  for tower in ("point", "image"):
    out[f"{tower}/h_masked_extra"] = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
  np_out = {k: np.asarray(v) for k, v in out.items()}
  tau = 0.2
  views = [(np_out["point/h_masked"], np_out["image/h_masked"])] + [
      (np_out["point/h_masked_extra"][v], np_out["image/h_masked_extra"][v]) for v in (0, 1)]
  masked = np.mean([np_contrastive(p, i, tau) for p, i in views])
  full = np_contrastive(np_out["point/h"], np_out["image/h"], tau)
  cross = 0.5 * (np_contrastive(np_out["point/h"], np_out["image/h_masked"], tau)
                 + np_contrastive(np_out["point/h_masked"], np_out["image/h"], tau))
  spec = losses.LossSpec(temperature=tau, pairs="full_full,masked_masked,full_masked",
                         lambda_r=0.0)
  _, terms = losses.cmah_loss(out, spec)
  np.testing.assert_allclose(terms["loss/contrastive"], full + masked + cross, rtol=1e-5)
  lopsided = dict(out, **{"image/h_masked_extra": out["image/h_masked_extra"][:1]})
  with pytest.raises(ValueError, match="as many extra masked image views as point views, "
                     "got 1 and 2"):
    losses.cmah_loss(lopsided, spec)


def test_masked_points_against_the_full_image_average_the_point_views():
  """Round 19: with extra masked point views (and none of the image's, as
  `model.extra_image_views=False` gives), the masked-point/full-image pair is the mean of
  InfoNCE over the V point views against the full image (NumPy reference); the full-full
  pair is unchanged."""
  out = _fake_outputs(seed=4)
  out["point/h_masked_extra"] = jnp.asarray(
      np.random.default_rng(8).normal(size=(2, 4, 8)), jnp.float32)
  np_out = {k: np.asarray(v) for k, v in out.items()}
  tau = 0.2
  point_views = [np_out["point/h_masked"]] + list(np_out["point/h_masked_extra"])
  masked = np.mean([np_contrastive(p, np_out["image/h"], tau) for p in point_views])
  full = np_contrastive(np_out["point/h"], np_out["image/h"], tau)
  spec = losses.LossSpec(temperature=tau, pairs="full_full,masked_point_full_image",
                         lambda_r=0.0)
  _, terms = losses.cmah_loss(out, spec)
  np.testing.assert_allclose(terms["loss/contrastive"], full + masked, rtol=1e-5)
  one_view = np_contrastive(np_out["point/h_masked"], np_out["image/h"], tau)
  assert abs(masked - one_view) > 1e-3  # the extra views count
  with pytest.raises(ValueError, match="as many extra masked image views"):
    losses.cmah_loss(out, dataclasses.replace(spec, pairs=("full_full", "masked_masked")))
  # The wide embeddings z have no extra views: their pairs would read view 0 alone.
  for name in ("point/z", "image/z", "point/z_masked", "image/z_masked"):
    out[name] = out[name.replace("/z", "/h")]
  with pytest.raises(ValueError, match=r"loss.embed_weight > 0.*point/z of the first masked "
                     r"view only.*encodes 3"):
    losses.cmah_loss(out, dataclasses.replace(spec, embed_weight=1.0))


def test_reconstruction_on_is_what_cmah_loss_computes():
  """`LossSpec.reconstruction_on()` against a hand-made table, and `cmah_loss` reports a
  term as exactly 0 where it says off and computes it where on."""
  table = {(1.0, True, True): (True, True), (0.0, True, True): (False, False),
           (1.0, False, True): (False, True), (1.0, True, False): (True, False),
           (0.5, False, False): (False, False)}
  for (lam, point, image), want in table.items():
    assert losses.LossSpec(lambda_r=lam, use_point_recon=point,
                           use_image_recon=image).reconstruction_on() == want
  rng = np.random.default_rng(0)
  outputs = {"point/h": rng.normal(size=(4, 8)), "image/h": rng.normal(size=(4, 8)),
             "point/h_masked": rng.normal(size=(4, 8)), "image/h_masked": rng.normal(size=(4, 8)),
             "point/pred": rng.normal(size=(4, 3, 5, 3)),
             "point/target": rng.normal(size=(4, 3, 5, 3)),
             "image/pred": rng.normal(size=(4, 6, 12)),
             "image/target": rng.normal(size=(4, 6, 12))}
  outputs = {k: jnp.asarray(v, jnp.float32) for k, v in outputs.items()}
  for (lam, point, image), (point_on, image_on) in table.items():
    spec = losses.LossSpec(lambda_r=lam, use_point_recon=point, use_image_recon=image)
    _, terms = losses.cmah_loss(outputs, spec)
    assert (float(terms["loss/point_recon"]) > 0) == point_on
    assert (float(terms["loss/image_recon"]) > 0) == image_on

"""UCCH objective (cmah_jax.baselines.deep): each term against NumPy loops written from the
paper's equations, the memory bank against a hand-worked example, gradients against finite
differences of the references, resume, warm-up, and 2 devices == 1."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import objectives
from cmah_jax.baselines import deep
from cmah_jax.losses import LossSpec
from cmah_jax.sharding import data_sharding, make_mesh, replicated

SPEC = LossSpec(objective="ucch", pairs="full_full", lambda_r=0.0)


# -- NumPy references (float64, loops) -------------------------------------------------
def np_sgn(x):
  return np.where(np.asarray(x) >= 0, 1.0, -1.0)  # Eq. (1)


def np_unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x)


def np_key(v):
  return np_sgn(v) / math.sqrt(len(v))  # k = sgn(v), ||k|| = 1


def np_lc_memory(hx, hy, memory, index, negatives, t):
  """Eq. (3)-(4): per modality mean_i -log(e(k+) / (e(k+) + sum_r e(k_r))), e(k) =
  exp(<u_i, k>/t); negatives None = every bank row is in the dictionary once."""
  total = 0.0
  for h in (hx, hy):
    acc = 0.0
    for i in range(len(h)):
      q = np_unit(h[i])
      pos = math.exp(np.dot(q, np_key(memory[index[i]])) / t)
      if negatives is None:
        den = sum(math.exp(np.dot(q, np_key(memory[j])) / t) for j in range(len(memory)))
      else:
        den = pos + sum(math.exp(np.dot(q, np_key(memory[r])) / t) for r in negatives[i])
      acc += -math.log(pos / den)
    total += acc / len(h)
  return total


def np_lc_in_batch(hx, hy, t):
  """Warm-up keys k_j = sgn((u^x_j + u^y_j) / 2), positive j = i."""
  b = len(hx)
  keys = [np_key(0.5 * (np_unit(hx[j]) + np_unit(hy[j]))) for j in range(b)]
  total = 0.0
  for h in (hx, hy):
    acc = 0.0
    for i in range(b):
      q = np_unit(h[i])
      e = [math.exp(np.dot(q, keys[j]) / t) for j in range(b)]
      acc += -math.log(e[i] / sum(e))
    total += acc / b
  return total


def np_crl(hx, hy, m, xi, kappa):
  """Eq. (8) and (14), both directions."""
  total = 0.0
  for a, c in ((hx, hy), (hy, hx)):
    n = len(a)
    acc = 0.0
    for i in range(n):
      mii = np.dot(np_unit(a[i]), np_unit(c[i]))
      s = []
      for j in range(n):
        mij = np.dot(np_unit(a[i]), np_unit(c[j]))
        s.append(mij if mii - mij <= m else mij - xi)
      acc += m + kappa * math.log(sum(math.exp(sj / kappa) for sj in s)) - s[i]
    total += acc / n
  return total


def np_update(memory, index, hx, hy, d):
  """Eq. (5) with UCCH's normalisations."""
  out = np.array(memory, np.float64)
  for i, r in enumerate(index):
    target = np_unit(0.5 * (np_unit(hx[i]) + np_unit(hy[i])))
    out[r] = np_unit(d * out[r] + (1 - d) * target)
  return out


def np_total(hx, hy, memory, index, negatives, st, warm):
  lc = (np_lc_in_batch(hx, hy, st.temperature) if warm else
        np_lc_memory(hx, hy, memory, index, negatives, st.temperature))
  lr = np_crl(hx, hy, st.margin, st.shift, st.kappa)
  return st.beta * lc + (1 - st.beta) * lr, lc, lr


# -- helpers ---------------------------------------------------------------------------
def _codes(seed, b=8, k=16):
  rng = np.random.default_rng(seed)
  return (np.tanh(rng.normal(size=(b, k))).astype(np.float32),
          np.tanh(rng.normal(size=(b, k))).astype(np.float32))


def _bank(seed, n=40, k=16):
  return np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32)


def _call(obj, hx, hy, memory, index, step):
  out = {"image/h": jnp.asarray(hx), "point/h": jnp.asarray(hy)}
  batch = {"index": jnp.asarray(index, jnp.int32)}
  return obj(out, batch, {"memory": jnp.asarray(memory)}, step)


# -- terms -----------------------------------------------------------------------------
def test_memory_contrastive_matches_numpy_sampled_and_full():
  hx, hy = _codes(0)
  memory = _bank(1)
  index = np.array([3, 7, 0, 39, 12, 5, 21, 30])
  negatives = np.random.default_rng(2).integers(0, 40, size=(8, 50))
  ux, uy = deep.l2_normalize(hx), deep.l2_normalize(hy)
  got = deep.memory_contrastive_loss(ux, uy, jnp.asarray(memory), jnp.asarray(index),
                                     jnp.asarray(negatives, jnp.int32), 0.9)
  np.testing.assert_allclose(float(got), np_lc_memory(hx, hy, memory, index, negatives, 0.9),
                             rtol=1e-5)
  got = deep.memory_contrastive_loss(ux, uy, jnp.asarray(memory), jnp.asarray(index), None,
                                     0.3)
  np.testing.assert_allclose(float(got), np_lc_memory(hx, hy, memory, index, None, 0.3),
                             rtol=1e-5)


def test_in_batch_contrastive_matches_numpy():
  hx, hy = _codes(3)
  got = deep.in_batch_contrastive_loss(deep.l2_normalize(hx), deep.l2_normalize(hy), 0.5)
  np.testing.assert_allclose(float(got), np_lc_in_batch(hx, hy, 0.5), rtol=1e-5)


@pytest.mark.parametrize("m,xi,kappa", [(0.2, 0.1, 1.0), (0.5, 1.0, 0.3), (0.0, 0.0, 1.0)])
def test_ranking_loss_matches_numpy(m, xi, kappa):
  hx, hy = _codes(4)
  hy[2] = hx[2] + 0.05  # one well-aligned pair, so both cases of Eq. (8) occur
  got = deep.cross_modal_ranking_loss(deep.l2_normalize(hx), deep.l2_normalize(hy), m, xi,
                                      kappa)
  np.testing.assert_allclose(float(got), np_crl(hx, hy, m, xi, kappa), rtol=1e-5)


def test_ranking_loss_shift_zero_is_infonce_plus_margin():
  """xi = 0, kappa = 1: S = M, so each direction is InfoNCE at t = 1 plus m."""
  hx, hy = _codes(5)
  ux, uy = np.asarray(deep.l2_normalize(hx)), np.asarray(deep.l2_normalize(hy))
  mat = ux @ uy.T
  nce = lambda a: np.mean(np.log(np.exp(a).sum(1)) - np.diag(a))  # noqa: E731
  got = deep.cross_modal_ranking_loss(ux, uy, 0.3, 0.0)
  np.testing.assert_allclose(float(got), nce(mat) + nce(mat.T) + 0.6, rtol=1e-5)


def test_memory_update_hand_worked():
  # Bank row 2 = (0, -1) meets target n(((1,0) + (0,1))/2) = (s, s) at d = 0.5:
  # n((s/2, -1/2 + s/2)) = (cos 22.5deg, -sin 22.5deg). Bank row 0 = (0.6, 0.8) meets
  # (1, 0): n((0.8, 0.4)) = (2, 1)/sqrt(5). Row 1 is untouched.
  memory = jnp.array([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
  ux = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  uy = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  index = jnp.array([2, 0])
  got = np.asarray(deep.update_memory(memory, index, ux, uy, 0.5))
  c, s = math.cos(math.pi / 8), math.sin(math.pi / 8)
  want = [[2 / math.sqrt(5), 1 / math.sqrt(5)], [1.0, 0.0], [c, -s]]
  np.testing.assert_allclose(got, want, atol=1e-6)
  # d = 0 (warm-up) writes the normalised targets.
  got = np.asarray(deep.update_memory(memory, index, ux, uy, 0.0))
  r = 1 / math.sqrt(2)
  np.testing.assert_allclose(got, [[1.0, 0.0], [1.0, 0.0], [r, r]], atol=1e-6)
  np.testing.assert_allclose(
      got, np_update(memory, [2, 0], np.asarray(ux), np.asarray(uy), 0.0), atol=1e-6)


def test_init_and_negatives():
  obj = deep.UcchObjective(SPEC, 16)
  mem = np.asarray(obj.init_state(40)["memory"])
  assert mem.shape == (40, 16) and mem.dtype == np.float32
  np.testing.assert_allclose(np.abs(mem), 0.25)  # +-1/sqrt(16), unit rows
  np.testing.assert_array_equal(mem, np.asarray(obj.init_state(40)["memory"]))
  a = np.asarray(deep.sample_negatives(0, 7, 8, 10, 500))
  assert a.shape == (8, 500) and a.dtype == np.int32 and a.min() == 0 and a.max() == 9
  np.testing.assert_array_equal(a, np.asarray(deep.sample_negatives(0, 7, 8, 10, 500)))
  assert not np.array_equal(a, np.asarray(deep.sample_negatives(0, 8, 8, 10, 500)))
  assert np.bincount(a.ravel(), minlength=10).min() > 300  # ~ uniform (400 expected)


def test_registered_and_rejects_meaningless_settings():
  assert "ucch" in objectives.available()
  assert isinstance(objectives.get_objective(SPEC, 32), deep.UcchObjective)
  with pytest.raises(ValueError, match="lambda_r=0.*pairs=full_full"):
    objectives.get_objective(LossSpec(objective="ucch"), 32)
  with pytest.raises(ValueError, match="supervised"):
    deep.UcchObjective(dataclasses.replace(SPEC, supervised=True), 32)
  with pytest.raises(ValueError, match="temperature"):
    deep.UcchObjective(SPEC, 32, deep.UcchSettings(temperature=0.0))
  # Every term CMAH adds to L_c, set, is named: UCCH's loss would ignore it.
  for name, value in (("relation_weight", 1.0), ("queue_size", 256), ("embed_weight", 2.0),
                      ("reconstruction_only_steps", 100), ("prototype_weight", 0.5)):
    with pytest.raises(ValueError, match=rf"config\.loss\.{name}=0"):
      deep.UcchObjective(dataclasses.replace(SPEC, **{name: value}), 32)


def test_config_temperature_reaches_the_loss():
  """`config.loss.ucch_temperature` (default UCCH's 0.9) is the t of Eq. (4) the
  registered objective uses: its loss equals the NumPy reference at that t, not at 0.9."""
  assert objectives.get_objective(SPEC, 16).settings.temperature == 0.9
  spec = dataclasses.replace(SPEC, ucch_temperature=0.2)
  obj = objectives.get_objective(spec, 16)
  assert deep.UcchObjective(spec, 16).settings == obj.settings  # built directly: the same
  assert deep.UcchObjective(spec, 16, deep.UcchSettings()).settings.temperature == 0.9
  hx, hy = _codes(3)
  memory, index = _bank(4), np.arange(8) * 5
  neg = np.asarray(deep.sample_negatives(0, 5, 8, 40, obj.settings.num_negatives,
                                         obj.settings.stream))
  total, _, _ = _call(jax.jit(obj), hx, hy, memory, index, 5)
  want, _, _ = np_total(hx, hy, memory, index, neg, deep.UcchSettings(temperature=0.2),
                        False)
  at_default, _, _ = np_total(hx, hy, memory, index, neg, deep.UcchSettings(), False)
  np.testing.assert_allclose(float(total), want, rtol=1e-5)
  assert abs(want - at_default) > 0.1
  with pytest.raises(ValueError, match="ucch_temperature"):
    LossSpec(objective="ucch", ucch_temperature=0.0).validate()


def test_the_runs_seed_draws_the_bank_and_the_negatives():
  """`get_objective(spec, bits, seed)`: UCCH's bank and sampled negatives come from the
  run's seed, on a key stream of their own (`UCCH_STREAM`), so seeds differ in them as in
  everything else and no trainer key is reused; with `ucch_seed_per_run=False` (the runs
  recorded before, and the methods pinned to them) every seed draws from key(0) itself."""
  from cmah_jax import train  # pylint: disable=import-outside-toplevel
  hx, hy = _codes(3)
  memory, index = _bank(4), np.arange(8) * 5
  old = dataclasses.replace(SPEC, ucch_seed_per_run=False)
  for seed in (0, 1, 2):
    obj = objectives.get_objective(SPEC, 16, seed)
    assert (obj.settings.seed, obj.settings.stream) == (seed, deep.UCCH_STREAM)
    before = objectives.get_objective(old, 16, seed).settings
    assert (before.seed, before.stream) == (0, None)
    total, _, _ = _call(jax.jit(obj), hx, hy, memory, index, 5)  # samples (past warm-up)
    key = jax.random.fold_in(jax.random.fold_in(
        jax.random.fold_in(jax.random.key(seed), deep.UCCH_STREAM), 1), 5)
    neg = np.asarray(jax.random.randint(key, (8, obj.settings.num_negatives), 0, 40))
    want, _, _ = np_total(hx, hy, memory, index, neg, deep.UcchSettings(seed=seed), False)
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
  banks = [np.asarray(objectives.get_objective(SPEC, 16, s).init_state(40)["memory"])
           for s in (0, 1)]
  assert (banks[0] != banks[1]).mean() > 0.3  # independent signs: about half differ
  old_bank = np.asarray(objectives.get_objective(old, 16, 1).init_state(40)["memory"])
  np.testing.assert_array_equal(old_bank, deep.init_memory(40, 16, 0))
  # The old bank's key was the parameters' initialisation key of a seed-0 run; today's
  # is none of the trainer's.
  init_key, train_key = train.run_keys(0)
  rademacher = lambda k: np.asarray(jax.random.rademacher(k, (40, 16), jnp.float32)) / 4
  np.testing.assert_array_equal(old_bank, rademacher(init_key))
  assert not any(np.array_equal(banks[0], rademacher(k)) for k in (init_key, train_key))


def test_the_methods_recorded_before_keep_seed_0():
  """Today's `ucch` draws from the run's seed; the UCCH methods whose runs were recorded
  before (`ucch_r10`, `ucch_paper`, the carve's `ucch_t*`) pin seed 0, which is what they
  ran with; CMAH's objective reads neither."""
  from cmah_jax.experiments import methods  # pylint: disable=import-outside-toplevel
  assert "loss.ucch_seed_per_run" not in dict(methods.get_method("ucch").pinned)
  for name in ("ucch_r10", "ucch_paper", "ucch_t0.07", "ucch_t0.2", "ucch_t0.5"):
    assert dict(methods.get_method(name).pinned)["loss.ucch_seed_per_run"] is False, name


# -- objective -------------------------------------------------------------------------
def test_objective_warmup_then_memory_against_numpy():
  """N = 40, B = 8: steps 0-4 are the warm-up epoch, step 5 samples from the bank."""
  st = deep.UcchSettings()
  obj = deep.UcchObjective(SPEC, 16, st)
  assert obj.warmup_steps(40, 8) == 5
  hx, hy = _codes(6)
  memory = _bank(7)
  index = np.arange(8) * 5
  f = jax.jit(obj)
  for step, warm in ((4, True), (5, False)):
    total, terms, new = _call(f, hx, hy, memory, index, step)
    neg = np.asarray(deep.sample_negatives(st.seed, step, 8, 40, st.num_negatives))
    want, lc, lr = np_total(hx, hy, memory, index, neg, st, warm)
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss/contrastive"]), lc, rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss/ranking"]), lr, rtol=1e-5)
    assert float(terms["loss/total"]) == float(total)
    assert float(terms["ucch/warmup"]) == float(warm)
    d = 0.0 if warm else st.momentum
    np.testing.assert_allclose(np.asarray(new["memory"]),
                               np_update(memory, index, hx, hy, d), atol=1e-6)


@pytest.mark.parametrize("step", [2, 9])
def test_gradients_match_finite_differences(step):
  """jax.grad w.r.t. h equals central differences of the NumPy reference, in which the
  keys sgn(.) are piecewise constant (no gradient through them, as in UCCH) and the case
  of Eq. (8) is fixed; the bank gets no gradient."""
  st = deep.UcchSettings(num_negatives=20)
  obj = deep.UcchObjective(SPEC, 6, st)
  hx, hy = _codes(8, b=4, k=6)
  memory = _bank(9, n=12, k=6)
  index = np.array([1, 4, 7, 10])
  warm = step < obj.warmup_steps(12, 4)
  neg = np.asarray(deep.sample_negatives(st.seed, step, 4, 12, 20))

  def loss(hx_, hy_, mem_):
    return _call(obj, hx_, hy_, mem_, index, step)[0]

  gx, gy, gm = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(hx, hy, memory)
  np.testing.assert_array_equal(np.asarray(gm), 0.0)
  eps = 1e-5
  for h, g, which in ((hx, gx, 0), (hy, gy, 1)):
    num = np.zeros(h.shape)
    for idx in np.ndindex(*h.shape):
      hp, hm = np.array(h, np.float64), np.array(h, np.float64)
      hp[idx] += eps
      hm[idx] -= eps
      args_p = (hp, hy) if which == 0 else (hx, hp)
      args_m = (hm, hy) if which == 0 else (hx, hm)
      num[idx] = (np_total(*args_p, memory, index, neg, st, warm)[0]
                  - np_total(*args_m, memory, index, neg, st, warm)[0]) / (2 * eps)
    assert np.abs(num).max() > 1e-3
    np.testing.assert_allclose(np.asarray(g), num, atol=2e-4, rtol=1e-3)


def test_resume_continues_exactly():
  """Two steps carrying the returned bank == the second step alone on a bank updated by
  hand (NumPy Eq. 5) after the first."""
  obj = deep.UcchObjective(SPEC, 16)
  f = jax.jit(obj)
  memory = np.asarray(obj.init_state(40)["memory"])
  (hx1, hy1), (hx2, hy2) = _codes(10), _codes(11)
  i1, i2 = np.arange(8), np.arange(8, 16)
  _, _, s1 = _call(f, hx1, hy1, memory, i1, 6)
  t2, terms2, s2 = _call(f, hx2, hy2, s1["memory"], i2, 7)
  by_hand = np_update(memory, i1, hx1, hy1, obj.settings.momentum).astype(np.float32)
  np.testing.assert_allclose(np.asarray(s1["memory"]), by_hand, atol=1e-6)
  t2b, terms2b, s2b = _call(f, hx2, hy2, by_hand, i2, 7)
  np.testing.assert_allclose(float(t2b), float(t2), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(s2b["memory"]), np.asarray(s2["memory"]), atol=1e-6)
  for k in terms2:
    np.testing.assert_allclose(float(terms2b[k]), float(terms2[k]), rtol=1e-6)


def test_two_devices_equal_one():
  obj = deep.UcchObjective(SPEC, 16)
  hx, hy = _codes(12)
  memory = jnp.asarray(_bank(13))
  index = np.arange(8) * 3
  mesh = make_mesh(jax.devices()[:2])
  sh, rep = data_sharding(mesh), replicated(mesh)
  f = jax.jit(obj)
  for step in (1, 8):
    t1, terms1, m1 = _call(f, hx, hy, memory, index, step)
    out = {"image/h": jax.device_put(hx, sh), "point/h": jax.device_put(hy, sh)}
    batch = {"index": jax.device_put(jnp.asarray(index, jnp.int32), sh)}
    assert len(out["image/h"].sharding.device_set) == 2
    t2, terms2, m2 = f(out, batch, {"memory": jax.device_put(memory, rep)}, step)
    np.testing.assert_allclose(float(t2), float(t1), rtol=1e-6)
    for k in terms1:
      np.testing.assert_allclose(float(terms2[k]), float(terms1[k]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(m2["memory"]), np.asarray(m1["memory"]), atol=1e-6)

"""The learned quantiser (`cmah_jax.quantizer`, ITQ on trained codes): a hand-worked case
where plain signs collide and the fitted rotation separates the codes, the fit against its
definition (pooled mean, orthogonal rotation, ITQ's loss never above its start), quantize
against NumPy under jit / vmap, and the file round trip with clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import quantizer as quantizer_lib
from cmah_jax.baselines import itq


def test_identity_is_the_networks_sign():
  h = np.array([[0.3, -0.2, 0.0], [-1.0, 0.5, -0.0]], np.float32)
  identity = quantizer_lib.Quantizer(np.zeros(3, np.float32), np.eye(3, dtype=np.float32))
  got = np.asarray(quantizer_lib.quantize(jnp.asarray(h), identity))
  np.testing.assert_array_equal(got, [[1, -1, 1], [-1, 1, 1]])


def test_rotation_separates_codes_that_plain_signs_collide():
  # Four objects on the axes of 2-D code space (two per modality). Plain signs map east
  # (a, 0) and north (0, a) both to (+1, +1): 3 distinct codes for 4 objects. The points
  # sit on the diagonals of the ITQ loss's best rotations (45 degrees), where each lands in
  # its own quadrant: 4 distinct codes, and the quantisation loss drops from
  # 4 * (1 + (1 - a)^2) ... to 4 * 2 (1 - a / sqrt 2)^2.
  a = 0.8
  h_points = np.array([[a, 0.0], [-a, 0.0]], np.float32)
  h_images = np.array([[0.0, a], [0.0, -a]], np.float32)
  plain = itq.sign(np.concatenate([h_points, h_images]))
  assert len({tuple(c) for c in plain.tolist()}) == 3
  q = quantizer_lib.fit_quantizer(h_points, h_images, seed=0)
  np.testing.assert_allclose(q.mean, 0.0, atol=1e-7)
  codes = np.asarray(quantizer_lib.quantize(
      jnp.asarray(np.concatenate([h_points, h_images])), q))
  assert len({tuple(c) for c in codes.tolist()}) == 4
  v = np.concatenate([h_points, h_images]).astype(np.float64)
  np.testing.assert_allclose(itq.quantization_loss(v, np.asarray(q.rotation, np.float64)),
                             4 * 2 * (1 - a / np.sqrt(2)) ** 2, rtol=1e-4)


def test_fit_centres_on_the_pooled_mean_and_rotates_orthogonally():
  rng = np.random.default_rng(0)
  h_points = np.tanh(rng.normal(0.3, 1.0, size=(40, 6))).astype(np.float32)
  h_images = np.tanh(rng.normal(-0.1, 1.0, size=(30, 6))).astype(np.float32)
  q = quantizer_lib.fit_quantizer(h_points, h_images, seed=3, iterations=20)
  pooled = np.concatenate([h_points, h_images]).astype(np.float64)
  np.testing.assert_allclose(q.mean, pooled.mean(axis=0), rtol=1e-6, atol=1e-7)
  r = np.asarray(q.rotation, np.float64)
  np.testing.assert_allclose(r @ r.T, np.eye(6), atol=1e-5)
  # ITQ never ends above where it started (its seeded random rotation).
  v = pooled - pooled.mean(axis=0)
  assert itq.quantization_loss(v, r) <= itq.quantization_loss(v, itq.random_rotation(6, 3)) + 1e-6
  # Same data and seed, same quantiser; another seed, another rotation.
  again = quantizer_lib.fit_quantizer(h_points, h_images, seed=3, iterations=20)
  np.testing.assert_array_equal(again.rotation, q.rotation)
  other = quantizer_lib.fit_quantizer(h_points, h_images, seed=4, iterations=20)
  assert not np.allclose(other.rotation, q.rotation)


def test_fewer_bits_project_onto_the_top_principal_directions_then_rotate():
  # Codes spread widely along two directions of a 5-D space and barely along the rest:
  # cut to 2 bits, W spans those two directions (against NumPy's eigendecomposition of the
  # covariance), has orthonormal columns, and the codes are sign((h - mean) W).
  rng = np.random.default_rng(5)
  basis = np.linalg.qr(rng.normal(size=(5, 5)))[0]
  scales = np.array([3.0, 2.0, 0.05, 0.04, 0.03])
  pooled = (rng.normal(size=(80, 5)) * scales) @ basis.T + 0.4
  h_points, h_images = pooled[:50].astype(np.float32), pooled[50:].astype(np.float32)
  q = quantizer_lib.fit_quantizer(h_points, h_images, seed=2, bits=2)
  assert (q.bits, q.code_bits) == (5, 2) and q.rotation.shape == (5, 2)
  w = np.asarray(q.rotation, np.float64)
  np.testing.assert_allclose(w.T @ w, np.eye(2), atol=1e-5)
  x = np.concatenate([h_points, h_images]).astype(np.float64)
  x -= x.mean(axis=0)
  top = np.linalg.eigh(x.T @ x)[1][:, -2:]
  np.testing.assert_allclose(w @ w.T, top @ top.T, atol=1e-4)
  codes = np.asarray(quantizer_lib.quantize(jnp.asarray(h_points), q))
  np.testing.assert_array_equal(codes, np.where((h_points - q.mean) @ q.rotation >= 0, 1.0, -1.0))
  assert codes.shape == (50, 2)
  # All the bits: the plain ITQ quantiser, unchanged.
  full = quantizer_lib.fit_quantizer(h_points, h_images, seed=2)
  np.testing.assert_array_equal(
      quantizer_lib.fit_quantizer(h_points, h_images, seed=2, bits=5).rotation, full.rotation)
  for bad in (0, 6):
    with pytest.raises(ValueError, match=r"bits must be in \[1, 5\]"):
      quantizer_lib.fit_quantizer(h_points, h_images, bits=bad)


def test_one_bit_cut_along_the_class_direction_retrieves_perfectly():
  # Two classes apart along one direction of an 8-D space (the top principal one: variance
  # 0.81 against 0.25), noise in the other seven, both towers alike: the 1-bit code cut by
  # PCA-ITQ is the class, so both directions score mAP 1, while the 8-bit codes, seven of
  # whose bits are noise, score less.
  from cmah_jax.experiments import representation  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)

  def split(n):
    label = np.arange(n) % 2
    h = rng.normal(0, 0.5, size=(n, 8))
    h[:, 3] = np.where(label == 1, 0.9, -0.9) + rng.normal(0, 0.05, size=n)
    g = h + rng.normal(0, 0.02, size=h.shape)
    return {"point/h": h.astype(np.float32), "image/h": g.astype(np.float32), "label": label}

  maps = representation.reduced_code_maps(split(60), split(10), split(30), (1, 8))
  assert maps["1"] == {"i2p": pytest.approx(1.0), "p2i": pytest.approx(1.0)}
  assert maps["8"]["i2p"] < 0.99 and maps["8"]["p2i"] < 0.99


def test_quantize_matches_numpy_under_jit_and_vmap():
  rng = np.random.default_rng(1)
  q = quantizer_lib.Quantizer(rng.normal(size=5).astype(np.float32),
                              itq.random_rotation(5, 0).astype(np.float32))
  h = rng.normal(size=(3, 7, 5)).astype(np.float32)
  want = np.where((h - q.mean) @ q.rotation >= 0, 1.0, -1.0)
  got = jax.jit(quantizer_lib.quantize)(jnp.asarray(h), q)
  np.testing.assert_array_equal(np.asarray(got), want)
  per_item = jax.vmap(quantizer_lib.quantize, in_axes=(0, None))(jnp.asarray(h), q)
  np.testing.assert_array_equal(np.asarray(per_item), want)
  with pytest.raises(ValueError, match="4 bits, quantizer of 5"):
    quantizer_lib.quantize(jnp.zeros((2, 4)), q)
  # An encoded split: each tower's codes of its h (NumPy reference), labels carried over.
  split = {"image/h": h[0], "point/h": h[1], "label": np.arange(7), "image": None}
  codes = quantizer_lib.quantize_split(split, q)
  assert sorted(codes) == ["image", "label", "point"]
  np.testing.assert_array_equal(codes["image"], want[0])
  np.testing.assert_array_equal(codes["point"], want[1])
  assert codes["label"] is split["label"] and isinstance(codes["point"], np.ndarray)


def test_file_round_trip_and_errors(tmp_path):
  assert quantizer_lib.load(str(tmp_path)) is None
  q = quantizer_lib.Quantizer(np.arange(3, dtype=np.float32),
                              itq.random_rotation(3, 1).astype(np.float32))
  path = quantizer_lib.save(str(tmp_path), q)
  assert path.endswith("quantizer.npz")
  back = quantizer_lib.load(str(tmp_path))
  np.testing.assert_array_equal(back.mean, q.mean)
  np.testing.assert_array_equal(back.rotation, q.rotation)
  # A quantiser is the one of the checkpoint it was fitted at: asked for another, none.
  quantizer_lib.save(str(tmp_path), q, step=3)
  np.testing.assert_array_equal(quantizer_lib.load(str(tmp_path), step=3).rotation, q.rotation)
  assert quantizer_lib.load(str(tmp_path), step=4) is None
  assert quantizer_lib.load(str(tmp_path)) is not None
  np.savez(path, mean=np.zeros(3), rotation=np.eye(4))
  with pytest.raises(ValueError, match="quantizer.npz"):
    quantizer_lib.load(str(tmp_path))
  (tmp_path / "quantizer.npz").write_text("not numpy")
  with pytest.raises(ValueError, match="quantizer.npz"):
    quantizer_lib.load(str(tmp_path))
  with pytest.raises(ValueError, match="NaN"):
    quantizer_lib.fit_quantizer(np.full((2, 3), np.nan), np.zeros((2, 3)))
  cut = quantizer_lib.Quantizer(np.zeros(3, np.float32), np.eye(3, 2, dtype=np.float32))
  with pytest.raises(ValueError, match="3-bit code length; this one makes 2-bit"):
    quantizer_lib.save(str(tmp_path), cut)


def test_encoder_and_index_use_and_keep_the_quantizers_codes(tmp_path):
  import dataclasses  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  from cmah_jax import index as cli  # pylint: disable=import-outside-toplevel
  from cmah_jax.retrieval import build, encode, readers  # pylint: disable=import-outside-toplevel
  from cmah_jax.retrieval import index as index_lib  # pylint: disable=import-outside-toplevel
  from test_retrieval_cli import BITS, _model  # pylint: disable=import-outside-toplevel

  model, params = _model("tiny", BITS, 0)
  plain = encode.bind(model, params, step=3, config_hash="run")
  rng = np.random.default_rng(2)
  q = quantizer_lib.Quantizer(rng.normal(0, 0.1, BITS).astype(np.float32),
                              itq.random_rotation(BITS, 5).astype(np.float32))
  learned = dataclasses.replace(plain, quantizer=q)
  assert index_lib.fingerprint_of(plain)["codes"] == "sign"
  assert index_lib.fingerprint_of(learned)["codes"] == f"itq:{quantizer_lib.digest(q)}"
  points = rng.normal(size=(5, model.config.num_points, 3)).astype(np.float32)
  h = np.asarray(model.apply({"params": params}, points=points, train=False)["point/h"])
  np.testing.assert_array_equal(encode.Encoder(learned, batch_size=4).encode("points", points),
                                np.where((h - q.mean) @ q.rotation >= 0, 1.0, -1.0))
  np.testing.assert_array_equal(encode.Encoder(plain, batch_size=4).encode("points", points),
                                np.where(h >= 0, 1.0, -1.0))
  # An index of sign codes refuses the quantiser's model, and the command line extends and
  # searches it with sign codes (the codes it was built with).
  folder = tmp_path / "clouds"
  folder.mkdir()
  for i, p in enumerate(points):
    np.save(folder / f"{i}.npy", p)
  out = str(tmp_path / "index")
  build.build_index(out, plain, points=str(folder), workdir="run", log=None)
  idx = index_lib.HashIndex.open(out)
  assert idx.fingerprint["codes"] == "sign"
  sign_codes = idx.codes()
  with pytest.raises(index_lib.FingerprintMismatch, match="codes"):
    idx.check_model(learned)
  args = types.SimpleNamespace(workdir="run")
  assert cli._model_for(idx, args, lambda w: learned).quantizer is None
  # Built with the quantiser's codes, it keeps them.
  build.build_index(out, learned, points=str(folder), workdir="run", log=None)
  idx = index_lib.HashIndex.open(out)
  assert idx.fingerprint["codes"] == index_lib.fingerprint_of(learned)["codes"]
  assert cli._model_for(idx, args, lambda w: learned).quantizer is q
  # Its codes are the quantiser's of each file as the readers load it (normalised, seeded by
  # its id), through the model and NumPy here.
  ids = [e["id"] for e in idx.entries(list(range(idx.count)))]
  loaded = np.stack([readers.load_points(str(folder / i), model.config.num_points, i)
                     for i in ids])
  h_loaded = np.asarray(model.apply({"params": params}, points=loaded, train=False)["point/h"])
  np.testing.assert_array_equal(encode.unpack_faiss(idx.codes(), BITS),
                                np.where((h_loaded - q.mean) @ q.rotation >= 0, 1.0, -1.0))
  assert not np.array_equal(idx.codes(), sign_codes)

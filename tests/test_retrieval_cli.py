"""Retrieval with a real (tiny, untrained) model: sharded encoding, build / add / search /
export / info through the command line, bad-input reports, crashes mid-build, the dataset
path against the evaluator's codes.

Until `cmah_jax.inference.load_trained` lands, the CLI gets its model from `fake_loader`,
which reads a fake run directory written by `make_fake_workdir` (`main(argv, loader=...)`);
`test_cli_with_load_trained` runs the same commands through the real loader once it exists.
"""
import dataclasses
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from PIL import Image

import test_retrieval_readers as files_lib
from cmah_jax import config as config_lib
from cmah_jax import index as cli
from cmah_jax import models, sharding
from cmah_jax.datasets import get_builder
from cmah_jax.evaluate import RetrievalEvaluator
from cmah_jax.input import InputSpec
from cmah_jax.metrics import rank_database
from cmah_jax.retrieval import build, encode, readers
from cmah_jax.retrieval import index as index_lib

BITS = 16


# ----------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def _model(variant, bits, seed):
  model, variables = models.build(variant, bits, jax.random.key(seed))
  return model, variables["params"]


def make_fake_workdir(path, seed=0, step=3):
  """A stand-in for a training run until load_trained exists: which model, which step."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "fake_run.json"), "w") as f:
    json.dump({"variant": "tiny", "bits": BITS, "seed": seed, "step": step}, f)
  return str(path)


def fake_loader(workdir):
  with open(os.path.join(workdir, "fake_run.json")) as f:
    run = json.load(f)
  model, params = _model(run["variant"], run["bits"], run["seed"])
  digest = hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()[:12]
  return encode.bind(model, params, step=run["step"], config_hash=digest)


def run_cli(argv, capsys):
  code = cli.main([str(a) for a in argv], loader=fake_loader)
  out = capsys.readouterr()
  return code, out.out, out.err


def make_mixed_folder(root):
  """Every supported kind, one truncated PLY, one non-image .png, one .txt."""
  root.mkdir(parents=True, exist_ok=True)
  (root / "meshes").mkdir()
  for name, writer in files_lib.MESH_WRITERS.items():
    writer(root / "meshes" / name)
  rng = np.random.default_rng(0)
  np.save(root / "cloud.npy", rng.normal(size=(700, 3)).astype(np.float32))
  files_lib.write_ply(root / "cloud.ply", binary=True, faces=False)
  (root / "bad").mkdir()
  (root / "bad" / "trunc.ply").write_bytes((root / "meshes" / "binary.ply").read_bytes()[:-9])
  (root / "bad" / "notes.png").write_text("not an image")
  (root / "readme.txt").write_text("hello")
  img = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
  Image.fromarray(img).save(root / "render.png")
  Image.fromarray(img[::-1]).save(root / "photo.jpg", quality=90)
  return root


def photo_like(path, size=(75, 52)):
  """A JPEG of another size, not square: a smooth blob on a gradient."""
  w, h = size
  yy, xx = np.mgrid[0:h, 0:w]
  img = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 90.0)], -1)
  img[(xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (h / 3) ** 2] = (220, 40, 30)
  Image.fromarray(img.astype(np.uint8)).save(path, "JPEG", quality=85)
  return str(path)


# ----------------------------------------------------------------------------- encoder
def test_bind_hash_covers_weights_and_config_but_not_a_later_field_at_its_neutral(
    monkeypatch):
  """A model bound without a run's hash is fingerprinted by its weights and its config; a
  model field that a later release adds (registered in `config.ADDED_LATER`) leaves the
  fingerprint of a model that keeps it at its neutral value as it was, and changes it when
  set, as a field of today's does."""
  model, params = _model("tiny", BITS, 0)
  base = encode.bind(model, params).config_hash
  assert base.startswith("model:")
  assert encode.bind(model, _model("tiny", BITS, 1)[1]).config_hash != base
  later_cls = dataclasses.make_dataclass(
      "LaterModelConfig", [("future_field", int, dataclasses.field(default=0))],
      bases=(type(model.config),), frozen=True)
  monkeypatch.setitem(config_lib.ADDED_LATER, "model.future_field", 0)
  for value, same in ((0, True), (3, False)):
    later = later_cls(**dataclasses.asdict(model.config), future_field=value)
    assert (encode.bind(types.SimpleNamespace(config=later), params).config_hash
            == base) == same, value
  changed = dataclasses.replace(model.config, fusion_context="code")
  assert encode.bind(types.SimpleNamespace(config=changed), params).config_hash != base
  # A tuple field is compared as JSON with its neutral list: () is MAE's linear patches.
  assert "image_stem_dims" not in encode.model_identity(
      dataclasses.replace(model.config, image_stem_dims=()))
  assert encode.model_identity(dataclasses.replace(model.config, image_stem_dims=(32,)))[
      "image_stem_dims"] == (32,)


def test_sharded_encoder_equals_one_example_at_a_time():
  bound = fake_loader(make_fake_workdir(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                     "cmah_fake_run_enc")))
  rng = np.random.default_rng(0)
  pts = np.stack([readers.geometry.normalize_unit_sphere_np(rng.normal(size=(256, 3)))
                  for _ in range(10)])
  imgs = rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
  mesh = sharding.make_mesh(jax.devices()[:4])
  enc = encode.Encoder(bound, batch_size=6, mesh=mesh)  # rounded to 8; 10 = 8 + 2 padded
  assert enc.batch_size == 8
  progress_out = io.StringIO()
  got_p = enc.encode("points", pts, encode.Progress("t", 10, every=1, stream=progress_out))
  got_i = enc.encode("images", imgs)
  assert "10/10 files (100.0%)" in progress_out.getvalue() or "10/10" in progress_out.getvalue()
  for j in range(10):
    ref = bound.model.apply({"params": bound.params}, points=pts[j:j + 1], train=False)
    np.testing.assert_array_equal(got_p[j], np.asarray(ref["point/code"])[0])
    ref = bound.model.apply({"params": bound.params}, images=imgs[j:j + 1], train=False)
    np.testing.assert_array_equal(got_i[j], np.asarray(ref["image/code"])[0])
  with pytest.raises(ValueError, match="expects"):
    enc.encode("points", np.zeros((2, 100, 3), np.float32))


# ----------------------------------------------------------------------------- the CLI
def test_cli_end_to_end_on_a_mixed_folder(tmp_path, capsys):
  wd = make_fake_workdir(tmp_path / "run")
  folder = make_mixed_folder(tmp_path / "mixed")
  pidx, iidx = tmp_path / "points.idx", tmp_path / "images.idx"

  code, out, err = run_cli(["build", f"--workdir={wd}", f"--points={folder}",
                            f"--out={pidx}", "--batch_size=4"], capsys)
  assert code == 0, err
  assert "indexed 10 points" in out and "failed 1" in out and "ignored 4" in out
  assert "bad/trunc.ply: not a readable PLY" in out
  assert "skipped bad/trunc.ply" in err and "encode points: 11/11 files" in err
  for name in ("bad/notes.png", "render.png", "photo.jpg", "readme.txt"):
    assert f"  {name}: " in out

  code, out, err = run_cli(["build", f"--workdir={wd}", f"--images={folder}",
                            f"--out={iidx}", "--quiet"], capsys)
  assert code == 0, err
  assert "indexed 2 images" in out and "bad/notes.png: not an image" in out and err == ""

  # A photo-like query (JPEG, 75x52) against the point index; a mesh against the images.
  query = photo_like(tmp_path / "query.jpg")
  js, pic = tmp_path / "r.json", tmp_path / "r.png"
  code, out, err = run_cli(["search", f"--index={pidx}", f"--query={query}",
                            f"--query={folder / 'meshes' / 'box.obj'}", "--k=5",
                            f"--json={js}", f"--picture={pic}"], capsys)
  assert code == 0, err
  assert "rank  distance  id" in out
  results = json.loads(js.read_text())
  assert [r["query"] for r in results] == [query, str(folder / "meshes" / "box.obj")]
  for r in results:
    assert set(r) == {"query", "results"} and len(r["results"]) == 5
    assert all(set(e) == {"id", "path", "distance"} for e in r["results"])
    d = [e["distance"] for e in r["results"]]
    assert d == sorted(d) and all(0 <= x <= BITS for x in d)
  # A query that is an indexed file: the same points (same id -> same samples), distance 0.
  idx = index_lib.HashIndex.open(pidx)
  row = [e["id"] for e in idx.entries(range(idx.count))].index("meshes/box.obj")
  own = readers.load_points(str(folder / "meshes" / "box.obj"), 256, "meshes/box.obj")
  code_own = encode.pack_faiss(encode.Encoder(fake_loader(wd), 4).encode("points", own[None]))
  np.testing.assert_array_equal(code_own[0], idx.codes([row])[0])
  assert Image.open(pic).size[0] > 200

  code, out, err = run_cli(["search", f"--index={iidx}",
                            f"--query={folder / 'meshes' / 'binary.stl'}", "--k=10"], capsys)
  assert code == 0, err
  assert out.count("render.png") + out.count("photo.jpg") == 2  # k capped at the 2 codes

  code, out, err = run_cli(["info", f"--index={pidx}", "--skipped"], capsys)
  assert code == 0 and "10 points, 16 bits" in out and "failed bad/trunc.ply" in out

  # The photo's 5 nearest, by brute force over the index's packed codes (NumPy popcount):
  # the JSON's distances.
  q = encode.pack_faiss(encode.Encoder(fake_loader(wd), 4).encode(
      "images", readers.load_image(query, 32)[None]))
  every = np.unpackbits(idx.codes(range(idx.count)) ^ q[0], axis=1).sum(1)
  assert sorted(every.tolist())[:5] == [e["distance"] for e in results[0]["results"]]
  # faiss export (faiss is an optional extra): the same distances; without it, a clear
  # error.
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError:
    faiss = None
  code, out, err = run_cli(["export", f"--index={pidx}", f"--faiss={tmp_path / 'p.faiss'}"],
                           capsys)
  if faiss is None:
    assert code != 0 and "faiss" in err and "Traceback" not in err, err
  else:
    assert code == 0, err
    fi = faiss.read_index_binary(str(tmp_path / "p.faiss"))
    fd, _ = fi.search(q, 5)
    assert fd[0].tolist() == [e["distance"] for e in results[0]["results"]]

  # add: a new folder, then the same again (ids clash) and with a prefix.
  more = tmp_path / "more"
  more.mkdir()
  np.save(more / "new.npy", np.random.default_rng(9).normal(size=(50, 3)))
  code, out, err = run_cli(["add", f"--index={pidx}", f"--points={more}"], capsys)
  assert code == 0 and "index now holds 11 codes" in out, err
  code, out, err = run_cli(["add", f"--index={pidx}", f"--points={more}"], capsys)
  assert code == 2 and "already in" in err and "new.npy" in err
  code, out, err = run_cli(["add", f"--index={pidx}", f"--points={more}", "--prefix=b/"],
                           capsys)
  assert code == 0 and "index now holds 12 codes" in out
  assert index_lib.HashIndex.open(pidx).entries([11])[0]["id"] == "b/new.npy"
  code, out, err = run_cli(["add", f"--index={pidx}", f"--images={folder}"], capsys)
  assert code == 2 and "index of points" in err

  # Another model (another checkpoint step) is refused, naming both fingerprints.
  other = make_fake_workdir(tmp_path / "run2", step=4)
  code, out, err = run_cli(["search", f"--index={pidx}", f"--query={query}",
                            f"--workdir={other}"], capsys)
  assert code == 2 and "step=3" in err and "step=4" in err and str(other) in err
  code, out, err = run_cli(["add", f"--index={pidx}", f"--points={more}", "--prefix=c/",
                            f"--workdir={other}"], capsys)
  assert code == 2 and "was built by model" in err

  # Errors are one line, exit status 2.
  code, out, err = run_cli(["search", f"--index={tmp_path / 'nope'}", f"--query={query}"],
                           capsys)
  assert code == 2 and err.startswith("error: ") and "not a directory" in err
  code, out, err = run_cli(["search", f"--index={pidx}", f"--query={folder / 'bad/notes.png'}"],
                           capsys)
  assert code == 2 and "not an image" in err


def test_crash_mid_build_keeps_previous_index(tmp_path, monkeypatch, capsys):
  wd = make_fake_workdir(tmp_path / "run")
  folder = tmp_path / "f"
  folder.mkdir()
  rng = np.random.default_rng(1)
  for i in range(12):
    np.save(folder / f"c{i:02d}.npy", rng.normal(size=(300, 3)))
  out = tmp_path / "i.idx"
  assert run_cli(["build", f"--workdir={wd}", f"--points={folder}", f"--out={out}",
                  "--batch_size=4"], capsys)[0] == 0
  manifest = (out / "manifest.json").read_text()
  codes = index_lib.HashIndex.open(out).codes()

  real = readers.load_file

  def flaky(path, *a):
    if path.endswith("c09.npy"):  # after two batches were encoded and written
      raise KeyboardInterrupt
    return real(path, *a)

  monkeypatch.setattr(readers, "load_file", flaky)
  for target in (out, tmp_path / "fresh.idx"):
    with pytest.raises(KeyboardInterrupt):
      build.build_index(str(target), fake_loader(wd), points=str(folder), batch_size=4,
                        log=None)
  assert (out / "manifest.json").read_text() == manifest
  np.testing.assert_array_equal(index_lib.HashIndex.open(out).codes(), codes)
  assert len([n for n in os.listdir(out) if n.startswith("seg-")]) == 1
  assert not (tmp_path / "fresh.idx").exists()


def test_build_with_nothing_readable_writes_nothing(tmp_path):
  wd = make_fake_workdir(tmp_path / "run")
  folder = tmp_path / "f"
  folder.mkdir()
  (folder / "a.npy").write_bytes(b"")
  with pytest.raises(ValueError, match="no file could be indexed"):
    build.build_index(str(tmp_path / "i"), fake_loader(wd), points=str(folder), log=None)
  assert not (tmp_path / "i").exists()


# ----------------------------------------------------------------------------- dataset
def _evaluator_codes(model, params, builder, num_points, image_size, split):
  """The evaluator's codes of `split` ({"image", "point"} float32, "label")."""
  spec = InputSpec(batch_size=8, eval_batch_size=8, num_points=num_points,
                   image_size=image_size, eval_view=0, prefetch=0)
  return RetrievalEvaluator(model, builder, spec, sharding.make_mesh()).encode(params, split)


def test_the_evaluator_refuses_a_pipeline_that_drops_a_batch(tmp_path, monkeypatch):
  """The coverage guard counts the source's objects, not the rows that arrived: a last
  batch lost (60 objects, batches of 8: 7 full and one of 4) is an error, not a smaller
  database."""
  from cmah_jax import evaluate  # pylint: disable=import-outside-toplevel
  builder = get_builder("synthetic_shapes", str(tmp_path / "data"), "tiny")
  builder.download_and_prepare()
  bound = fake_loader(make_fake_workdir(tmp_path / "run"))
  everything = evaluate.eval_batches
  monkeypatch.setattr(evaluate, "eval_batches",
                      lambda *a, **k: list(everything(*a, **k))[:-1])
  with pytest.raises(RuntimeError, match="did not cover each of its 60 objects once "
                     r"\(56 rows\)"):
    _evaluator_codes(bound.model, bound.params, builder, 256, 32, "database")


def test_dataset_build_equals_evaluator_codes(tmp_path, capsys):
  data_dir = tmp_path / "data"
  builder = get_builder("synthetic_shapes", str(data_dir), "tiny")
  builder.download_and_prepare()
  wd = make_fake_workdir(tmp_path / "run")
  bound = fake_loader(wd)
  want = _evaluator_codes(bound.model, bound.params, builder, 256, 32, "database")
  for modality, key in (("points", "point"), ("images", "image")):
    out = tmp_path / f"{modality}.idx"
    code, _, err = run_cli(["build", f"--workdir={wd}",
                            "--dataset=synthetic_shapes/tiny:database", f"--data_dir={data_dir}",
                            f"--modality={modality}", f"--out={out}", "--quiet"], capsys)
    assert code == 0, err
    idx = index_lib.HashIndex.open(out)
    assert idx.count == len(want[key]) == 60
    np.testing.assert_array_equal(idx.codes(), encode.pack_faiss(want[key]))
    ents = idx.entries([0, 59])
    assert ents[0]["id"] == "chair/database-000000"
    assert ents[1]["path"] == "synthetic_shapes/tiny:database[59]"
  # Cross-modal search from a dataset render; the picture loads results from the dataset.
  img = np.asarray(builder.as_data_source(split="query")[0]["images"][0])
  Image.fromarray(img).save(tmp_path / "q.png")
  code, out, err = run_cli(["search", f"--index={tmp_path / 'points.idx'}",
                            f"--query={tmp_path / 'q.png'}", "--k=4",
                            f"--json={tmp_path / 'r.json'}",
                            f"--picture={tmp_path / 'p.png'}"], capsys)
  assert code == 0, err
  # The same top-k (ids and distances) as the evaluator's ranking of that query.
  query = _evaluator_codes(bound.model, bound.params, builder, 256, 32, "query")
  dist, idx = rank_database(query["image"][:1], want["point"], k=4)
  got = json.loads((tmp_path / "r.json").read_text())[0]["results"]
  assert [r["distance"] for r in got] == dist[0].tolist()
  names = [e["id"] for e in index_lib.HashIndex.open(tmp_path / "points.idx").entries(idx[0])]
  assert [r["id"] for r in got] == names
  assert os.path.getsize(tmp_path / "p.png") > 1000


# ----------------------------------------------------------------------------- real loader
def test_cli_with_load_trained(tmp_path):
  """The CLI through the real loader on a short real training run (subprocesses)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = tmp_path / "run"
  subprocess.run([sys.executable, "main.py",
                  f"--config=configs/default.py:runlocal,bits={BITS},data_dir={tmp_path}/data",
                  f"--workdir={run}"], cwd=root, env=env, check=True)
  folder = make_mixed_folder(tmp_path / "mixed")
  py = [sys.executable, "-m", "cmah_jax.index"]
  subprocess.run(py + ["build", f"--workdir={run}", f"--points={folder}",
                       f"--out={tmp_path / 'i'}"], cwd=root, env=env, check=True)
  res = subprocess.run(py + ["search", f"--index={tmp_path / 'i'}",
                             f"--query={photo_like(tmp_path / 'q.jpg')}", "--k=3",
                             f"--json={tmp_path / 'r.json'}"], cwd=root, env=env, check=True)
  assert res.returncode == 0
  assert len(json.loads((tmp_path / "r.json").read_text())[0]["results"]) == 3

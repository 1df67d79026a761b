"""The on-disk index without a model: faiss bit order, chunked exact search against a
brute-force stable argsort, atomic commits under simulated crashes, fingerprints, ids,
locking, and the faiss export."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cmah_jax.ops import hashing
from cmah_jax.retrieval import encode, faiss_export, search
from cmah_jax.retrieval import index as index_lib
from cmah_jax.retrieval.readers import BadInput

FP = {"config_hash": "abc", "bits": 16, "step": 7}


def brute_force(queries, codes, k):
  """Distances and rows of a stable argsort (ties to the lower row)."""
  d = np.bitwise_count(queries[:, None, :] ^ codes[None]).sum(-1).astype(np.int32)
  rows = np.argsort(d, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(d, rows, 1), rows


def make_index(path, codes, segments=(None,), bits=16, fp=FP, prefix="o"):
  """An index of `codes` split into consecutive segments of the given sizes."""
  sizes = [len(codes)] if segments == (None,) else list(segments)
  assert sum(sizes) == len(codes)
  start = 0
  for j, n in enumerate(sizes):
    ids = [f"{prefix}{i:05d}" for i in range(start, start + n)]
    index_lib.write_codes(path, codes[start:start + n], ids, [f"/src/{i}" for i in ids],
                          modality="points", bits=bits, fingerprint=fp, append=j > 0)
    start += n
  return index_lib.HashIndex.open(path)


# ----------------------------------------------------------------------------- bit order
def test_pack_faiss_bit_order_definition():
  rng = np.random.default_rng(0)
  for bits in (8, 13, 64):
    codes = np.where(rng.random((5, bits)) < 0.5, -1.0, 1.0)
    packed = encode.pack_faiss(codes)
    assert packed.shape == (5, -(-bits // 8)) and packed.dtype == np.uint8
    for j in range(bits):  # bit j is bit (j % 8), LSB first, of byte j // 8; 1 = +1
      np.testing.assert_array_equal((packed[:, j // 8] >> (j % 8)) & 1, codes[:, j] > 0)
    np.testing.assert_array_equal(encode.unpack_faiss(packed, bits), codes)
    # Hamming distances agree with the project's MSB-first packing.
    msb = np.asarray(hashing.pack_codes(codes))
    np.testing.assert_array_equal(
        np.bitwise_count(packed[:, None] ^ packed[None]).sum(-1),
        np.bitwise_count(msb[:, None] ^ msb[None]).sum(-1))


def test_pack_faiss_equals_faiss_own_packing():
  faiss = pytest.importorskip("faiss")
  rng = np.random.default_rng(1)
  x = rng.normal(size=(9, 64)).astype(np.float32)
  x[0, :8] = 0.0  # faiss: x >= 0 is a 1 bit, as in our sign (0 -> +1)
  want = np.zeros((9, 8), np.uint8)
  faiss.fvecs2bitvecs(faiss.swig_ptr(x), faiss.swig_ptr(want), 64, 9)
  codes = np.where(x >= 0, 1.0, -1.0)
  np.testing.assert_array_equal(encode.pack_faiss(codes), want)


# ----------------------------------------------------------------------------- search
def test_merge_topk_against_sort():
  rng = np.random.default_rng(2)
  d = rng.integers(0, 4, (6, 40)).astype(np.int32)
  for cut in (0, 1, 17, 40):
    a = np.argsort(d[:, :cut], 1, kind="stable")
    b = np.argsort(d[:, cut:], 1, kind="stable") + cut
    md, mr = search.merge_topk(np.take_along_axis(d, a, 1), a, np.take_along_axis(d, b, 1), b,
                               k=11)
    want = np.argsort(d, 1, kind="stable")[:, :11]
    np.testing.assert_array_equal(mr, want)
    np.testing.assert_array_equal(md, np.take_along_axis(d, want, 1))


@pytest.mark.parametrize("chunk_rows", [97, 1 << 22])
def test_chunked_search_equals_stable_argsort(tmp_path, chunk_rows):
  rng = np.random.default_rng(3)
  # 10 bits in 2 bytes: many ties; 3 segments; chunks that straddle nothing evenly.
  codes = encode.pack_faiss(np.where(rng.random((1000, 10)) < 0.5, -1.0, 1.0))
  queries = encode.pack_faiss(np.where(rng.random((7, 10)) < 0.5, -1.0, 1.0))
  idx = make_index(tmp_path / "i", codes, (400, 350, 250), bits=10,
                   fp=dict(FP, bits=10))
  assert idx.count == 1000 and len(idx.segments) == 3
  np.testing.assert_array_equal(idx.codes(), codes)
  for k in (1, 5, 120, 5000):
    dist, rows = search.search_codes(idx, queries, k, chunk_rows=chunk_rows)
    want_d, want_r = brute_force(queries, codes, min(k, 1000))
    np.testing.assert_array_equal(dist, want_d)
    np.testing.assert_array_equal(rows, want_r)
  ents = idx.entries([999, 0, 400, 750])
  assert [e["id"] for e in ents] == ["o00999", "o00000", "o00400", "o00750"]
  assert ents[0]["path"] == "/src/o00999"
  # Rows across segments, in any order, are the codes' rows; a row outside is named.
  np.testing.assert_array_equal(idx.codes([999, 0, 400, 750]), codes[[999, 0, 400, 750]])
  for bad in ([0, -1], [1000]):
    for read in (idx.codes, idx.entries):
      with pytest.raises(IndexError, match=rf"rows outside \[0, 1000\): \[{bad[-1]}\]"):
        read(bad)


def test_search_argument_errors(tmp_path):
  idx = make_index(tmp_path / "i", np.zeros((3, 2), np.uint8))
  with pytest.raises(ValueError, match=r"\[q, 2\]"):
    search.search_codes(idx, np.zeros((1, 3), np.uint8), 1)
  with pytest.raises(ValueError, match="k=0"):
    search.search_codes(idx, np.zeros((1, 2), np.uint8), 0)


# ----------------------------------------------------------------------------- atomicity
class Crash(RuntimeError):
  pass


def test_crash_mid_write_leaves_no_index(tmp_path, monkeypatch):
  calls = []
  real_add = index_lib.SegmentWriter.add

  def add_then_crash(self, *a):
    real_add(self, *a)
    calls.append(1)
    raise Crash("power cut")

  monkeypatch.setattr(index_lib.SegmentWriter, "add", add_then_crash)
  with pytest.raises(Crash):
    make_index(tmp_path / "new", np.zeros((10, 2), np.uint8))
  assert calls  # something was written before the crash
  with pytest.raises(index_lib.BadIndex, match="not an index"):
    index_lib.HashIndex.open(tmp_path / "new")
  assert not [n for n in os.listdir(tmp_path / "new") if n.startswith("seg-")]


@pytest.mark.parametrize("where", ["add", "replace"])
def test_crash_keeps_previous_index(tmp_path, monkeypatch, where):
  rng = np.random.default_rng(4)
  codes = rng.integers(0, 256, (50, 2), dtype=np.uint8)
  path = tmp_path / "i"
  make_index(path, codes)
  before = {n: open(os.path.join(path, n, "codes.u8"), "rb").read()
            for n in os.listdir(path) if n.startswith("seg-")}
  manifest = (path / "manifest.json").read_text()
  if where == "add":  # crash while writing the new segment
    monkeypatch.setattr(index_lib.SegmentWriter, "add",
                        lambda self, *a: (_ for _ in ()).throw(Crash("kill")))
  else:  # crash at the very commit: the manifest rename itself fails
    monkeypatch.setattr(index_lib.os, "replace",
                        lambda *a: (_ for _ in ()).throw(Crash("kill")))
  for append in (False, True):  # a rebuild and an append
    with pytest.raises(Crash):
      index_lib.write_codes(path, codes[:5] ^ 1, [f"n{i}" for i in range(5)],
                            modality="points", bits=16, fingerprint=FP, append=append)
    assert (path / "manifest.json").read_text() == manifest
    idx = index_lib.HashIndex.open(path)
    np.testing.assert_array_equal(idx.codes(), codes)
    after = sorted(n for n in os.listdir(path) if n.startswith("seg-"))
    assert after == sorted(before)
    assert not [n for n in os.listdir(path) if ".tmp-" in n]


def test_leftovers_of_a_killed_writer_are_collected(tmp_path):
  path = tmp_path / "i"
  make_index(path, np.zeros((4, 2), np.uint8))
  (path / "seg-deadbeef0000").mkdir()
  (path / "seg-deadbeef0000" / "codes.u8").write_bytes(b"xx")
  (path / ".manifest.json.tmp-12345678").write_text("{")
  index_lib.HashIndex.open(path)  # readers ignore them
  make_index(path, np.ones((3, 2), np.uint8), prefix="b")  # the next writer deletes them
  names = os.listdir(path)
  assert "seg-deadbeef0000" not in names and not [n for n in names if ".tmp-" in n]
  assert len([n for n in names if n.startswith("seg-")]) == 1  # old segment replaced


def test_second_writer_is_refused(tmp_path):
  path = tmp_path / "i"
  make_index(path, np.zeros((4, 2), np.uint8))
  with index_lib.writer_lock(str(path)):
    with pytest.raises(index_lib.BadIndex, match="another build / add"):
      index_lib.write_codes(path, np.zeros((1, 2), np.uint8), ["z"], modality="points",
                            bits=16, fingerprint=FP, append=True)


# ----------------------------------------------------------------------------- identity
def test_fingerprint_mismatch_names_both(tmp_path):
  path = tmp_path / "i"
  make_index(path, np.zeros((4, 2), np.uint8))
  other = dict(FP, step=8)
  with pytest.raises(index_lib.FingerprintMismatch) as e:
    index_lib.write_codes(path, np.zeros((1, 2), np.uint8), ["z"], modality="points",
                          bits=16, fingerprint=other, append=True)
  msg = str(e.value)
  assert "step=7" in msg and "step=8" in msg and "differs in step" in msg


def test_duplicate_ids_and_modality_refused_on_append(tmp_path):
  path = tmp_path / "i"
  make_index(path, np.zeros((40, 2), np.uint8))
  with pytest.raises(ValueError, match=r"already in .*o00003"):
    index_lib.write_codes(path, np.zeros((2, 2), np.uint8), ["new", "o00003"],
                          modality="points", bits=16, fingerprint=FP, append=True)
  with pytest.raises(ValueError, match="index of points"):
    index_lib.write_codes(path, np.zeros((1, 2), np.uint8), ["x"], modality="images",
                          bits=16, fingerprint=FP, append=True)
  assert index_lib.HashIndex.open(path).existing_ids(["o00001", "zz", "o00039"]) == [
      "o00001", "o00039"]


def test_not_an_index_and_corruption_are_named(tmp_path):
  with pytest.raises(index_lib.BadIndex, match="does not exist"):
    index_lib.HashIndex.open(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(index_lib.BadIndex, match="no manifest.json"):
    index_lib.HashIndex.open(tmp_path / "empty")
  idx = make_index(tmp_path / "i", np.zeros((4, 2), np.uint8))
  with open(os.path.join(idx.segments[0].dir, "codes.u8"), "ab") as f:
    f.write(b"\0")
  with pytest.raises(index_lib.BadIndex, match="bytes, the manifest says 4 codes"):
    index_lib.HashIndex.open(tmp_path / "i").codes()


# ----------------------------------------------------------------------------- faiss
def test_faiss_export_gives_the_same_neighbours(tmp_path):
  faiss = pytest.importorskip("faiss")
  rng = np.random.default_rng(5)
  codes = encode.pack_faiss(np.where(rng.random((3000, 16)) < 0.5, -1.0, 1.0))
  queries = encode.pack_faiss(np.where(rng.random((20, 16)) < 0.5, -1.0, 1.0))
  idx = make_index(tmp_path / "i", codes, (1000, 2000))
  out = faiss_export.export_faiss(idx, str(tmp_path / "x.faiss"))
  fi = faiss.read_index_binary(out)
  assert fi.ntotal == 3000 and fi.d == 16
  np.testing.assert_array_equal(faiss.rev_swig_ptr(fi.xb.data(), 3000 * 2), codes.reshape(-1))
  k = 25
  fd, fr = fi.search(queries, k)
  dist, rows = search.search_codes(idx, queries, k)
  np.testing.assert_array_equal(fd, dist)
  for j in range(len(queries)):  # rows equal except the order inside ties
    for dval in np.unique(dist[j]):
      ours, theirs = set(rows[j][dist[j] == dval]), set(fr[j][fd[j] == dval])
      if dval < dist[j, -1]:
        assert ours == theirs
      assert all(brute_force(queries[j:j + 1], codes[[r]], 1)[0][0, 0] == dval
                 for r in theirs)
  with open(out + ".ids.jsonl") as f:
    lines = [json.loads(x) for x in f]
  assert [e["id"] for e in lines] == [f"o{i:05d}" for i in range(3000)]


def test_module_entry_point_info(tmp_path):
  """`python -m cmah_jax.index` runs (no model needed for info)."""
  make_index(tmp_path / "i", np.zeros((3, 2), np.uint8))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  res = subprocess.run([sys.executable, "-m", "cmah_jax.index", "info",
                        f"--index={tmp_path / 'i'}"], cwd=root, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)
  assert res.returncode == 0, res.stderr
  assert "3 points, 16 bits" in res.stdout and "config_hash=abc" in res.stdout
  res = subprocess.run([sys.executable, "-m", "cmah_jax.index", "info",
                        f"--index={tmp_path / 'nope'}"], cwd=root, capture_output=True,
                       text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)
  assert res.returncode == 2 and res.stderr.startswith("error: ")


def test_duplicate_ids_within_one_write_are_refused(tmp_path):
  with pytest.raises(ValueError, match=r"1 duplicate id\(s\): \['b'\]"):
    index_lib.write_codes(tmp_path / "i", np.zeros((3, 2), np.uint8), ["a", "b", "b"],
                          modality="points", bits=16, fingerprint=FP)
  assert not [n for n in os.listdir(tmp_path / "i") if n.startswith("seg-")]


def test_a_query_of_unknown_kind_is_named_before_anything_is_read(tmp_path):
  """The missing .npy would be unreadable: the .xyz is reported first, by name, with no
  model built and no file read."""
  with pytest.raises(BadInput, match=r"query .*q\.xyz: extension is not one of .*\.npy"):
    search.encode_files(None, [str(tmp_path / "missing.npy"), str(tmp_path / "q.xyz")])

"""Ops benchmark: `hamming_topk` against faiss and the scan bounds; `farthest_point_sample`
against fpsample and a NumPy loop. Prints one markdown table, all rows from the same run.

  .venv/bin/python benchmarks/bench_ops.py
  .venv/bin/python benchmarks/bench_ops.py --runs 15 --queries 1000 --database 1000000

Needs the benchmark-only packages in benchmarks/requirements.txt (faiss-cpu, fpsample).

(a) `hamming_topk` (k=100, 1,000 queries, 10^6 database codes, 64 bits) against faiss's
    exact `IndexBinaryFlat` (OpenMP threads = CPU count), against the memory-bandwidth
    bound of one scan of the packed database (its bytes / this machine's measured read
    bandwidth; the codes fit in cache, so this bound is tiny), and against a compute
    floor: the fused XOR/popcount/min pass over all q*n pairs alone, which any exact
    method must do and which is the only O(q*n) part of `hamming_topk`. Both results are
    checked: same distances as faiss (indices may differ only inside ties, which faiss
    breaks differently), and identical to a NumPy stable argsort on a subset of queries.
(b) `farthest_point_sample` (batch 32, 1024 points -> 64) against fpsample's exact vanilla
    FPS (`fps_sampling`, start_idx=0, looped over the batch), its fastest bucket variant
    (`bucket_fps_kdline_sampling`, h=3; QuickFPS, which does not return the same samples
    here, so it is shown for speed only), and a plain NumPy loop (batch-vectorised over
    the 64 steps); the JAX indices must equal the NumPy loop's.

Times are the median (and min) of `--runs` calls after one warm-up call; JAX compile
time is measured separately (`jit(...).lower(...).compile()`, no persistent cache). The
machine may be shared: the load average at start is printed with the table.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timing import cpu_model, time_interleaved  # noqa: E402  (benchmarks/timing.py)

from cmah_jax.ops import hashing, pointcloud  # noqa: E402

try:
  import faiss
  import fpsample
except ImportError as e:  # pragma: no cover
  raise SystemExit(f"bench_ops.py needs the benchmark-only packages: "
                   f".venv/bin/pip install -r benchmarks/requirements.txt ({e})")


# ----------------------------------------------------------------------------- helpers

def _compile(jitted, *args, **static):
  """(compiled executable, compile seconds)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args, **static).compile()
  return compiled, time.perf_counter() - t0



def read_bandwidth(nbytes: int = 1 << 29, runs: int = 5) -> tuple[float, float]:
  """This machine's read bandwidth in bytes/s from large NumPy reductions over a `nbytes`
  float64 array (far larger than the caches), best of `runs`: (one thread, all CPUs with
  one slice per thread; NumPy releases the GIL in reductions)."""
  a = np.ones(nbytes // 8, np.float64)
  workers = os.cpu_count() or 1
  parts = np.array_split(a, workers)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    (_, one), (_, every) = time_interleaved(
        [a.sum, lambda: sum(pool.map(np.sum, parts))], runs)
  return nbytes / one, nbytes / every


# ----------------------------------------------------------------------------- (a) Hamming
def _hamming_rows(q: np.ndarray, d: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """Exact distances `[q, k]` int32 from each query to the database rows `idx [q, k]`."""
  return np.bitwise_count(d[idx] ^ q[:, None, :]).sum(-1).astype(np.int32)


def numpy_topk(q: np.ndarray, d: np.ndarray, k: int):
  """Reference: exact distances and a stable argsort (ties to the lower index)."""
  out_d, out_i = [], []
  for row in q:
    dist = np.bitwise_count(d ^ row).sum(-1, dtype=np.int32)
    idx = np.argsort(dist, kind="stable")[:k]
    out_d.append(dist[idx])
    out_i.append(idx)
  return np.stack(out_d), np.stack(out_i)


@functools.partial(jax.jit, static_argnames=("block",))
def fused_scan(query_packed, db_packed, block: int = 32):
  """Compute floor: XOR + popcount + per-block min over all q*n pairs, fused (the first
  level of `hamming_topk`, nothing else). Returns `[n / block, q]` int16."""
  qw = hashing._to_words(query_packed).T  # [W, q]
  dw = hashing._to_words(db_packed).T.reshape(qw.shape[0], -1, block)  # [W, nb, block]
  acc = 0
  for w in range(qw.shape[0]):
    acc = acc + jax.lax.population_count(qw[w][None, None, :] ^ dw[w][:, :, None])
  return acc.astype(jnp.int16).min(axis=1)


def bench_hamming(args) -> list[dict]:
  rng = np.random.default_rng(0)
  nbytes = args.bits // 8
  q = rng.integers(0, 256, (args.queries, nbytes), dtype=np.uint8)
  d = rng.integers(0, 256, (args.database, nbytes), dtype=np.uint8)
  qj, dj = jnp.asarray(q), jnp.asarray(d)
  k = args.k
  pairs = args.queries * args.database
  threads = os.cpu_count() or 1

  topk, compile_s = _compile(hashing.hamming_topk, qj, dj, k=k)
  dist, idx = (np.asarray(x) for x in topk(qj, dj))
  nc = min(args.check_queries, args.queries)
  ref_d, ref_i = numpy_topk(q[:nc], d, k)
  exact = np.array_equal(dist[:nc], ref_d) and np.array_equal(idx[:nc], ref_i)
  scan, _ = _compile(fused_scan, qj, dj)

  index = faiss.IndexBinaryFlat(args.bits)
  index.add(d)

  def faiss_search(nthreads):
    def run():
      faiss.omp_set_num_threads(nthreads)
      return index.search(q, k)
    return run

  # All cores as asked, and 1 thread too: on a loaded machine OpenMP's barriers can make
  # the threaded search slower than one thread. The target compares with the faster.
  thread_counts = sorted({threads, 1}, reverse=True)
  faiss_notes = []
  for nthreads in thread_counts:
    fd, fi = faiss_search(nthreads)()
    same_rows = int(np.sum(np.all(fi == idx, axis=1)))
    note = (f"same distances: {'yes' if np.array_equal(fd, dist) else 'NO'}; same indices "
            f"in {same_rows}/{args.queries} rows")
    if same_rows < args.queries:  # faiss's must still be valid, differing only in ties
      valid = (np.array_equal(_hamming_rows(q, d, fi), fd)
               and all(len(set(r)) == k for r in fi)
               and np.all((fi == idx) | (fd == fd[:, -1:])))
      note += f", the rest differ only among ties at the k-th distance: " \
              f"{'yes' if valid else 'NO'}"
    faiss_notes.append(note)

  fns = [lambda: jax.block_until_ready(topk(qj, dj))]
  fns += [faiss_search(t) for t in thread_counts]
  fns += [lambda: jax.block_until_ready(scan(qj, dj))]
  times = time_interleaved(fns, args.runs)
  faiss.omp_set_num_threads(threads)
  ours = times[0][0]

  rows = [dict(bench="a", method="`hamming_topk` (JAX, jit)", times=times[0],
               notes=f"compile {compile_s:.2f} s; {pairs / ours / 1e9:.2f} G pairs/s; "
                     f"= NumPy stable argsort on {nc} queries: {'yes' if exact else 'NO'}")]
  for nthreads, tm, note in zip(thread_counts, times[1:], faiss_notes):
    rows.append(dict(
        bench="a", method=f"faiss `IndexBinaryFlat`, {nthreads} OpenMP thread(s)",
        times=tm, ratio=tm[0] / ours, notes=f"{pairs / tm[0] / 1e9:.2f} G pairs/s; {note}"))
  tm = times[-1]
  rows.append(dict(
      bench="a", method="compute floor: fused XOR/popcount/min scan of all q*n pairs (JAX)",
      times=tm, ratio=tm[0] / ours,
      notes=f"{pairs / tm[0] / 1e9:.2f} G pairs/s; level 1 of `hamming_topk` alone, its "
            f"only O(q*n) step"))

  bw_one, bw_all = read_bandwidth()
  bound = d.nbytes / bw_all
  rows.append(dict(
      bench="a", method="memory-bandwidth bound: one read of the packed database",
      times=(bound, bound), ratio=bound / ours,
      notes=f"{d.nbytes / 1e6:.0f} MB at {bw_all / 1e9:.1f} GB/s (NumPy sum, {threads} "
            f"threads; 1 thread: {bw_one / 1e9:.1f} GB/s); the codes fit in cache, so "
            f"the search is compute-bound"))
  return rows


# ----------------------------------------------------------------------------- (b) FPS
def fps_numpy(points: np.ndarray, num_samples: int) -> np.ndarray:
  """Plain NumPy FPS, batch-vectorised, one step at a time: `[B, N, 3]` float32 ->
  `[B, S]` int32 (first index 0, argmax ties to the lowest index)."""
  b, n, _ = points.shape
  x, y, z = points[..., 0], points[..., 1], points[..., 2]
  rows = np.arange(b)
  idx = np.zeros((b, num_samples), np.int32)
  min_d = np.full((b, n), np.inf, np.float32)
  last = np.zeros(b, np.int64)
  for i in range(1, num_samples):
    dx = x - x[rows, last][:, None]
    dy = y - y[rows, last][:, None]
    dz = z - z[rows, last][:, None]
    np.minimum(min_d, dx * dx + dy * dy + dz * dz, out=min_d)
    last = np.argmax(min_d, axis=1)
    idx[:, i] = last
  return idx


def bench_fps(args) -> list[dict]:
  rng = np.random.default_rng(1)
  pts = rng.normal(size=(args.fps_batch, args.fps_points, 3)).astype(np.float32)
  s = args.fps_samples
  pj = jnp.asarray(pts)

  jitted = jax.jit(pointcloud.farthest_point_sample, static_argnums=1)
  fps, compile_s = _compile(jitted, pj, s)
  ours_idx = np.asarray(fps(pj))
  ref_idx = fps_numpy(pts, s)
  others = [
      ("fpsample `fps_sampling` (exact), loop over batch",
       lambda p: fpsample.fps_sampling(p, s, start_idx=0)),
      ("fpsample `bucket_fps_kdline_sampling` h=3 (fastest variant), loop over batch",
       lambda p: fpsample.bucket_fps_kdline_sampling(p, s, h=3, start_idx=0)),
  ]
  fns = [lambda: jax.block_until_ready(fps(pj))]
  fns += [lambda fn=fn: [fn(p) for p in pts] for _, fn in others]
  fns += [lambda: fps_numpy(pts, s)]
  times = time_interleaved(fns, 4 * args.runs)
  ours = times[0][0]

  rows = [dict(bench="b", method="`farthest_point_sample` (JAX, jit)", times=times[0],
               notes=f"compile {compile_s:.2f} s; indices = NumPy loop's: "
                     f"{'yes' if np.array_equal(ours_idx, ref_idx) else 'NO'}")]
  for (name, fn), tm in zip(others, times[1:]):
    out = [fn(p) for p in pts]
    same = sum(np.array_equal(o, r) for o, r in zip(out, ours_idx))
    same_set = sum(set(o.tolist()) == set(r.tolist()) for o, r in zip(out, ours_idx))
    rows.append(dict(bench="b", method=name, times=tm, ratio=tm[0] / ours,
                     notes=f"same indices as JAX in {same}/{len(pts)} clouds (same sets: "
                           f"{same_set}/{len(pts)})"))
  rows.append(dict(bench="b", method="NumPy loop (batch-vectorised)", times=times[-1],
                   ratio=times[-1][0] / ours, notes="reference for the indices"))
  return rows


# ----------------------------------------------------------------------------- main
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", type=int, default=7, help="timed calls per row (FPS: 4x)")
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--database", type=int, default=1_000_000)
  parser.add_argument("--bits", type=int, default=64, choices=[8 * i for i in range(1, 33)])
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--check-queries", type=int, default=20,
                      help="queries checked against a NumPy stable argsort")
  parser.add_argument("--fps-batch", type=int, default=32)
  parser.add_argument("--fps-points", type=int, default=1024)
  parser.add_argument("--fps-samples", type=int, default=64)
  parser.add_argument("--skip", default="", help="comma list of sections to skip: a,b")
  args = parser.parse_args(argv)

  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  rows = []
  skip = set(filter(None, args.skip.split(",")))
  if "a" not in skip:
    rows += bench_hamming(args)
  if "b" not in skip:
    rows += bench_fps(args)

  print(f"`{' '.join([os.path.basename(sys.executable), *sys.argv])}` on {cpu_model()}, "
        f"{os.cpu_count()} CPUs, {datetime.date.today()}; jax {jax.__version__} "
        f"({jax.default_backend()}), faiss {faiss.__version__}, numpy {np.__version__}; "
        f"load average at start {load:.2f}; times: median (min) of {args.runs} calls after "
        f"warm-up ({4 * args.runs} for FPS), methods called in turn\n")
  titles = {"a": f"(a) top-{args.k} Hamming, {args.queries:,} queries x "
                 f"{args.database:,} codes, {args.bits} bits",
            "b": f"(b) FPS, batch {args.fps_batch}, {args.fps_points} points -> "
                 f"{args.fps_samples}"}
  print("| benchmark | method | time, ms: median (min) | x ours | notes |")
  print("|---|---|---:|---:|---|")
  for r in rows:
    ratio = f"{r['ratio']:.2f}" if "ratio" in r else "1"
    med, best = r["times"]
    print(f"| {titles[r['bench']]} | {r['method']} | {1e3 * med:.2f} ({1e3 * best:.2f}) | "
          f"{ratio} | {r['notes']} |")


if __name__ == "__main__":
  main()

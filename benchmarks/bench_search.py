"""Index search benchmark: `cmah_jax.retrieval.search_codes` on an on-disk index against
faiss `IndexBinaryFlat` (all threads and 1 thread), side by side in one run.

  .venv/bin/python benchmarks/bench_search.py
  .venv/bin/python benchmarks/bench_search.py --database 1000000 --queries 1000 --k 10 100

Needs faiss (`.venv/bin/pip install faiss-cpu`, or `-r benchmarks/requirements.txt`).

Random 64-bit codes (uniform bits) are written to a temporary index with
`index.write_codes`, re-opened (codes memory-mapped from the page cache), and searched with
packed query codes: query encoding is the model's cost and is not timed. Rows timed:
  - `search_codes` with the default chunk (the whole 10^6 codes in one device call);
  - `search_codes` with `--chunk_rows` (several chunks merged: the path of a large index);
  - the same plus the id / path lookup of every result (what `search` prints);
  - faiss `IndexBinaryFlat.search` with all CPU threads and with 1 thread.
Checks: distances equal faiss's (rows may differ only inside ties, which faiss orders its
own way), and rows equal a NumPy stable argsort on `--check_queries` queries.
Times: median (min) of `--runs` calls after one warm-up call each, round-robin so that a
shared machine's load hits every method alike; compile time reported separately.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timing import cpu_model, time_interleaved  # noqa: E402  (benchmarks/timing.py)

from cmah_jax.retrieval import index as index_lib  # noqa: E402
from cmah_jax.retrieval import search  # noqa: E402

try:
  import faiss
except ImportError as e:  # pragma: no cover
  raise SystemExit(f"bench_search.py needs faiss: .venv/bin/pip install faiss-cpu ({e})")




def stable_topk(q, d, k):
  out_d, out_r = [], []
  for row in q:
    dist = np.bitwise_count(d ^ row).sum(-1, dtype=np.int32)
    r = np.argsort(dist, kind="stable")[:k]
    out_d.append(dist[r])
    out_r.append(r)
  return np.stack(out_d), np.stack(out_r)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--database", type=int, default=1_000_000)
  p.add_argument("--queries", type=int, default=1000)
  p.add_argument("--bits", type=int, default=64)
  p.add_argument("--k", type=int, nargs="+", default=[10, 100])
  p.add_argument("--chunk_rows", type=int, default=1 << 18)
  p.add_argument("--runs", type=int, default=5)
  p.add_argument("--check_queries", type=int, default=50)
  args = p.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  nbytes = args.bits // 8
  codes = rng.integers(0, 256, (args.database, nbytes), dtype=np.uint8)
  queries = rng.integers(0, 256, (args.queries, nbytes), dtype=np.uint8)
  threads = os.cpu_count() or 1
  print(f"# bench_search: {datetime.date.today()}, {cpu_model()}, {threads} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, jax {jax.__version__} "
        f"({jax.devices()[0].platform}), faiss {faiss.__version__}", flush=True)
  print(f"# {args.database:,} codes of {args.bits} bits, {args.queries:,} queries, "
        f"median (min) of {args.runs}\n")

  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    ids = [f"{i:07d}" for i in range(args.database)]
    index_lib.write_codes(os.path.join(tmp, "idx"), codes, ids, modality="points",
                          bits=args.bits, fingerprint={"config_hash": "bench",
                                                       "bits": args.bits, "step": 0})
    idx = index_lib.HashIndex.open(os.path.join(tmp, "idx"))
    write_s = time.perf_counter() - t0
    fi = faiss.IndexBinaryFlat(args.bits)
    fi.add(codes)

    print("| k | method | ms: median (min) | x ours | notes |")
    print("|---:|---|---:|---:|---|")
    for k in args.k:
      t0 = time.perf_counter()
      dist, rows = search.search_codes(idx, queries, k)
      first_s = time.perf_counter() - t0
      nc = min(args.check_queries, args.queries)
      ref_d, ref_r = stable_topk(queries[:nc], codes, k)
      exact = np.array_equal(dist[:nc], ref_d) and np.array_equal(rows[:nc], ref_r)
      cd, cr = search.search_codes(idx, queries, k, chunk_rows=args.chunk_rows)
      chunk_same = np.array_equal(cd, dist) and np.array_equal(cr, rows)

      def faiss_fn(n):
        def run():
          faiss.omp_set_num_threads(n)
          return fi.search(queries, k)
        return run

      notes_f = []
      for n in sorted({threads, 1}, reverse=True):
        fd, fr = faiss_fn(n)()
        same = int(np.all(fr == rows, axis=1).sum())
        notes_f.append(f"same distances: {'yes' if np.array_equal(fd, dist) else 'NO'}; "
                       f"same rows in {same}/{args.queries} queries"
                       + (" (the rest differ inside ties)" if same < args.queries else ""))
      fns = [lambda: search.search_codes(idx, queries, k),
             lambda: search.search_codes(idx, queries, k, chunk_rows=args.chunk_rows),
             lambda: idx.entries(search.search_codes(idx, queries, k)[1].reshape(-1))]
      fns += [faiss_fn(n) for n in sorted({threads, 1}, reverse=True)]
      times = time_interleaved(fns, args.runs)
      faiss.omp_set_num_threads(threads)
      ours = times[0][0]
      nchunks = -(-args.database // args.chunk_rows)
      labels = [
          ("`search_codes`, one chunk", f"first call {first_s:.2f} s (compile); = NumPy "
           f"stable argsort on {nc} queries: {'yes' if exact else 'NO'}"),
          (f"`search_codes`, {nchunks} chunks of {args.chunk_rows:,}",
           f"same result as one chunk: {'yes' if chunk_same else 'NO'}"),
          ("`search_codes` + id/path lookup", f"{args.queries * k:,} entries read"),
      ] + [(f"faiss `IndexBinaryFlat`, {n} thread(s)", note)
           for n, note in zip(sorted({threads, 1}, reverse=True), notes_f)]
      for (name, note), (med, mn) in zip(labels, times):
        print(f"| {k} | {name} | {1e3 * med:.1f} ({1e3 * mn:.1f}) | {med / ours:.2f} | {note} |",
              flush=True)
    print(f"\n# index written in {write_s:.1f} s ({idx.nbytes_on_disk() / 2**20:.0f} MiB "
          "on disk)")


if __name__ == "__main__":
  main()

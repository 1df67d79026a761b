"""Cost of the CMAH variants: parameters, FLOPs per training example, step time.

For each variant: the parameter count; the FLOPs of one jitted forward+backward of the
training loss (`value_and_grad` of `cmah_loss` over a train-mode `CMAH.apply`), read from
`jax.jit(...).lower(...).compile().cost_analysis()`, divided by the batch size; the median
wall time of that step after warm-up; and the achieved FLOP/s as a fraction of this
machine's measured float32 matmul FLOP/s. Prints a markdown table.

  .venv/bin/python benchmarks/bench_model.py                      # tiny, small, base
  .venv/bin/python benchmarks/bench_model.py --variants small --batch small=32

Note: XLA's cost analysis counts a `while` loop body once (farthest point sampling is a
`fori_loop`), so the FLOPs are those of the dense layers and attention; FPS's distance
updates (~G * N * 8 FLOPs per example) are not included.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cmah_jax import losses  # noqa: E402
from cmah_jax.models import build  # noqa: E402

DEFAULT_BATCH = {"tiny": 8, "small": 8, "base": 2}
LOSS_CONFIG = dict(losses.DEFAULT_LOSS_CONFIG)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def _time(fn, args, iters: int) -> tuple[float, float]:
  """(best, median) seconds per call after one warm-up call. The best is the estimator
  reported: on a shared machine other jobs only ever add time."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times), statistics.median(times)


def matmul_flops_per_s(n: int = 2048, iters: int = 10) -> float:
  """Measured float32 matmul throughput of this machine (`[n, n] @ [n, n]`, best of
  `iters`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  return 2.0 * n ** 3 / _time(f, (a, b), iters)[0]


def bench_variant(variant: str, batch: int, bits: int, iters: int) -> dict:
  model, variables = build(variant, bits, jax.random.key(0))
  params = variables["params"]
  n_params = sum(x.size for x in jax.tree.leaves(params))
  s, n = model.config.image_size, model.config.num_points
  images = jax.random.normal(jax.random.key(1), (batch, s, s, 3), jnp.float32)
  points = jax.random.normal(jax.random.key(2), (batch, n, 3), jnp.float32)
  points = points / jnp.linalg.norm(points, axis=-1, keepdims=True)

  def loss_fn(params, images, points, key):
    k_mask, k_drop = jax.random.split(key)
    out = model.apply({"params": params}, images, points, train=True, mask_key=k_mask,
                      rngs={"dropout": k_drop})
    return losses.cmah_loss(out, LOSS_CONFIG)[0]

  step = jax.jit(jax.value_and_grad(loss_fn))
  args = (params, images, points, jax.random.key(3))
  t0 = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(compiled)
  step_s, median_s = _time(compiled, args, iters)
  return dict(variant=variant, params=n_params, batch=batch, flops_per_example=flops / batch,
              step_s=step_s, median_s=median_s, flops_per_s=flops / step_s,
              compile_s=compile_s)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", default="tiny,small,base")
  parser.add_argument("--batch", default="", help="per-variant batch, e.g. small=16,base=2")
  parser.add_argument("--bits", type=int, default=64)
  parser.add_argument("--iters", type=int, default=5)
  args = parser.parse_args(argv)
  batch = dict(DEFAULT_BATCH)
  for item in filter(None, args.batch.split(",")):
    name, value = item.split("=")
    batch[name] = int(value)

  rows = [bench_variant(v, batch.get(v, 8), args.bits, args.iters)
          for v in args.variants.split(",")]
  # Matmul peak measured after the variants too: the best of both is the reference.
  peak = max(matmul_flops_per_s(), matmul_flops_per_s())
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
        f"{os.cpu_count()} CPU(s); best f32 matmul (2048^3): {peak / 1e9:.1f} GFLOP/s; "
        f"{args.bits}-bit codes; times: best (median) of {args.iters} after warm-up\n")
  print("| variant | params | batch | GFLOP / example (fwd+bwd) | step time (s) | "
        "ms / example | achieved GFLOP/s | fraction of matmul | compile (s) |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['variant']} | {r['params']:,} | {r['batch']} | "
          f"{r['flops_per_example'] / 1e9:.3f} | {r['step_s']:.3f} ({r['median_s']:.3f}) | "
          f"{1e3 * r['step_s'] / r['batch']:.1f} | {r['flops_per_s'] / 1e9:.1f} | "
          f"{r['flops_per_s'] / peak:.1%} | {r['compile_s']:.1f} |")


if __name__ == "__main__":
  main()

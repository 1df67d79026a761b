"""Cost of the CMAH variants: parameters, FLOPs per training example, step time, memory.

For each variant: the parameter count; the FLOPs of one jitted forward+backward of the
training loss (`value_and_grad` of `cmah_loss` over a train-mode `CMAH.apply`), read from
`jax.jit(...).lower(...).compile().cost_analysis()`, divided by the batch size; the compile
time; the best and median wall time of that step after warm-up; its memory (XLA's
`memory_analysis`: arguments + temporaries + outputs; on GPU/TPU also the device's peak
bytes in use); and the achieved FLOP/s as a fraction of a peak:

- CPU: this machine's measured matmul rate (`[2048, 2048] @ [2048, 2048]` in the compute
  dtype, best of 10);
- GPU/TPU: the chip's dense peak for the compute dtype from `PEAK_TFLOPS` (the bf16 tensor-core peak
  for bfloat16/float16, the plain fp32 peak otherwise), i.e. the model FLOPs utilisation
  (MFU); `--peak_tflops` overrides it.

Prints a markdown table.

  .venv/bin/python benchmarks/bench_model.py                      # tiny, small, base
  .venv/bin/python benchmarks/bench_model.py --variants small --batch small=32
  .venv/bin/python benchmarks/bench_model.py --variants small,small:masked_views=2 \
      --batch small=64                                            # a switch's cost
  .venv/bin/python benchmarks/bench_model.py --variants "small,small:image_stem_dims=(32,64)" \
      --batch small=64                                            # tuple values
  .venv/bin/python benchmarks/bench_model.py --variants small,small:+image_views \
      --batch small=64                                            # a second image view
  .venv/bin/python benchmarks/bench_model.py --variants small,small:-masked_point_full_image \
      --batch small=64                                            # a pair removed
  .venv/bin/python benchmarks/bench_model.py --variants base --batch base=128 \
      --dtype bfloat16                                            # on an accelerator

Note: XLA's cost analysis counts a `while` loop body once (farthest point sampling is a
`fori_loop`), so the FLOPs are those of the dense layers and attention; FPS's distance
updates (~G * N * 8 FLOPs per example) are not included.
"""
from __future__ import annotations

import argparse
import ast
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
LOSS_SPEC = losses.LossSpec()

# Dense peak TFLOP/s per chip (vendor datasheets, without sparsity):
# {device_kind substring: (bf16/fp16, fp32)}. Matched in order, case-insensitively.
PEAK_TFLOPS = (
    ("H200", (989.0, 67.0)),
    ("H100 PCIe", (756.0, 51.0)),
    ("H100", (989.0, 67.0)),       # SXM
    ("A100", (312.0, 19.5)),
    ("L4", (121.0, 30.3)),
    ("TPU v6", (918.0, None)),
    ("TPU v5p", (459.0, None)),
    ("TPU v5", (197.0, None)),     # v5e / v5 lite
    ("TPU v4", (275.0, None)),
)


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


def matmul_flops_per_s(n: int = 2048, iters: int = 10, dtype=jnp.float32) -> float:
  """Measured matmul throughput of this machine (`[n, n] @ [n, n]` in `dtype`, best of
  `iters`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.matmul)
  return 2.0 * n ** 3 / _time(f, (a, b), iters)[0]


def chip_peak_flops(dtype: str) -> float | None:
  """The accelerator's dense peak FLOP/s for `dtype` from `PEAK_TFLOPS`, or None (CPU or
  an unknown chip)."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return None
  kind = device.device_kind.lower()
  for name, (half, single) in PEAK_TFLOPS:
    if name.lower() in kind:
      peak = half if dtype in ("bfloat16", "float16") else single
      return None if peak is None else peak * 1e12
  return None


def _memory(compiled) -> tuple[float, float | None]:
  """(XLA's argument + temp + output bytes, device peak bytes in use or None)."""
  mem = compiled.memory_analysis()
  total = float("nan")
  if mem is not None:
    total = float(mem.argument_size_in_bytes + mem.temp_size_in_bytes
                  + mem.output_size_in_bytes)
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
  peak = stats.get("peak_bytes_in_use") if stats else None
  return total, peak


def split_variants(text: str) -> list[str]:
  """`--variants` at its top-level commas: `"small,small:image_stem_dims=(32,64)"` -> the
  two specs (a comma inside brackets belongs to a value)."""
  specs, depth, current = [], 0, ""
  for ch in text:
    depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
    if ch == "," and depth == 0:
      specs.append(current)
      current = ""
    else:
      current += ch
  return [s for s in specs + [current] if s]


def parse_variant(spec: str) -> tuple[str, dict, losses.LossSpec]:
  """`"small"` or `"small:masked_views=2:point_mask_ratio=0.4"` -> (variant, ModelConfig
  overrides, LossSpec); values are Python literals; an item `+PAIR` adds that pair to the
  default `loss.pairs` (`small:+image_views`: a second image view and its pair), `-PAIR`
  removes one (`small:-masked_point_full_image`: the full-full pair only)."""
  name, *items = spec.split(":")
  overrides, pairs = {}, LOSS_SPEC.pairs
  for item in items:
    if item.startswith("+"):
      pairs = pairs + (item[1:],)
      continue
    if item.startswith("-"):
      if item[1:] not in pairs:
        raise SystemExit(f"--variants {spec!r}: cannot remove pair {item[1:]!r}: the pairs "
                         f"are {', '.join(pairs)}")
      pairs = tuple(p for p in pairs if p != item[1:])
      continue
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--variants: {item!r} in {spec!r} is not FIELD=VALUE")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):  # a bare word: a string field (fusion_context=code)
      overrides[key] = value
  try:
    loss_spec = losses.LossSpec(pairs=pairs).validate()
  except ValueError as e:
    raise SystemExit(f"--variants {spec!r}: {e}") from e
  return name, overrides, loss_spec


def bench_variant(spec: str, batch: dict, bits: int, iters: int, dtype: str) -> dict:
  """One row of the table; `batch`: {variant name: batch size} (default 8)."""
  variant, overrides, loss_spec = parse_variant(spec)
  batch = batch.get(variant, 8)
  model, variables = build(variant, bits, jax.random.key(0), dtype=dtype, **overrides)
  params = variables["params"]
  n_params = sum(x.size for x in jax.tree.leaves(params))
  s, n = model.config.image_size, model.config.num_points
  images = jax.random.normal(jax.random.key(1), (batch, s, s, 3), jnp.float32)
  points = jax.random.normal(jax.random.key(2), (batch, n, 3), jnp.float32)
  points = points / jnp.linalg.norm(points, axis=-1, keepdims=True)
  second = None  # the second image view, when a pair reads it
  if "image_views" in loss_spec.pairs:
    second = jax.random.normal(jax.random.key(4), (batch, s, s, 3), jnp.float32)

  def loss_fn(params, images, points, second, key):
    k_mask, k_drop = jax.random.split(key)
    out = model.apply({"params": params}, images, points, train=True, mask_key=k_mask,
                      rngs={"dropout": k_drop}, second_images=second)
    return losses.cmah_loss(out, loss_spec)[0]

  step = jax.jit(jax.value_and_grad(loss_fn))
  args = (params, images, points, second, jax.random.key(3))
  t0 = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(compiled)
  step_s, median_s = _time(compiled, args, iters)
  mem_bytes, peak_bytes = _memory(compiled)
  return dict(variant=spec, params=n_params, batch=batch, flops_per_example=flops / batch,
              step_s=step_s, median_s=median_s, flops_per_s=flops / step_s,
              compile_s=compile_s, mem_bytes=mem_bytes, peak_bytes=peak_bytes)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", default="tiny,small,base")
  parser.add_argument("--batch", default="", help="per-variant batch, e.g. small=16,base=2")
  parser.add_argument("--bits", type=int, default=64)
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                      help="compute dtype (ModelConfig.dtype); params stay float32")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="peak to divide by (default: measured on CPU, datasheet on GPU/TPU)")
  args = parser.parse_args(argv)
  batch = dict(DEFAULT_BATCH)
  for item in filter(None, args.batch.split(",")):
    name, value = item.split("=")
    batch[name] = int(value)

  rows = [bench_variant(v, batch, args.bits, args.iters, args.dtype)
          for v in split_variants(args.variants)]
  device = jax.devices()[0]
  if args.peak_tflops:
    peak, what = args.peak_tflops * 1e12, "given peak"
  elif (chip := chip_peak_flops(args.dtype)) is not None:
    peak, what = chip, f"{device.device_kind} datasheet {args.dtype} dense peak (MFU)"
  else:
    # Measured after the variants too: the best of both is the reference.
    mm_dtype = jnp.float32 if args.dtype == "float32" else jnp.dtype(args.dtype)
    peak = max(matmul_flops_per_s(dtype=mm_dtype), matmul_flops_per_s(dtype=mm_dtype))
    what = f"measured {args.dtype} matmul (2048^3)"
  print(f"backend {jax.default_backend()} ({device.device_kind}), {jax.device_count()} "
        f"device(s), {os.cpu_count()} CPU(s); compute dtype {args.dtype}; peak: {what} "
        f"{peak / 1e9:,.1f} GFLOP/s; {args.bits}-bit codes; times: best (median) of "
        f"{args.iters} after warm-up\n")
  print("| variant | params | batch | GFLOP / example (fwd+bwd) | step time (s) | "
        "ms / example | achieved GFLOP/s | fraction of peak | compile (s) | memory (GiB) |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    mem = f"{r['mem_bytes'] / 2**30:.2f}"
    if r["peak_bytes"]:
      mem += f" (device peak {r['peak_bytes'] / 2**30:.2f})"
    print(f"| {r['variant']} | {r['params']:,} | {r['batch']} | "
          f"{r['flops_per_example'] / 1e9:.3f} | {r['step_s']:.3f} ({r['median_s']:.3f}) | "
          f"{1e3 * r['step_s'] / r['batch']:.1f} | {r['flops_per_s'] / 1e9:,.1f} | "
          f"{r['flops_per_s'] / peak:.1%} | {r['compile_s']:.1f} | {mem} |")


if __name__ == "__main__":
  main()

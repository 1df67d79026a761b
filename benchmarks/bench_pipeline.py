"""Throughput of the input pipeline (examples/s), with and without background prefetch.

    python benchmarks/bench_pipeline.py --data_dir=work/data [--config=default] \
        [--batch_size=128] [--steps=40] [--step_ms=0,50] [--devices=1]

Rows: host-only NumPy batches (`mesh=None`) and sharded global jax.Arrays (`mesh`), each
with prefetch 0 (synchronous) and input.prefetch > 0. `--step_ms` adds a simulated train
step (sleep) per batch: with prefetch the pipeline hides behind the step, so examples/s
approaches batch / step time. `run(..., step_fn=f)` times a real train step `f(batch)`
instead (block on its output). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def measure(make_iterator, steps: int, warmup: int = 2, step_fn=None) -> float:
  """Seconds per batch over `steps` batches after `warmup`, consuming with `step_fn`."""
  import jax  # pylint: disable=import-outside-toplevel
  with make_iterator() as it:
    for _ in range(warmup):
      out = next(it)
      jax.block_until_ready(step_fn(out) if step_fn else out)
    start = time.perf_counter()
    for _ in range(steps):
      out = next(it)
      jax.block_until_ready(step_fn(out) if step_fn else out)
    return (time.perf_counter() - start) / steps


def run(builder, input_config: dict, steps: int = 40, seed: int = 0, mesh=None,
        step_fn=None, step_label: str = "none", prefetch_values=(0, 2)) -> list[dict]:
  """Times the train pipeline for each prefetch depth; returns one row per setting."""
  from cmah_jax.input import InputSpec, TrainPipeline  # pylint: disable=import-outside-toplevel
  rows = []
  for prefetch in prefetch_values:
    cfg = dict(input_config, prefetch=prefetch)

    def make(cfg=cfg):
      return TrainPipeline(builder, "train", InputSpec(**cfg), mesh, seed)

    sec = measure(make, steps, step_fn=step_fn)
    rows.append({"output": "global jax.Array" if mesh is not None else "host NumPy",
                 "prefetch": prefetch, "step": step_label,
                 "ms/batch": 1000 * sec, "examples/s": cfg["batch_size"] / sec})
  return rows


def table(rows: list[dict]) -> str:
  head = ["output", "prefetch", "step", "ms/batch", "examples/s"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    lines.append(f"| {r['output']} | {r['prefetch']} | {r['step']} | {r['ms/batch']:.1f} | "
                 f"{r['examples/s']:.0f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", default="synthetic_shapes")
  parser.add_argument("--config", default="default")
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--num_points", type=int, default=1024)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--step_ms", default="0", help="comma-separated simulated step times")
  parser.add_argument("--devices", type=int, default=0, help="fake CPU devices (0: as is)")
  args = parser.parse_args(argv)
  if args.devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
  import jax  # pylint: disable=import-outside-toplevel
  from cmah_jax import datasets, sharding  # pylint: disable=import-outside-toplevel

  builder = datasets.get_builder(args.dataset, args.data_dir, args.config)
  builder.download_and_prepare()
  mesh = sharding.make_mesh()
  cfg = dict(batch_size=args.batch_size, num_points=args.num_points,
             image_size=args.image_size)
  rows = []
  for ms in (float(x) for x in args.step_ms.split(",")):
    step_fn = (lambda b, s=ms / 1000: time.sleep(s) or b) if ms else None
    label = f"sleep {ms:g} ms" if ms else "none"
    for m in (None, mesh):
      rows += run(builder, cfg, args.steps, mesh=m, step_fn=step_fn, step_label=label,
                  prefetch_values=(0, args.prefetch))
  print(f"{args.dataset}/{args.config}: batch {args.batch_size}, {args.num_points} points, "
        f"{args.image_size}px, {len(jax.devices())} {jax.devices()[0].platform} device(s), "
        f"{os.cpu_count()} CPUs\n")
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())

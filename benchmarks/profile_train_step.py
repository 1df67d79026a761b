"""Profile of the default train step on this machine: where the time goes, op by op.

Builds the train step exactly as `cmah_jax/train.py` does (model, AdamW, objective, state
donated) for a config (default `configs/default.py`: `small`, batch 64), on a synthetic
batch of the config's shapes (unit-sphere points, normal images; no op's cost depends on
the values), compiles it, runs `--steps` timed steps, then `--trace_steps` more under
`jax.profiler.trace`, and prints:

- compile time, memory, XLA's FLOPs per step (`cost_analysis`; a `while` body is counted
  once, so farthest point sampling is under-counted), the step's wall time and the
  process's CPU time (user + system) per step, min and median, and the achieved GFLOP/s
  at the best step as a fraction of this machine's float32 matmul rate (2048^3, as
  `bench_model.py`; measured before and after the steps, the best taken);
- the top ops of the compiled program by self time per step (an op's time minus that of
  ops nested in it, so a `while` loop's body ops count on their own), with XLA's name, the
  output shape, the part of the model and the JAX `op_name` it came from;
- the same summed by part of the model (`fwd` forward, `bwd` backward, `opt` optimizer;
  `point_tokenizer/{fps,knn+group,pointnet,pos_embed}`, `image_encoder/{attn,mlp,norms}`,
  ...).

Two figures per op. "mean": its time averaged over the traced steps. "floor": the sum of
its fastest `runs / step` executions; on a shared machine other processes only ever add
time to an op (preemption while it runs), so the floor estimates the op's uncontended cost
and is the figure to compare between runs on a loaded box. Ops are ranked by floor. An op's
time is the wall time of its event on the thread that ran it (most ops split their work
over both cores inside that event; independent ops may also overlap), so the sum over ops
is neither the step's wall time nor its CPU time.

  .venv/bin/python benchmarks/profile_train_step.py                  # default config
  .venv/bin/python benchmarks/profile_train_step.py --steps 30 --top 40
  .venv/bin/python benchmarks/profile_train_step.py --config configs/default.py:batch=32
  .venv/bin/python benchmarks/profile_train_step.py --dtype bfloat16
  .venv/bin/python benchmarks/profile_train_step.py \
      --pairs full_full,masked_point_full_image,image_views   # round 21's second view
  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false .venv/bin/python benchmarks/profile_train_step.py
"""
from __future__ import annotations

import argparse
import collections
import glob
import importlib.util
import os
import re
import resource
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_model import matmul_flops_per_s  # noqa: E402
from cmah_jax import config as config_lib  # noqa: E402
from cmah_jax.models import CMAH, init_variables  # noqa: E402
from cmah_jax.objectives import get_objective  # noqa: E402
from cmah_jax.optim import make_optimizer  # noqa: E402
from cmah_jax.train import make_train_step, run_keys  # noqa: E402

# Runtime bookkeeping events of the CPU thunk executor, not ops.
_INFRA = ("ThreadpoolListener", "ThunkExecutor", "end: ")


def load_config(spec: str, dtype: str | None = None, pairs: str | None = None):
  """`configs/NAME.py[:args]` -> resolved `ExperimentConfig`; `dtype` overrides the model's
  compute dtype, `pairs` the config's `loss.pairs`."""
  path, _, arg = spec.partition(":")
  mod_spec = importlib.util.spec_from_file_location(
      "profiled_config", path if os.path.isabs(path) else os.path.join(ROOT, path))
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  config = mod.get_config(arg or None)
  if pairs:
    config.loss.pairs = pairs
  if dtype:
    config.model.overrides.dtype = dtype
  return config_lib.resolve(config)


def build_step(cfg, train_examples: int = 4000):
  """(jitted train step with the state donated, state, batch) for `cfg`; `train_examples`
  sizes an objective's carried state (UCCH's memory bank: one row per training object;
  default the embedded set's 4,000)."""
  model = CMAH(cfg.model)
  tx, schedule = make_optimizer(cfg.optim, cfg.input.batch_size, cfg.total_steps,
                                restart_step=cfg.loss.reconstruction_only_steps)
  objective = get_objective(cfg.loss, cfg.model.bits)
  init_key, train_key = run_keys(cfg.seed)
  params = jax.jit(lambda k: init_variables(model, k)["params"])(init_key)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  loss_state = objective.init_state(train_examples)
  if loss_state:
    state["loss_state"] = loss_state
  b, s, n = cfg.input.batch_size, cfg.model.image_size, cfg.model.num_points
  k1, k2 = jax.random.split(jax.random.key(1))
  points = jax.random.normal(k1, (b, n, 3), jnp.float32)
  batch = {"points": points / jnp.linalg.norm(points, axis=-1, keepdims=True),
           "images": jax.random.normal(k2, (b, s, s, 3), jnp.float32),
           "label": jnp.arange(b, dtype=jnp.int32) % 20,
           "index": jnp.arange(b, dtype=jnp.int32)}
  if cfg.input.second_view:  # a pair of L_c reads a second image view (`loss.pairs`)
    batch["images_second"] = jax.random.normal(jax.random.key(2), (b, s, s, 3), jnp.float32)
  step = jax.jit(make_train_step(model, tx, schedule, objective, train_key,
                                 total_steps=cfg.total_steps), donate_argnums=0)
  return step, state, batch


# -- HLO metadata --------------------------------------------------------------------------
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\([^=]*?\)|\S+?)(?:\{[^}]*\})? ([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_index(hlo_text: str) -> dict[str, tuple[str, str, str]]:
  """Instruction name -> (output shape, opcode, JAX op_name) for every instruction."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    op = _OP_NAME.search(line)
    out[name] = (re.sub(r"\{[^}]*\}", "", shape), opcode, op.group(1) if op else "")
  return out


def part_of(op_name: str) -> str:
  """A readable bucket for a JAX op_name: `fwd|bwd|opt` + the model part it belongs to."""
  if not op_name:
    return "runtime/copies"
  phase = "bwd" if "transpose(" in op_name else "fwd" if "jvp(" in op_name else "opt"
  path = [p for p in op_name.split("/")[1:]
          if not p.startswith(("jvp(", "transpose(", "jit(", "vmap(", "checkpoint"))]
  if any(r in op_name for r in ("threefry", "_uniform", "_bernoulli", "random_bits")):
    return phase + "/rng (mask + drop-path keys)"
  if phase == "opt":
    return "opt"
  if path and path[0] == "point_tokenizer":
    sub = path[1] if len(path) > 1 else ""
    sub = ("fps" if sub == "while" else sub if sub in ("pointnet", "pos_embed")
           else "knn+group")
    return f"{phase}/point_tokenizer/{sub}"
  modules = ("point_encoder", "image_encoder", "point_decoder", "image_decoder",
             "point_hash", "image_hash", "image_tokenizer", "point_decoder_pos",
             "point_code_context", "image_code_context")
  for i, p in enumerate(path):
    if p in modules:
      if p.endswith("encoder") and i + 3 < len(path) and path[i + 2].startswith("block_"):
        sub = path[i + 3]  # attn / mlp / norm1 / norm2 / DropPath_0 / add
        return f"{phase}/{p}/" + ("norms" if sub.startswith("norm") else sub)
      return f"{phase}/{p}"
  if "(CMAH)" in op_name:
    return f"{phase}/masking+gathers"
  return f"{phase}/loss"


# -- trace ---------------------------------------------------------------------------------
def op_self_times(trace_dir: str) -> dict[str, list[float]]:
  """Self time (ns) of every execution of every op in the trace, by op name (all threads).

  An op's self time is its event's duration minus that of the events nested in it on the
  same thread (the body ops of a `while` loop are their own entries)."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
  if not files:
    raise RuntimeError(f"no trace written under {trace_dir}")
  data = jax.profiler.ProfileData.from_file(files[-1])
  runs: dict[str, list[float]] = collections.defaultdict(list)
  for plane in data.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if line.name == "python":
        continue
      events = sorted(((e.start_ns, e.duration_ns, e.name) for e in line.events
                       if not e.name.startswith(_INFRA)), key=lambda t: (t[0], -t[1]))
      stack: list[list] = []  # [end, name, index into runs[name]] of open events
      for start, dur, name in events:
        while stack and stack[-1][0] <= start:
          stack.pop()
        if stack:  # nested: not the parent's own time
          runs[stack[-1][1]][stack[-1][2]] -= dur
        runs[name].append(float(dur))
        stack.append([start + dur, name, len(runs[name]) - 1])
  return runs


def per_step(durations: list[float], steps: int) -> tuple[float, float]:
  """(mean, floor) ns per step of one op's executions over `steps` steps. The floor sums the
  op's fastest `len / steps` executions: on a loaded machine other processes only ever add
  time (preemption while an op runs), so it estimates the op's uncontended cost."""
  k = max(1, round(len(durations) / steps))
  return sum(durations) / steps, sum(sorted(durations)[:k])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--dtype", default="", choices=("", "float32", "bfloat16", "float16"),
                      help="model compute dtype (default: the config's)")
  parser.add_argument("--pairs", default="",
                      help="loss.pairs (default: the config's), e.g. "
                           "full_full,masked_point_full_image,image_views")
  parser.add_argument("--steps", type=int, default=20, help="timed steps")
  parser.add_argument("--train_examples", type=int, default=4000,
                      help="training-set size an objective's carried state is sized by")
  parser.add_argument("--trace_steps", type=int, default=10, help="steps under the profiler")
  parser.add_argument("--top", type=int, default=25, help="ops listed")
  parser.add_argument("--no_peak", action="store_true", help="skip the matmul-rate runs")
  parser.add_argument("--trace_dir", default="", help="keep the trace here (default: temp)")
  parser.add_argument("--hlo_out", default="", help="write the compiled HLO text here")
  args = parser.parse_args(argv)

  cfg = load_config(args.config, args.dtype or None, args.pairs or None)
  peak = 0.0 if args.no_peak else matmul_flops_per_s()
  step, state, batch = build_step(cfg, args.train_examples)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  mem = compiled.memory_analysis()
  hlo = compiled.as_text()
  if args.hlo_out:
    with open(args.hlo_out, "w") as f:
      f.write(hlo)

  for _ in range(2):  # warm-up
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times, cpu_times = [], []
  for _ in range(args.steps):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    times.append(t1 - t0)
    cpu_times.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="cmah_trace_")
  t0 = time.perf_counter()
  with jax.profiler.trace(trace_dir):
    for _ in range(args.trace_steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
  traced_s = (time.perf_counter() - t0) / args.trace_steps
  if not args.no_peak:
    peak = max(peak, matmul_flops_per_s())

  best, med = min(times), statistics.median(times)
  m = cfg.model
  print(f"config {args.config}: variant {cfg.variant}, batch {cfg.input.batch_size}, "
        f"{m.bits} bits, dtype {m.dtype}; backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s), {os.cpu_count()} CPU(s); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"compile {compile_s:.1f} s; memory: args {mem.argument_size_in_bytes / 2**20:.1f} MB, "
        f"temps {mem.temp_size_in_bytes / 2**20:.1f} MB" if mem else f"compile {compile_s:.1f} s")
  print(f"step time over {args.steps} steps: min {best * 1e3:.1f} ms, median {med * 1e3:.1f} ms "
        f"({1 / med:.2f} steps/s); CPU time per step: min {min(cpu_times) * 1e3:.0f} ms, "
        f"median {statistics.median(cpu_times) * 1e3:.0f} ms; traced steps "
        f"{traced_s * 1e3:.1f} ms")
  line = f"XLA cost analysis: {flops / 1e9:.2f} GFLOP/step -> {flops / best / 1e9:.1f} GFLOP/s " \
         f"at the best step"
  if peak:
    line += (f"; f32 matmul rate (2048^3) {peak / 1e9:.1f} GFLOP/s -> {flops / best / peak:.1%} "
             f"of it (median step: {flops / med / peak:.1%})")
  print(line)

  index = hlo_index(hlo)
  runs = op_self_times(trace_dir)
  n = args.trace_steps
  stats = {name: per_step(d, n) + (len(d) / n,) for name, d in runs.items()}  # mean, floor, runs
  total = sum(v[0] for v in stats.values())
  floor = sum(v[1] for v in stats.values())
  print(f"\nsum of op self times per step over {n} traced steps: mean {total / 1e6:.1f} ms, "
        f"floor {floor / 1e6:.1f} ms; {sum(v[2] for v in stats.values()):.0f} op executions "
        f"per step ({len(stats)} distinct ops)\n")
  print(f"Top {args.top} ops by floor time per step:\n")
  print("| # | op | floor ms / step | % of floor | mean ms / step | runs / step | shape | part | "
        "JAX op_name |")
  print("|---:|---|---:|---:|---:|---:|---|---|---|")
  ranked = sorted(stats.items(), key=lambda kv: -kv[1][1])
  for i, (name, (mean_ns, floor_ns, per)) in enumerate(ranked[:args.top]):
    shape, _, op_name = index.get(name, ("?", "?", ""))
    op_short = re.sub(r"^jit\([^)]*\)/", "", op_name)
    print(f"| {i + 1} | `{name}` | {floor_ns / 1e6:.2f} | {floor_ns / floor:.1%} | "
          f"{mean_ns / 1e6:.2f} | {per:.0f} | `{shape}` | {part_of(op_name)} | "
          f"`{op_short[-70:]}` |")

  parts = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
  for name, (mean_ns, floor_ns, per) in stats.items():
    acc = parts[part_of(index.get(name, ("", "", ""))[2])]
    acc[0] += mean_ns
    acc[1] += floor_ns
    acc[2] += per
  print("\nSelf time by part of the step:\n")
  print("| part | floor ms / step | % of floor | mean ms / step | op runs / step |")
  print("|---|---:|---:|---:|---:|")
  for part, (mean_ns, floor_ns, per) in sorted(parts.items(), key=lambda kv: -kv[1][1]):
    print(f"| {part} | {floor_ns / 1e6:.1f} | {floor_ns / floor:.1%} | {mean_ns / 1e6:.1f} | "
          f"{per:.0f} |")


if __name__ == "__main__":
  main()

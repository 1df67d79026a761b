"""Two methods of a suite's results, seed by seed: the paired view of a comparison.

  python -m cmah_jax.experiments.compare --results=docs/results/tuning_validation.json \
      --bits=64 cmah_t0.2_iso_img0.1_no3d cmah_t0.2_iso_img0.1

prints a markdown table: each method's mAP at each seed (image -> points / points ->
image), their mean over the seeds they share, and the difference A - B per seed and on
average, with how many shared seeds A is ahead in. With several code lengths
(`--bits=64,16`) one table each, then the difference pooled over every shared (code
length, seed) pair: the figure a tuning round's rule reads (docs/tuning.md). A seed fixes
a trained run's
initialisation and data order, so between two variants of one model it pairs like with
like; the suite's verdict table (`results.verdicts`) is the unpaired criterion.
"""
from __future__ import annotations

import json

from absl import app, flags

from cmah_jax.experiments.results import DIRECTIONS, METRICS, aggregate


def seed_values(rows: list[dict], method: str, bits: int, metric: str) -> dict[int, dict]:
  """`{seed: {direction: value}}` of `method`'s rows at `bits` (results.json's "runs"),
  read from `results.aggregate`'s `by_seed` ({} where the method has none).

  Raises:
    ValueError: a seed recorded twice (`results.aggregate`).
  """
  mine = [r for r in rows if r["method"] == method and int(r["bits"]) == int(bits)]
  if not mine:
    return {}
  (agg,) = aggregate(mine)  # the rows of one (method, bits) make one group
  by_seed = agg["by_seed"][metric]
  return {int(s): {d: by_seed[d][s] for d in DIRECTIONS} for s in by_seed[DIRECTIONS[0]]}


def paired(a: dict[int, dict], b: dict[int, dict]) -> dict:
  """Differences A - B on the seeds both have: `{"seeds": [...], "delta": {seed: {d: x}},
  "mean": {"a"|"b"|"delta": {d: x}}, "ahead": {d: count}}` (means over shared seeds)."""
  seeds = sorted(set(a) & set(b))
  delta = {s: {d: a[s][d] - b[s][d] for d in DIRECTIONS} for s in seeds}
  n = len(seeds)
  mean = {k: {d: (sum(v[s][d] for s in seeds) / n if n else float("nan"))
              for d in DIRECTIONS} for k, v in (("a", a), ("b", b), ("delta", delta))}
  ahead = {d: sum(delta[s][d] > 0 for s in seeds) for d in DIRECTIONS}
  return {"seeds": seeds, "delta": delta, "mean": mean, "ahead": ahead}


def pooled(pairings: list[dict]) -> dict:
  """The differences of several `paired` results (one per code length) pooled over every
  shared (code length, seed) pair: `{"pairs": n, "delta": {d: mean}, "ahead": {d: count}}`
  (mean nan where no pair)."""
  deltas = [p["delta"][s] for p in pairings for s in p["seeds"]]
  n = len(deltas)
  return {"pairs": n,
          "delta": {d: (sum(x[d] for x in deltas) / n if n else float("nan"))
                    for d in DIRECTIONS},
          "ahead": {d: sum(x[d] > 0 for x in deltas) for d in DIRECTIONS}}


def _pair(v: dict | None, signed: bool = False) -> str:
  if v is None:
    return ""
  fmt = "{:+.3f}" if signed else "{:.3f}"
  return " / ".join(fmt.format(v[d]) for d in DIRECTIONS)


def markdown(rows: list[dict], method_a: str, method_b: str, bits,
             metric: str = "map_tie_aware") -> str:
  """The table for `method_a` against `method_b` at `bits`, an int or a sequence of them
  (a table each, then the pooled line; see the module docstring).

  Raises:
    ValueError: a method without rows at a code length (named, with the methods that have
      some there).
  """
  if not isinstance(bits, int):
    tables, pairings = zip(*(_table(rows, method_a, method_b, int(k), metric)
                             for k in bits))
    if len(bits) == 1:
      return tables[0]
    pool = pooled(list(pairings))
    n = pool["pairs"]
    return "\n\n".join(tables) + (
        f"\n\nOver all {n} shared (code length, seed) pairs at "
        f"{', '.join(str(int(k)) for k in bits)} bits: mean A - B "
        f"{_pair(pool['delta'], signed=True)}; A is ahead in "
        + ", ".join(f"{pool['ahead'][d]} of {n} {d}" for d in DIRECTIONS) + ".")
  return _table(rows, method_a, method_b, bits, metric)[0]


def _table(rows, method_a, method_b, bits, metric):
  """(the markdown table at one code length, its `paired` result)."""
  a, b = (seed_values(rows, m, bits, metric) for m in (method_a, method_b))
  for name, values in ((method_a, a), (method_b, b)):
    if not values:
      have = sorted({r["method"] for r in rows if int(r["bits"]) == int(bits)})
      raise ValueError(f"no {bits}-bit run of {name!r} in the results; {bits}-bit methods: "
                       f"{', '.join(have) or 'none'}")
  p = paired(a, b)
  seeds = sorted(set(a) | set(b))
  lines = [f"{METRICS[metric]}, {bits} bits, image -> points / points -> image",
           "", f"| {bits} bits | " + " | ".join(f"seed {s}" for s in seeds)
           + " | mean over shared seeds |", "|---|" + "---|" * (len(seeds) + 1)]
  for name, values, key in ((method_a, a, "a"), (method_b, b, "b")):
    lines.append(f"| {name} | " + " | ".join(_pair(values.get(s)) for s in seeds)
                 + f" | {_pair(p['mean'][key]) if p['seeds'] else ''} |")
  lines.append("| A - B | " + " | ".join(_pair(p["delta"].get(s), signed=True)
                                          for s in seeds)
               + f" | {_pair(p['mean']['delta'], signed=True) if p['seeds'] else ''} |")
  n = len(p["seeds"])
  lines += ["", f"A = {method_a}, B = {method_b}. A is ahead in "
            + ", ".join(f"{p['ahead'][d]} of {n} shared seeds {d}" for d in DIRECTIONS)
            + (f"; seeds without a partner: {sorted(set(seeds) - set(p['seeds']))}"
               if n < len(seeds) else "") + "."]
  return "\n".join(lines), p


def _define_flags() -> None:
  """The command line's flags; defined only when run as a program, so that importing this
  module beside another tool's (`experiments.readme` also has `--results`) is no clash."""
  flags.DEFINE_string("results", None, "A suite's results.json.")
  flags.DEFINE_list("bits", None, "The code length, or several (e.g. 64,16: a table "
                    "each, then the difference pooled over every (code length, seed) pair).")
  flags.DEFINE_enum("metric", "map_tie_aware", sorted(METRICS), "Which mAP.")
  flags.mark_flags_as_required(["results", "bits"])


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("name two methods: compare --results=... --bits=K[,K...] A B")
  args = flags.FLAGS
  try:
    bits = [int(k) for k in args.bits]
  except ValueError:
    raise SystemExit(f"--bits={','.join(args.bits)}: code lengths are integers, "
                     "e.g. --bits=64,16") from None
  try:
    with open(args.results) as f:
      rows = json.load(f)["runs"]
  except (OSError, ValueError, KeyError) as e:
    raise SystemExit(f"{args.results}: not a suite's results.json ({e})") from None
  try:
    print(markdown(rows, argv[1], argv[2], bits, args.metric))
  except ValueError as e:
    raise SystemExit(str(e)) from None


if __name__ == "__main__":
  _define_flags()
  app.run(main)

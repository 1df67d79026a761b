"""Put a suite's results table into a Markdown file, between marker comments:

  python -m cmah_jax.experiments.readme --results=work/suite/results.json --readme=README.md

The block between `<!-- results:begin -->` and `<!-- results:end -->` is replaced by the
tie-aware mAP table of `results.json` (and the runs in it, the command and the machine
time that made it), so the README's numbers are generated, never typed.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags

from cmah_jax.experiments import results as results_lib
from cmah_jax.experiments.suites import SUITES

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

_RESULTS = flags.DEFINE_string("results", None, "results.json of a suite.")
_README = flags.DEFINE_string("readme", "README.md", "Markdown file with the markers.")
PLAN_SEEDS = 3  # seeds 0..2 of a suite's plan, as `python -m cmah_jax.experiments` defaults

_COMMAND = flags.DEFINE_string("command", None, "The command that produced the results "
                               "(default: keep the command the block names now).")
_SEEDS = flags.DEFINE_integer("seeds", PLAN_SEEDS, "Seeds 0..N-1 of the suite's plan (its "
                              "--seeds): the planned runs the results lack are listed.")


def _seed_span(seeds: list[int]) -> str:
  """[0, 1, 2] -> "seeds 0-2"; [0, 2] -> "seeds 0, 2"; [0] -> "seed 0"."""
  if len(seeds) == 1:
    return f"seed {seeds[0]}"
  if seeds == list(range(seeds[0], seeds[-1] + 1)):
    return f"seeds {seeds[0]}-{seeds[-1]}"
  return "seeds " + ", ".join(map(str, seeds))


def _listing(seeds_by_method: dict[str, dict[int, list[int]]]) -> str:
  """{method: {bits: seeds}} -> "`a`: 16 and 32 bits seed 0, 64 bits seeds 1-2; `b`: ...",
  methods in the given order, code lengths that share their seeds named together."""
  parts = []
  for method, seeds_by_bits in seeds_by_method.items():
    by_span: dict[str, list[int]] = {}  # seed span -> the code lengths that have it
    for bits in sorted(seeds_by_bits):
      by_span.setdefault(_seed_span(seeds_by_bits[bits]), []).append(bits)
    groups = []
    for span, bits in by_span.items():
      names = [str(b) for b in bits]
      named = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
      groups.append(f"{named} bits {span}")
    parts.append(f"`{method}`: " + ", ".join(groups))
  return "; ".join(parts)


def runs_listing(aggs: list[dict]) -> str:
  """Which runs a table holds, from its aggregates (`results.aggregate`: one per method and
  code length, with the seeds it averages), methods in table order: code lengths that share
  their seeds are named together, e.g. "cmah: 16 and 64 bits seeds 0-2, 32 bits seed 0".
  A sign(h) row (`results.SIGN_ROWS`) scores runs listed under their own method: skipped."""
  sign_rows = {name for name, _ in results_lib.SIGN_ROWS.values()}
  seeds_by_method: dict[str, dict[int, list[int]]] = {}
  for agg in aggs:
    if agg["method"] not in sign_rows:
      seeds_by_method.setdefault(agg["method"], {})[agg["bits"]] = agg["seeds"]
  return _listing(seeds_by_method)


def missing_listing(data: dict, seeds: int) -> tuple[str, int]:
  """The runs of the suite's comparison (`suites.SUITES[data["suite"]].blocks`, seeds
  0..seeds-1; not the runs of earlier defaults it keeps) that `data` does not hold, as
  `runs_listing` words them, and how many: `("", 0)` when none is missing or the suite is
  not a registered one."""
  suite = SUITES.get(data.get("suite", ""))
  if suite is None:
    return "", 0
  have = {(a["method"], a["bits"]): set(a["seeds"]) for a in data["aggregate"]}
  wanted = set(range(seeds))
  missing: dict[str, dict[int, list[int]]] = {}
  for names, code_lengths in suite.blocks:
    for method in names:
      for bits in code_lengths:
        left = sorted(wanted - have.get((method, bits), set()))
        if left:
          missing.setdefault(method, {})[bits] = left
  count = sum(len(s) for by_bits in missing.values() for s in by_bits.values())
  return _listing(missing), count


def table(data: dict, command: str = "", seeds: int = PLAN_SEEDS) -> str:
  """The generated block (without markers); `seeds`: how many seeds the suite's plan runs
  (its `--seeds`), to list the planned runs not yet in `data`."""
  aggs = data["aggregate"]
  hours = sum(r.get("train_seconds") or 0.0 for r in data["runs"]) / 3600
  # A CMAH or UCCH run also gives a sign(h) row (`results.SIGN_ROWS`): one run, counted once.
  trained = sum(1 for r in data["runs"] if r.get("codes") != "sign")
  lines = [f"Suite `{data['suite']}` ({trained} runs; training time summed over "
           f"runs {hours:.1f} h). {data['protocol']}."]
  if any(r.get("codes") == "itq" for r in data["runs"]):
    lines += ["", "Trained methods are scored with the learned quantiser's codes, sign((h - "
              "mean) R), ITQ fitted on the training objects' continuous codes after training "
              "(`cmah_jax/quantizer.py`); the row *CMAH, sign(h) codes* scores the same CMAH "
              "runs with the network's own sign codes, and *UCCH, sign(h) codes* UCCH's runs "
              "with UCCH's own quantiser (a baseline is judged at both)."]
  lines += ["", f"Runs: {runs_listing(aggs)}."]
  missing, count = missing_listing(data, seeds)
  if missing:
    lines += ["", f"Not yet run ({count} runs of the `{data['suite']}` suite's comparison at "
              f"{seeds} seeds; its rows and verdicts are incomplete until they are): "
              f"{missing}."]
  if command:
    lines += ["", f"`{command}`"]
  body = results_lib.markdown(aggs, "", data["protocol"]).split("\n")
  start = body.index("## " + results_lib.METRICS["map_tie_aware"])
  stop = body.index("", start + 2)
  lines += ["", "mAP@all, tie-aware; each cell image -> point cloud / point cloud -> "
            "image, mean ± std over seeds:", ""] + body[start + 2:stop]
  verdict = results_lib.verdict_markdown(aggs, metric="map_tie_aware")
  if verdict:
    lines += [""] + verdict.replace("## ", "", 1).rstrip("\n").split("\n")
  return "\n".join(lines)


def split_block(text: str) -> tuple[str, str, str]:
  """`(head, block, tail)` of a Markdown text around the markers (`block` without them and
  without the newlines next to them).

  Raises:
    ValueError: the markers are missing or out of order.
  """
  if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
    raise ValueError(f"the markers {BEGIN} ... {END} are missing or out of order")
  head, rest = text.split(BEGIN, 1)
  block, tail = rest.split(END, 1)
  return head, block.strip("\n"), tail


def command_of(block: str) -> str:
  """The command a generated block names (the one line `table` writes in backticks), or ""."""
  return next((line[1:-1] for line in block.splitlines()
               if len(line) > 1 and line[0] == line[-1] == "`"), "")


def replace_block(text: str, block: str) -> str:
  """`text` with the content between the markers replaced by `block`."""
  head, _, tail = split_block(text)
  return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv):
  del argv
  try:
    with open(_RESULTS.value) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise SystemExit(f"[readme] --results={_RESULTS.value}: cannot read it as JSON ({e})"
                     ) from None
  if not data.get("runs"):
    raise SystemExit(f"[readme] --results={_RESULTS.value} holds no run: nothing to show "
                     "(run the suite, or `--tables_only` over merged results, first)")
  try:
    with open(_README.value) as f:
      text = f.read()
    command = _COMMAND.value
    if command is None:
      command = command_of(split_block(text)[1])
    block = replace_block(text, table(data, command, _SEEDS.value))
  except OSError as e:
    raise SystemExit(f"[readme] --readme={_README.value}: {e.strerror or e}") from None
  except ValueError as e:
    raise SystemExit(f"[readme] --readme={_README.value}: {e}") from None
  with open(_README.value, "w") as f:
    f.write(block)
  print(f"updated the results block of {_README.value}", file=sys.stderr)


if __name__ == "__main__":
  flags.mark_flags_as_required(["results"])
  app.run(main)

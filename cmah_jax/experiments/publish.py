"""Copy a suite's tables to where they are published (the repository's `docs/results/`),
refusing to lose a published row:

  python -m cmah_jax.experiments.publish --results=$PWD/work/suite/results.json \
      --to=docs/results/results.json --plot_to=docs/results/map_vs_bits.png

A suite's `results.json` holds only its plan's runs (finished here or merged with
`--merge`); a row the published file has and the suite's lacks (another plan, fewer seeds,
a suite directory that lost its `merged_results.json`) would be dropped by a plain copy.
Every published row, by run fingerprint and kind of codes (`merged.row_key`), must be in
the new file, or nothing is written and the missing rows are named. The `.md` beside
`--results` goes beside `--to` under the same stem (`results.md`, `tuning_validation.md`);
the plot is copied only with `--plot_to`. The README's block is then regenerated with
`python -m cmah_jax.experiments.readme`.
"""
from __future__ import annotations

import os
import shutil

from absl import app, flags

from cmah_jax.experiments import merged as merged_lib


def _describe(row: dict) -> str:
  return f"{row['method']} {row['bits']} bits seed {row['seed']} ({row['codes']} codes)"


def publish(results_path: str, to_path: str, plot_to: str | None = None) -> list[str]:
  """Replace `to_path` (and its `.md`, and `plot_to`) by the suite's files beside
  `results_path`; returns lines saying what changed. ValueError, naming the rows, when a
  row of `to_path` is not in `results_path` (nothing is written then), or naming the file
  when one cannot be read."""
  new_rows = merged_lib.read_rows(results_path, "publish")
  old_rows = merged_lib.read_rows(to_path, "publish") if os.path.exists(to_path) else []
  def keys(rows):  # a fresh set each call: `unseen_rows` adds the rows it passes to it
    return {merged_lib.row_key(r) for r in rows}

  lost = merged_lib.unseen_rows(old_rows, keys(new_rows))
  if lost:
    shown = "; ".join(_describe(r) for r in lost[:5])
    more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
    raise ValueError(
        f"publish: {results_path} lacks {len(lost)} of the {len(old_rows)} rows of "
        f"{to_path}: {shown}{more}. Rewrite the suite's tables with those rows first "
        f"(python -m cmah_jax.experiments ... --merge={to_path} --seeds=N --tables_only, "
        "at the --seeds and suite that planned them), then publish.")
  md_from = os.path.splitext(results_path)[0] + ".md"
  md_to = os.path.splitext(to_path)[0] + ".md"
  copies = [(results_path, to_path)]
  if os.path.exists(md_from):
    copies.append((md_from, md_to))
  if plot_to:
    plot_from = os.path.join(os.path.dirname(results_path), "map_vs_bits.png")
    if not os.path.exists(plot_from):
      raise ValueError(f"publish: --plot_to given but {plot_from} does not exist")
    copies.append((plot_from, plot_to))
  for src, dst in copies:  # each file whole or not at all
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)
  added = merged_lib.unseen_rows(new_rows, keys(old_rows))
  lines = [f"[publish] {to_path}: {len(old_rows)} -> {len(new_rows)} rows, none lost; "
           f"{len(added)} new"]
  lines += [f"[publish]   new: {_describe(r)}" for r in added]
  lines += [f"[publish] {dst} <- {src}" for src, dst in copies[1:]]
  return lines


def _define_flags() -> None:
  """The command line's flags; defined only when run as a program, so that importing this
  module beside another tool's (`experiments.readme` also has `--results`) is no clash."""
  flags.DEFINE_string("results", None, "The suite's results.json.")
  flags.DEFINE_string("to", None, "The published results.json it replaces.")
  flags.DEFINE_string("plot_to", None, "Where the suite's map_vs_bits.png goes (default: "
                      "the plot is not copied).")
  flags.mark_flags_as_required(["results", "to"])


def main(argv):
  del argv
  args = flags.FLAGS
  try:
    print("\n".join(publish(args.results, args.to, args.plot_to)))
  except ValueError as e:
    raise SystemExit(str(e)) from None


if __name__ == "__main__":
  _define_flags()
  app.run(main)

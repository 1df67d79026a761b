"""Runs that finished somewhere else: on another machine, or in a suite directory since
deleted. Their rows come from that suite's `results.json`.

`--merge=PATH[,PATH]` copies the rows of those files into `<root>/merged_results.json`,
once; every later command on that root reads them from there. A planned run whose
fingerprint (method + fully resolved config, `plan.run_fingerprint`) matches merged rows
counts as finished: it is not trained again, and the tables show those rows, each marked
with the file it came from (`merged_from`). A row whose fingerprint matches no planned
run is kept in the file but never shown: another config made it. A run finished here
takes precedence over merged rows of the same fingerprint (`plan.finished_where`); the
rows show under the run's method today (`results.relabel`).
"""
from __future__ import annotations

import json
import os

MERGED_FILE = "merged_results.json"
# Keys every row of a results.json has (`results.run_row`); a row without one is refused.
ROW_KEYS = ("method", "bits", "seed", "fingerprint", "codes", "map", "map_tie_aware")


def path(root: str) -> str:
  return os.path.join(root, MERGED_FILE)


def row_key(row: dict) -> tuple[str, str]:
  """What identifies a row: its run (the fingerprint) and which codes it scores. Not the
  method's name, which a renamed method (`Method.recorded_as`) changes while the run
  stays the same."""
  return row["fingerprint"], row["codes"]


def load(root: str) -> dict[str, list[dict]]:
  """fingerprint -> the merged rows of that run (one per kind of codes: the first of any
  repeats), from `<root>/merged_results.json`; empty if nothing was merged."""
  if not os.path.exists(path(root)):
    return {}
  with open(path(root)) as f:
    return by_fingerprint(json.load(f)["runs"])


def by_fingerprint(rows: list[dict]) -> dict[str, list[dict]]:
  """fingerprint -> its rows (one per kind of codes: the first of any repeats)."""
  out: dict[str, list[dict]] = {}
  for row in unseen_rows(rows, set()):
    out.setdefault(row["fingerprint"], []).append(row)
  return out


def unseen_rows(rows: list[dict], seen: set) -> list[dict]:
  """The rows whose `row_key` is not in `seen`, the first of any repeats, in order;
  adds their keys to `seen`."""
  out = []
  for row in rows:
    key = row_key(row)
    if key not in seen:
      seen.add(key)
      out.append(row)
  return out


def read_rows(results_path: str, who: str = "--merge") -> list[dict]:
  """The rows of a suite's results.json; ValueError naming the file (and the row and key)
  when it is not one, its message starting with `who` (the flag or command reading it)."""
  try:
    with open(results_path) as f:
      data = json.load(f)
  except OSError as e:
    raise ValueError(f"{who}: cannot read {results_path}: {e.strerror}") from None
  except ValueError as e:
    raise ValueError(f"{who}: {results_path} is not JSON ({e})") from None
  if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
    raise ValueError(f"{who}: {results_path} has no 'runs' list; expected the "
                     "results.json a suite writes")
  for i, row in enumerate(data["runs"]):
    missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
    if missing:
      raise ValueError(f"{who}: {results_path}: runs[{i}] lacks {', '.join(missing)}")
  return data["runs"]


def merge_files(root: str, results_paths: list[str], planned_fingerprints,
                write: bool = True) -> tuple[list[str], dict[str, list[dict]]]:
  """Add the rows of `results_paths` to `<root>/merged_results.json` (a row already there,
  same fingerprint and codes, is kept as it was, whatever method name either carries).

  Returns:
    one line per file saying what it added and how many of its runs match
    `planned_fingerprints`; and the merged rows as `load` would read them back. With
    `write=False` (a dry run) nothing is written.
  """
  current = [row for rows in load(root).values() for row in rows]
  have = {row_key(r) for r in current}
  planned = set(planned_fingerprints)
  lines = []
  for p in results_paths:
    rows = read_rows(p)
    source = os.path.abspath(p)
    added = [dict(r, merged_from=source) for r in unseen_rows(rows, have)]
    current += added
    runs = {r["fingerprint"] for r in rows}
    lines.append(f"[experiments] merged {p}: {len(added)} of {len(rows)} rows new; "
                 f"{len(runs & planned)} of its {len(runs)} runs are in this plan"
                 + ("" if runs <= planned else
                    f" ({len(runs - planned)} made by another config or outside the plan: "
                    "kept, not shown)"))
  if write:
    os.makedirs(root, exist_ok=True)
    tmp = path(root) + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"runs": current}, f, indent=2)
    os.replace(tmp, path(root))
  return lines, by_fingerprint(current)

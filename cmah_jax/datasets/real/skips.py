"""Skip accounting of the real-dataset builders: what was skipped, why, and the summary.

An object is *skipped and counted* when it has a point cloud but no images (or the
reverse), fewer views than `num_views`, an unreadable point or image file (named), or a
rejected point cloud (named by its id). More than `max_skip_fraction` of the candidate
objects skipped is a hard `TooManySkippedError`. `PrepareReport.format()` is the summary
(objects per class and split, pairs found, skips by reason with examples, ignored files)
printed at the end of preparation; `to_json()` is saved as `prepare_summary.json`.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Sequence

from cmah_jax.datasets.real.splits import SPLITS

_MAX_SKIP_WARNINGS = 20  # skips logged one by one; the rest only in the summary [ours]

REASONS = {
    "no_images": "point cloud but no rendered images",
    "no_points": "rendered images but no point cloud",
    "too_few_views": "fewer rendered views than config.num_views",
    "unreadable_points": "point-cloud file could not be read",
    "unreadable_image": "image file could not be read",
    "bad_points": "point cloud rejected (non-finite, too few points, wrong shape or "
                  "degenerate)",
    "unknown_class": "category not in the dataset's class list",
    "label_mismatch": "stored label disagrees with the object's category",
    "duplicate": "object listed more than once",
}


class TooManySkippedError(RuntimeError):
  """More than `max_skip_fraction` of the candidate objects were skipped."""


@dataclasses.dataclass(frozen=True)
class Skip:
  reason: str  # a key of REASONS
  object_id: str
  detail: str = ""
  path: str | None = None

  def describe(self) -> str:
    where = f" [{self.path}]" if self.path else ""
    return f"{self.object_id}{where}: {self.detail or REASONS.get(self.reason, self.reason)}"


class PrepareReport:
  """Counts of a preparation run; raises `TooManySkippedError` past `max_skip_fraction`."""

  def __init__(self, dataset: str, config_name: str, class_names: Sequence[str],
               num_candidates: int, max_skip_fraction: float,
               ignored: dict[str, int] | None = None):
    self.dataset = dataset
    self.config_name = config_name
    self.class_names = list(class_names)
    self.num_candidates = int(num_candidates)
    self.max_skip_fraction = float(max_skip_fraction)
    self.ignored = dict(ignored or {})
    self.pairs_found = 0
    self.skips: list[Skip] = []
    self.planned = collections.Counter()  # (split, label) -> paired objects assigned
    self.written = collections.Counter()  # (split, label) -> examples written

  def skip(self, s: Skip, check: bool = True):
    self.skips.append(s)
    if len(self.skips) <= _MAX_SKIP_WARNINGS:
      logging.warning("%s: skipped %s", self.dataset, s.describe())
    elif len(self.skips) == _MAX_SKIP_WARNINGS + 1:
      logging.warning("%s: further skips are listed only in the final summary.",
                      self.dataset)
    if check:
      self.check()

  def check(self):
    limit = self.max_skip_fraction * self.num_candidates
    if len(self.skips) > limit:
      raise TooManySkippedError(
          f"{self.dataset}: {len(self.skips)} of {self.num_candidates} candidate objects "
          f"skipped, more than max_skip_fraction={self.max_skip_fraction:g} allows "
          f"({limit:.1f}). Fix the files named below (or raise the limit: "
          f"get_builder(..., max_skip_fraction=F)).\n{self.format(max_examples=10)}")

  def format(self, max_examples: int = 5) -> str:
    lines = [f"== {self.dataset}/{self.config_name}: preparation summary =="]
    lines.append(f"candidate objects {self.num_candidates}; pairs found (points + images) "
                 f"{self.pairs_found}; examples written {sum(self.written.values())}; "
                 f"skipped {len(self.skips)}")
    counted = self.written if self.written else self.planned
    title = "written" if self.written else "planned"
    if counted:
      lines.append(f"objects per class ({title}): train / query / database")
      for lab, name in enumerate(self.class_names):
        n = [counted[(s, lab)] for s in SPLITS]
        if any(n):
          lines.append(f"  {lab:3d} {name:<28s} {n[0]:7d} {n[1]:7d} {n[2]:7d}")
      tot = [sum(v for (s, _), v in counted.items() if s == split) for split in SPLITS]
      lines.append(f"      {'total':<28s} {tot[0]:7d} {tot[1]:7d} {tot[2]:7d}")
    if self.skips:
      lines.append("skipped, by reason:")
      by_reason = collections.defaultdict(list)
      for s in self.skips:
        by_reason[s.reason].append(s)
      for reason, items in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {len(items):6d} {reason}: {REASONS.get(reason, reason)}")
        for s in items[:max_examples]:
          lines.append(f"           - {s.describe()}")
        if len(items) > max_examples:
          lines.append(f"           ... {len(items) - max_examples} more "
                       "(all in prepare_summary.json)")
    for what, n in sorted(self.ignored.items()):
      if n:
        lines.append(f"ignored (not candidates): {n} {what}")
    return "\n".join(lines)

  def to_json(self) -> dict:
    return {
        "dataset": self.dataset, "config": self.config_name,
        "num_candidates": self.num_candidates, "pairs_found": self.pairs_found,
        "max_skip_fraction": self.max_skip_fraction,
        "written": {split: {self.class_names[lab]: n for (s, lab), n in
                            sorted(self.written.items()) if s == split} for split in SPLITS},
        "skipped": [dataclasses.asdict(s) for s in self.skips],
        "ignored": self.ignored,
    }

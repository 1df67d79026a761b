"""A suite's results: `results.json` (every run, and mean ± std over seeds), `results.md`
(one table per metric, both directions, each code length) and `map_vs_bits.png`."""
from __future__ import annotations

import json
import os

import numpy as np

from cmah_jax.experiments.methods import EARLIER

DIRECTIONS = ("i2p", "p2i")
METRICS = {"map": "mAP@all (ties by database index)",
           "map_tie_aware": "mAP@all, tie-aware (McSherry & Najork 2008)"}
GROUP_ORDER = ("ours", "candidate", "baseline", "bound", "ablation", EARLIER)
MODALITIES = ("image", "point")
USAGE = {"distinct": "distinct codes", "majority_fraction": "majority-bit share"}


# The network's own sign(h) codes of these methods, tabled beside the learned quantiser's
# in the method's group (CMAH's: an ablation of the quantiser; a baseline's own quantiser,
# such as UCCH's sign(u), a baseline row judged like its ITQ row): method -> (row name,
# label).
SIGN_ROWS = {"cmah": ("cmah_sign", "CMAH, sign(h) codes (no ITQ: the paper's quantiser)"),
             "ucch": ("ucch_sign", "UCCH, sign(h) codes (its own quantiser)"),
             "cmah_r10": ("cmah_r10_sign", "CMAH, defaults of rounds 10-16, sign(h) codes"),
             "cmah_img1": ("cmah_img1_sign", "CMAH, L_2D weight 1, sign(h) codes"),
             "paper_masked_pair": ("paper_masked_pair_sign",
                                   "CMAH, the paper's masked-masked pair, sign(h) codes"),
             "linear_patches": ("linear_patches_sign",
                                "CMAH, MAE's linear patch embedding, sign(h) codes"),
             "paper_masked_pair_r18": ("paper_masked_pair_r18_sign",
                                       "CMAH, the paper's masked-masked pair, defaults of "
                                       "rounds 18-24, sign(h) codes")}


def _shown_as(row: dict, method) -> dict | None:
  """`row` under `method`'s name, label and group; a sign(h) row under the name and label
  `SIGN_ROWS` gives the method, in the method's group (today's CMAH's as an ablation), or
  None where it gives none."""
  if row["codes"] != "sign":
    return dict(row, method=method.name, label=method.label, group=method.group)
  if method.name not in SIGN_ROWS:
    return None
  name, label = SIGN_ROWS[method.name]
  return dict(row, method=name, label=label,
              group="ablation" if method.group == "ours" else method.group)


def run_rows(run, report: dict) -> list[dict]:
  """The rows of one finished run: one, with the learned quantiser's ("itq") codes where
  the report has them (trained methods) and the report's own codes otherwise; plus, for
  the methods of `SIGN_ROWS`, the sign(h) codes as an ablation row."""
  if "itq" not in report:
    return [run_row(run, report)]
  # The sign(h) row is the same training as the itq row: its time is counted there.
  rows = [run_row(run, dict(report, **report["itq"]), codes="itq"),
          dict(run_row(run, report, codes="sign"), train_seconds=None)]
  return [shown for row in rows if (shown := _shown_as(row, run.method))]


def relabel(run, rows: list[dict]) -> list[dict]:
  """Rows recorded elsewhere for `run` (`merged.py`), shown as `run_rows` would show
  them today: under its method's name, label and group (a method renamed since,
  `Method.recorded_as`, shows its own), the sign(h) row only where that method has one.
  A run merged both from before the learned quantiser ("own" codes) and after ("itq")
  shows the "itq" row, as `run_rows` does, not both (its seed would count twice)."""
  if any(row.get("codes") == "itq" for row in rows):
    rows = [row for row in rows if row.get("codes") != "own"]
  return [shown for row in rows if (shown := _shown_as(row, run.method))]


def run_row(run, report: dict, codes: str = "own") -> dict:
  """The numbers of one finished run, from `report`'s top-level metrics; `codes` names
  which codes they score ("own": the method's, "sign": sign(h), "itq": the learned
  quantiser's)."""
  b = str(run.bits)
  row = {"method": run.method.name, "label": run.method.label, "group": run.method.group,
         "bits": run.bits, "seed": run.seed, "fingerprint": run.fingerprint,
         "workdir": run.workdir, "steps": report.get("steps"), "codes": codes,
         "train_seconds": report.get("train_seconds"), "protocol": report.get("protocol"),
         "precision_within_radius": {d: report["precision_within_radius"][d]
                                     for d in DIRECTIONS}}
  for m in METRICS:
    row[m] = {d: report[m][d][b] for d in DIRECTIONS}
  # How the database codes use their bits (`metrics.code_usage`); absent in reports
  # written before it existed.
  usage = report.get("code_usage", {}).get("database")
  row["code_usage"] = ({m: {k: usage[m][k] for k in USAGE} for m in MODALITIES}
                       if usage else None)
  return row


def aggregate(rows: list[dict]) -> list[dict]:
  """Mean and sample std (ddof=1; 0 for one seed) over seeds of each (method, bits), and
  each seed's mAP (`by_seed[metric][direction][str(seed)]`, for paired comparisons).

  Raises:
    ValueError: two rows of one (method, bits, seed): the seed would count twice in the
      mean and std, and `by_seed` would keep only one of them.
  """
  groups: dict = {}
  for r in rows:
    group = groups.setdefault((r["method"], r["bits"]), [])
    if any(other["seed"] == r["seed"] for other in group):
      raise ValueError(f"{r['method']} {r['bits']} bits seed {r['seed']} has two rows")
    group.append(r)
  out = []
  for (method, bits), rs in groups.items():
    agg = {"method": method, "label": rs[0]["label"], "group": rs[0]["group"], "bits": bits,
           "seeds": sorted(r["seed"] for r in rs), "n": len(rs)}
    for m in list(METRICS) + ["precision_within_radius"]:
      for d in DIRECTIONS:
        v = np.array([r[m][d] for r in rs], float)
        agg[f"{m}/{d}/mean"] = float(v.mean())
        agg[f"{m}/{d}/std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    agg["by_seed"] = {m: {d: {str(r["seed"]): float(r[m][d]) for r in rs} for d in DIRECTIONS}
                      for m in METRICS}
    usage = [r.get("code_usage") for r in rs]
    if all(usage):  # means over seeds, only where every seed's report has them
      for m in MODALITIES:
        for k in USAGE:
          agg[f"usage/{m}/{k}"] = float(np.mean([u[m][k] for u in usage]))
    out.append(agg)
  return out


def _order(aggs):
  methods = []
  for a in sorted(aggs, key=lambda a: GROUP_ORDER.index(a["group"])
                  if a["group"] in GROUP_ORDER else 99):
    if a["method"] not in methods:
      methods.append(a["method"])
  return methods


def cell(agg: dict, metric: str, most_seeds: int) -> str:
  """`i2p / p2i` as `mean ± std`; one seed has no std (`mean / mean (1 seed)`); a cell
  over fewer seeds than `most_seeds` ends with its count."""
  n = agg["n"]
  if n == 1:
    text = " / ".join(f"{agg[f'{metric}/{d}/mean']:.3f}" for d in DIRECTIONS) + " (1 seed)"
  else:
    text = " / ".join(f"{agg[f'{metric}/{d}/mean']:.3f} ± {agg[f'{metric}/{d}/std']:.3f}"
                      for d in DIRECTIONS)
    if n < most_seeds:
      text += f" ({n} seeds)"
  return text


def _method_table(aggs: list[dict], fmt) -> list[str]:
  """Markdown rows: one per method (in group order), one column per code length; a cell is
  `fmt(agg)`, blank where the method has no run at that length or `fmt` returns None."""
  bits = sorted({a["bits"] for a in aggs})
  by = {(a["method"], a["bits"]): a for a in aggs}
  labels = {a["method"]: a["label"] for a in aggs}
  lines = ["| method | " + " | ".join(f"{b} bits" for b in bits) + " |",
           "|---|" + "---|" * len(bits)]
  for method in _order(aggs):
    cells = [by.get((method, b)) for b in bits]
    cells = ["" if a is None else (fmt(a) or "") for a in cells]
    lines.append(f"| {labels[method]} | " + " | ".join(cells) + " |")
  return lines


def markdown(aggs: list[dict], title: str, protocol: str, radius: int = 2) -> str:
  """Tables: rows = methods, columns = code lengths, cells `i2p / p2i` as mean ± std;
  `radius`: the Hamming radius of the runs' precision within it (`eval.hamming_radius`)."""
  if not aggs:
    return f"# {title}\n\nNo run has finished yet.\n"
  most_seeds = max(a["n"] for a in aggs)
  lines = [f"# {title}", "", f"Protocol: {protocol}. Mean ± std over seeds (a cell over "
           "fewer seeds than the table's most says how many; one seed has no spread); each "
           "cell image -> point cloud / point cloud -> image.", ""]
  for m, name in list(METRICS.items()) + [("precision_within_radius",
                                           f"precision within Hamming radius {radius}")]:
    lines += [f"## {name}", ""]
    lines += _method_table(aggs, lambda a, m=m: cell(a, m, most_seeds)) + [""]
  lines += usage_markdown(aggs)
  return "\n".join(lines)


def _usage_cell(a: dict) -> str | None:
  if "usage/point/distinct" not in a:
    return None
  return (" / ".join(f"{a[f'usage/{m}/distinct']:.0f}" for m in MODALITIES) + "; "
          + " / ".join(f"{a[f'usage/{m}/majority_fraction']:.2f}" for m in MODALITIES))


def usage_markdown(aggs: list[dict]) -> list[str]:
  """Lines of the code-usage table: distinct database codes and the mean majority-bit
  share, image / point codes, mean over seeds (blank where a report predates it)."""
  if not any("usage/point/distinct" in a for a in aggs):
    return []
  return ["## code usage of the database codes", "",
          "Distinct codes among the database objects, and the mean over bits of the more "
          "common value's share (0.50 = balanced bits); image / point codes, mean over "
          "seeds.", ""] + _method_table(aggs, _usage_cell) + [""]


def verdicts(aggs: list[dict], ours: str = "cmah", metric: str = "map") -> list[dict]:
  """Does `ours` beat each other method at each code length, in both directions, by more
  than the larger of the two seed standard deviations (the issue's criterion)? Methods of
  group "earlier" (trained under earlier defaults) are not judged: against them a margin
  would measure the defaults' change as much as the method.

  Returns one dict per (other method, bits) present for both: margins and needed gaps
  per direction, `spread` (both sides have >= 2 seeds, so a std exists), `wins` (a spread
  and a margin above it in both directions; one seed can never win), `ahead` (both
  margins positive), and for the supervised bound `fraction` = ours / bound per direction.
  With per-seed values (`aggregate`'s `by_seed`), also the paired count: `paired/{d}` =
  (seeds both have where ours is higher, seeds both have): a paired view beside the
  unpaired criterion (a seed fixes a trained run's initialisation and data order, so
  between methods on the same model it pairs like with like).
  """
  by = {(a["method"], a["bits"]): a for a in aggs}
  out = []
  for (method, bits), other in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    mine = by.get((ours, bits))
    if method == ours or mine is None or other["group"] == EARLIER:
      continue
    row = {"method": method, "label": other["label"], "group": other["group"], "bits": bits,
           "n": (mine["n"], other["n"])}
    for d in DIRECTIONS:
      m_mean, o_mean = mine[f"{metric}/{d}/mean"], other[f"{metric}/{d}/mean"]
      row[f"margin/{d}"] = m_mean - o_mean
      row[f"needed/{d}"] = max(mine[f"{metric}/{d}/std"], other[f"{metric}/{d}/std"])
      if other["group"] == "bound":
        row[f"fraction/{d}"] = m_mean / o_mean if o_mean else float("nan")
      if "by_seed" in mine and "by_seed" in other:
        a, b = mine["by_seed"][metric][d], other["by_seed"][metric][d]
        shared = sorted(set(a) & set(b), key=int)
        row[f"paired/{d}"] = (sum(a[s] > b[s] for s in shared), len(shared))
    row["spread"] = min(row["n"]) > 1
    row["ahead"] = all(row[f"margin/{d}"] > 0 for d in DIRECTIONS)
    row["wins"] = row["spread"] and all(row[f"margin/{d}"] > row[f"needed/{d}"]
                                        for d in DIRECTIONS)
    out.append(row)
  return out


def verdict_markdown(aggs: list[dict], ours: str = "cmah", metric: str = "map") -> str:
  rows = verdicts(aggs, ours, metric)
  if not rows:
    return ""
  label = next((a["label"] for a in aggs if a["method"] == ours), ours)
  lines = [f"## Does {label} win? ({METRICS[metric]})", "",
           "margin = ours - other (mean over seeds); a win needs margin > the larger seed "
           "std, in both directions, so at least 2 seeds on each side (with one seed a "
           "positive margin is only \"ahead\"). Against the supervised bound: ours / "
           "bound. Seeds ahead: in how many of the seeds both have ours scores higher, "
           "i2p; p2i (a seed fixes a trained run's initialisation and data order, so "
           "between methods on the same model it pairs like with like). Rows of earlier "
           "defaults are not judged.", "",
           "| bits | other | margin i2p (needed) | margin p2i (needed) | seeds ahead | verdict |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    cells = [f"{r[f'margin/{d}']:+.3f} ({r[f'needed/{d}']:.3f})" if r["spread"]
             else f"{r[f'margin/{d}']:+.3f} (no spread)" for d in DIRECTIONS]
    if r["group"] == "bound":
      verdict = " / ".join(f"{100 * r[f'fraction/{d}']:.1f}%" for d in DIRECTIONS)
    elif r["spread"]:
      verdict = "wins" if r["wins"] else "**does not win**"
    else:
      verdict = "ahead, not yet a win" if r["ahead"] else "**behind**"
    ours_n, other_n = r["n"]
    n = "" if min(r["n"]) > 1 else (
        f" ({other_n} seed{'s' * (other_n > 1)}; ours {ours_n})")
    paired = ("; ".join(f"{r[f'paired/{d}'][0]}/{r[f'paired/{d}'][1]}" for d in DIRECTIONS)
              if "paired/i2p" in r and r["paired/i2p"][1] else "")
    lines.append(f"| {r['bits']} | {r['label']}{n} | {cells[0]} | {cells[1]} | {paired} "
                 f"| {verdict} |")
  return "\n".join(lines) + "\n"


def plot(aggs: list[dict], path: str, metric: str = "map_tie_aware") -> None:
  """mAP against code length with ± std error bars, one panel per direction."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for ax, d, title in zip(axes, DIRECTIONS, ("image -> point cloud", "point cloud -> image")):
    for method in _order(aggs):
      pts = sorted((a["bits"], a[f"{metric}/{d}/mean"], a[f"{metric}/{d}/std"], a)
                   for a in aggs if a["method"] == method)
      if not pts:
        continue
      a0 = pts[0][3]
      style = "-" if a0["group"] in ("ours", "baseline", "bound") else ":"
      ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                  marker="o", linestyle=style, capsize=3, label=a0["label"],
                  linewidth=2.5 if a0["group"] == "ours" else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({a["bits"] for a in aggs}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("code length (bits)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(METRICS[metric])
  axes[1].legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(root: str, suite, rows: list[dict], protocol: str, radius: int = 2) -> dict:
  """Write results.json, results.md and map_vs_bits.png under `root`; return the JSON.
  `radius`: the Hamming radius of the rows' precision within it."""
  aggs = aggregate(rows)
  data = {"suite": suite.name, "description": suite.description, "protocol": protocol,
          "runs": rows, "aggregate": aggs}
  tmp = os.path.join(root, "results.json.tmp")
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2)
  os.replace(tmp, os.path.join(root, "results.json"))
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(markdown(aggs, f"Suite `{suite.name}`: {suite.description}", protocol, radius))
    f.write("\n" + verdict_markdown(aggs))
  if aggs:
    plot(aggs, os.path.join(root, "map_vs_bits.png"))
  return data

"""The retrieval report of a run: report.json, report.md, pr_curve.png, retrieval_examples.png."""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cmah_jax import metrics, resume  # noqa: E402
from cmah_jax.datasets import class_names  # noqa: E402
from cmah_jax.evaluate import DIRECTIONS  # noqa: E402
from cmah_jax.plotting import draw_points  # noqa: E402

_NAMES = {"i2p": "image -> point cloud", "p2i": "point cloud -> image"}


def json_ready(obj):
  """`obj` with NumPy / JAX values as plain JSON types (arrays as lists, others as str)."""
  return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                               else str(o)))


def _json_ready(results: dict, config) -> dict:
  out = {k: v for k, v in results.items() if k != "arrays"}
  out["config"] = config.to_dict()
  out["config_fingerprint"] = config.fingerprint()
  return json_ready(out)


def update_report_json(workdir: str, extra: dict, report: dict | None = None) -> dict:
  """Write `workdir/report.json` atomically (temp file, `os.replace`): `report` (default:
  the file's current contents) with the keys of `extra` added. Returns what was written."""
  path = os.path.join(workdir, "report.json")
  if report is None:
    with open(path) as f:
      report = json.load(f)
  report = dict(report, **extra)
  _write_json(path, report)
  return report


def _write_json(path: str, data: dict) -> None:
  """`data` to `path` whole: a temporary file, then `os.replace` (a kill leaves the old
  file)."""
  with open(path + ".tmp", "w") as f:
    json.dump(data, f, indent=2)
  os.replace(path + ".tmp", path)


def write_markdown(path: str, results: dict, config, changes: list[dict] = ()) -> None:
  bits = str(results["bits"])
  radius = results["precision_within_radius"]["radius"]
  lines = [
      "# CMAH retrieval report", "",
      f"Dataset `{config.dataset.name}` ({config.dataset.config}), model "
      f"`{config.variant}`, {bits} bits, {results.get('steps', '?')} steps, "
      f"train {results.get('train_seconds', 0):.0f}s, eval {results.get('eval_seconds', 0):.0f}s. "
      f"Protocol: {results.get('protocol', '')}; relevant = same class. mAP@all with "
      "ties broken by database index, and tie-aware (expected over orders within tied "
      "distances).", "",
      f"| direction | mAP@all | mAP@all tie-aware | P@r<={radius} | " + " | ".join(
          f"P@{k}" for k in results["precision_at_k"]["i2p"]) + " |",
      "|---|---|---|---|" + "---|" * len(results["precision_at_k"]["i2p"]),
  ]
  codes = [("", results)]
  if "itq" in results:  # the learned quantiser's codes (`cmah_jax.quantizer`)
    codes = [(", sign(h)", results), (", ITQ codes", results["itq"])]
  for suffix, res in codes:
    for d in DIRECTIONS:
      pk = " | ".join(f"{v:.4f}" for v in res["precision_at_k"][d].values())
      lines.append(f"| {_NAMES[d]}{suffix} | {res['map'][d][bits]:.4f} | "
                   f"{res['map_tie_aware'][d][bits]:.4f} | "
                   f"{res['precision_within_radius'][d]:.4f} | {pk} |")
  if "itq" in results:
    lines += ["", "sign(h): the network's own codes [paper]. ITQ codes: sign((h - mean) R), "
              "mean and rotation R fitted on the training objects' continuous codes after "
              "training (`quantizer.npz`) [ours, after ITQ]."]
  usage = results.get("code_usage")
  if usage:
    lines += ["", "| codes | distinct | majority-bit share | bit entropy | mean abs bit "
              "correlation |", "|---|---|---|---|---|"]
    for role in ("query", "database"):
      n = results["num_queries" if role == "query" else "num_database"]
      for m in ("image", "point"):
        u = usage[role][m]
        lines.append(f"| {role} {m} | {u['distinct']} of {n} | {u['majority_fraction']:.3f} "
                     f"| {u['bit_entropy']:.3f} | {u['mean_abs_correlation']:.3f} |")
  for change in changes:
    fields = "; ".join(f"`{c['field']}` {c['old']} -> {c['new']}" for c in change["changes"])
    lines += ["", f"**Resumed at step {change['resumed_at_step']} with a changed config** "
              f"(`--allow_config_change`): {fields}. The config recorded is the one the run "
              "ended with; the steps before ran with the old values."]
  lines += ["", f"Chance mAP (random codes): {results['chance_map']:.4f}", "",
            "![PR curves](pr_curve.png)", "", "![Retrieval examples](retrieval_examples.png)",
            ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def plot_pr_curves(path: str, results: dict) -> None:
  fig, ax = plt.subplots(figsize=(5, 4))
  for d in DIRECTIONS:
    c = results["pr_curve"][d]
    prec = np.array([np.nan if p is None else p for p in c["precision"]], float)
    ax.plot(c["recall"], prec, marker=".", label=f"{_NAMES[d]} (mAP "
            f"{results['map'][d][str(results['bits'])]:.3f})")
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_title(f"Hamming-radius PR curves, {results['bits']} bits")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _frame(ax, ok):
  ax.set_xticks([])
  ax.set_yticks([])
  if ok is not None:
    for s in ax.spines.values():
      s.set_edgecolor("tab:green" if ok else "tab:red")
      s.set_linewidth(3)


def plot_retrieval_examples(path: str, results: dict, sources, eval_view: int,
                            num_queries: int = 4, top: int = 8, class_names=None) -> None:
  """Rows of (query, its top-`top` results), green/red frames for right/wrong class:
  first image queries retrieving point clouds, then point-cloud queries retrieving images."""
  q_src, d_src = sources.query, sources.database
  arr = results["arrays"]
  rng = np.random.default_rng(0)
  rows = []
  for d, (qm, dm) in DIRECTIONS.items():
    qids = rng.choice(len(arr["query"]["label"]), size=min(num_queries,
                      len(arr["query"]["label"])), replace=False)
    dist = metrics.hamming_distances(arr["query"][qm][qids], arr["database"][dm])
    ranked = np.argsort(dist, axis=1, kind="stable")[:, :top]
    rows += [(d, q, r) for q, r in zip(qids, ranked)]
  fig, axes = plt.subplots(len(rows), top + 1, figsize=(1.3 * (top + 1), 1.4 * len(rows)))
  axes = np.atleast_2d(axes)
  name = (lambda y: class_names[y]) if class_names else (lambda y: str(y))
  for r, (d, q, ranked) in enumerate(rows):
    qm, dm = DIRECTIONS[d]
    qex = q_src[int(q)]
    ql = int(arr["query"]["label"][q])
    ax = axes[r, 0]
    if qm == "image":
      ax.imshow(np.asarray(qex["images"])[eval_view % len(qex["images"])])
    else:
      draw_points(ax, np.asarray(qex["points"]))
    _frame(ax, None)
    ax.set_title(f"query: {name(ql)}", fontsize=7)
    for c, j in enumerate(ranked):
      ax = axes[r, c + 1]
      ex = d_src[int(j)]
      if dm == "image":
        ax.imshow(np.asarray(ex["images"])[eval_view % len(ex["images"])])
      else:
        draw_points(ax, np.asarray(ex["points"]))
      dl = int(arr["database"]["label"][j])
      _frame(ax, dl == ql)
      ax.set_title(name(dl), fontsize=6)
  fig.suptitle("Top-8 retrievals: image -> point cloud (upper rows), "
               "point cloud -> image (lower rows)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_report(workdir: str, results: dict, config, builder, sources) -> str:
  """Write report.json, report.md, pr_curve.png and retrieval_examples.png to `workdir`.

  Args:
    results: `RetrievalEvaluator.evaluate` output (with "arrays") plus run figures.
    config: the resolved `ExperimentConfig` (recorded in report.json).
    builder: the dataset's builder (class names); sources: the protocol's
      `RetrievalSources` (the examples drawn in the figure).
  Returns:
    the path of report.md.
  """
  data = _json_ready(results, config)
  changes = resume.recorded_changes(workdir)
  if changes:  # `--allow_config_change`: the config recorded is the one it ended with
    data["config_changes"] = changes
  _write_json(os.path.join(workdir, "report.json"), data)
  write_markdown(os.path.join(workdir, "report.md"), results, config, changes)
  plot_pr_curves(os.path.join(workdir, "pr_curve.png"), results)
  names = class_names(builder)
  plot_retrieval_examples(os.path.join(workdir, "retrieval_examples.png"), results, sources,
                          config.input.eval_view,
                          num_queries=config.eval.num_examples_in_figure,
                          class_names=list(names) if names else None)
  return os.path.join(workdir, "report.md")

"""Which kinds of object a run confuses: per-class AP and the class mix of the neighbours.

  python -m cmah_jax.experiments.per_class --workdir=RUN [--against=OTHER_RUN] [--codes=sign]

For a trained run, on its own evaluation protocol and with the codes its report scores (the
learned quantiser's when the run has one; `--codes=sign` for the network's sign(h)), in both
cross-modal directions (image -> point cloud, point cloud -> image):
- per query class, the mean tie-aware AP of its queries (their mean over all queries is the
  run's tie-aware mAP@all);
- the confusion: for each query class, the expected share of each database class among a
  query's R nearest items of the other modality, R = its number of relevant items (its
  R-precision neighbourhood; ties at the R-th distance share the places left), averaged
  over the class's queries. The diagonal is the class's R-precision.

Printed (classes by AP, lowest first, each with the classes it is most confused with) and
written to `<workdir>/per_class.json` and `<workdir>/per_class.png` (the two confusion
matrices). With `--against`, also the per-class AP of a second run on the same protocol,
and the difference: where one method's lead over another comes from.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from cmah_jax import metrics
from cmah_jax.evaluate import DIRECTIONS  # the two cross-modal directions
TOP_CONFUSIONS = 3  # other classes named per class in the printout


def per_class_mean(values, labels, num_classes: int) -> np.ndarray:
  """`[q]` float (NaN = undefined), `[q]` int class ids -> `[num_classes]` float64: the
  mean of each class's finite values (NaN for a class with none)."""
  values, labels = np.asarray(values, np.float64), np.asarray(labels)
  ok = np.isfinite(values)
  sums = np.bincount(labels[ok], weights=values[ok], minlength=num_classes)
  counts = np.bincount(labels[ok], minlength=num_classes).astype(np.float64)
  return np.divide(sums, counts, out=np.full(num_classes, np.nan), where=counts > 0)


def class_confusion(query_codes, db_codes, query_labels, db_labels,
                    num_classes: int) -> np.ndarray:
  """`[C, C]` float64: row c = the mean, over the queries of class c, of the class shares
  among each query's R nearest database items (R = its relevant items; expected over tied
  orders, `metrics.expected_top_k_labels`); rows sum to 1, NaN rows for classes with no
  query that has a relevant item.

  Args:
    query_codes: `[q, K]` {-1, +1}; db_codes: `[n, K]` {-1, +1}.
    query_labels: `[q]` int; db_labels: `[n]` int, both in [0, num_classes).
  """
  ql, dl = np.asarray(query_labels), np.asarray(db_labels)
  relevant = np.bincount(dl, minlength=num_classes)[ql]  # R of each query
  has = relevant > 0
  counts = metrics.expected_top_k_labels(np.asarray(query_codes)[has], db_codes, dl,
                                         relevant[has], num_classes)
  shares = counts / relevant[has][:, None]
  out = np.full((num_classes, num_classes), np.nan)
  for c in range(num_classes):
    rows = shares[ql[has] == c]
    if len(rows):
      out[c] = rows.mean(0)
  return out


def per_class_study(query: dict, database: dict, num_classes: int) -> dict:
  """{direction: {"ap": [C] per-class mean tie-aware AP, "map": their queries' mean,
  "confusion": [C, C]}} for i2p and p2i.

  Args:
    query, database: {"image", "point": [n, K] +-1 codes, "label": [n] int}.
  """
  out = {}
  for name, (src, dst) in DIRECTIONS.items():
    aps = metrics.tie_aware_average_precisions(query[src], database[dst], query["label"],
                                               database["label"])
    out[name] = {"ap": per_class_mean(aps, query["label"], num_classes),
                 "map": float(np.nanmean(aps)),
                 "confusion": class_confusion(query[src], database[dst], query["label"],
                                              database["label"], num_classes)}
  return out


def scored_codes(workdir: str, codes: str = "auto") -> tuple[dict, dict, list[str], str, str]:
  """The run's query and database codes as its report scores them, its class names,
  protocol description and which codes they are.

  Returns:
    (query, database: {"image", "point": [n, K] +-1, "label": [n] int}, class names,
    protocol, "learned quantiser's codes" or "sign(h) codes").
  """
  from cmah_jax import quantizer as quantizer_lib  # pylint: disable=import-outside-toplevel
  from cmah_jax.datasets import class_names  # pylint: disable=import-outside-toplevel
  from cmah_jax.evaluate import RetrievalEvaluator  # pylint: disable=import-outside-toplevel
  from cmah_jax.inference import load_trained  # pylint: disable=import-outside-toplevel
  from cmah_jax.datasets.prepare import prepare_on_every_process  # pylint: disable=import-outside-toplevel

  trained = load_trained(workdir, codes=codes)
  builder = prepare_on_every_process(trained.config.dataset)  # once: sources and names
  evaluator = RetrievalEvaluator.for_run(
      trained, builder, outputs=[(k, k) for k in ("image/code", "point/code", "image/h", "point/h")])
  splits = [evaluator.encode(trained.params, s) for s in ("query", "database")]
  if trained.quantizer is not None:
    splits = [quantizer_lib.quantize_split(s, trained.quantizer) for s in splits]
    which = "learned quantiser's codes"
  else:
    splits = [{"image": np.asarray(s["image/code"]), "point": np.asarray(s["point/code"]),
               "label": s["label"]} for s in splits]
    which = "sign(h) codes"
  names = class_names(builder)
  num_classes = int(max(np.max(s["label"]) for s in splits)) + 1
  names = list(names) if names else [str(c) for c in range(num_classes)]
  return splits[0], splits[1], names, evaluator.sources.description, which


def plot_confusions(path: str, study: dict, names: list[str], title: str) -> None:
  """The i2p and p2i confusion matrices side by side (rows: query class; columns: class of
  the R nearest), written to `path`."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  size = max(6.0, 0.32 * len(names))
  fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size + 0.8), layout="constrained")
  for ax, (name, label) in zip(axes, (("i2p", "image -> point cloud"),
                                      ("p2i", "point cloud -> image"))):
    image = ax.imshow(study[name]["confusion"], vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_title(f"{label}: mAP {study[name]['map']:.3f}")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("class of the R nearest (share)")
    ax.set_ylabel("query class")
  fig.colorbar(image, ax=axes, shrink=0.6)
  fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def format_study(study: dict, names: list[str], other: dict | None = None) -> list[str]:
  """Lines: per class (lowest mean AP over both directions first) its AP i2p / p2i, with
  `other`'s and the difference when given, and the classes it is most confused with."""
  mean_ap = (study["i2p"]["ap"] + study["p2i"]["ap"]) / 2
  head = "  class          AP i2p / p2i"
  if other is not None:
    head += "   other run       difference"
  lines = [head + "   most confused with (share of the R nearest, i2p)"]
  for c in np.argsort(mean_ap):
    row = f"  {names[c]:14} {study['i2p']['ap'][c]:.3f} / {study['p2i']['ap'][c]:.3f}"
    if other is not None:
      row += (f"   {other['i2p']['ap'][c]:.3f} / {other['p2i']['ap'][c]:.3f}"
              f"   {study['i2p']['ap'][c] - other['i2p']['ap'][c]:+.3f} / "
              f"{study['p2i']['ap'][c] - other['p2i']['ap'][c]:+.3f}")
    confusion = study["i2p"]["confusion"][c].copy()
    confusion[c] = -1.0  # not itself
    top = [j for j in np.argsort(-confusion)[:TOP_CONFUSIONS] if confusion[j] > 0]
    row += "   " + ", ".join(f"{names[j]} {confusion[j]:.2f}" for j in top)
    lines.append(row)
  return lines


def _json_ready(study: dict, names: list[str]) -> dict:
  return {"classes": names, **{
      d: {"map": v["map"], "ap": dict(zip(names, map(float, v["ap"]))),
          "confusion": [[float(x) for x in row] for row in v["confusion"]]}
      for d, v in study.items()}}


def comparable_codes(against: str, codes: str, workdir: str,
                     scored: tuple[list[str], str, str]) -> tuple[dict, dict]:
  """`against`'s (query, database) codes as `scored_codes` gives them, after checking that
  they are on `workdir`'s dataset and protocol and of the same kind; `scored`: `workdir`'s
  (class names, protocol, which codes). Raises `app.UsageError` naming both runs."""
  names, protocol, which = scored
  o_query, o_database, o_names, o_protocol, o_which = scored_codes(against, codes)
  if (o_names, o_protocol) != (names, protocol):
    raise app.UsageError(f"--against={against} is on another dataset or protocol "
                         f"({o_protocol}) than {workdir} ({protocol})")
  if o_which != which:  # e.g. --codes=auto: one run has a learned quantiser, one not
    raise app.UsageError(f"--against={against} would be scored on {o_which}, {workdir} "
                         f"on {which}; pass --codes=sign to compare the same kind")
  return o_query, o_database


def main(argv):
  del argv
  args = flags.FLAGS
  workdir = os.path.abspath(os.path.expanduser(args.workdir))
  query, database, names, protocol, which = scored_codes(workdir, args.codes)
  study = per_class_study(query, database, len(names))
  other = against = None
  if args.against:
    against = os.path.abspath(os.path.expanduser(args.against))
    o_query, o_database = comparable_codes(against, args.codes, workdir,
                                           (names, protocol, which))
    other = per_class_study(o_query, o_database, len(names))
  record = _json_ready(study, names)
  if other is not None:
    record["against"] = {"workdir": against, **_json_ready(other, names)}
  with open(os.path.join(workdir, "per_class.json"), "w") as f:
    json.dump(record, f, indent=2)
  plot_confusions(os.path.join(workdir, "per_class.png"), study, names,
                  f"{os.path.basename(workdir)}: {protocol}; {which}")
  print(f"{workdir}\n  {protocol}; {which}\n  tie-aware mAP i2p / p2i: {study['i2p']['map']:.3f} / "
        f"{study['p2i']['map']:.3f}" + (f" (other run {other['i2p']['map']:.3f} / "
                                        f"{other['p2i']['map']:.3f})" if other else ""))
  print("\n".join(format_study(study, names, other)))
  print(f"  written {os.path.join(workdir, 'per_class.json')} and per_class.png")


if __name__ == "__main__":
  # Defined here, not at import: `gradients` (imported beside this module) owns --workdir.
  flags.DEFINE_string("workdir", None, "A finished (or checkpointed) training run.")
  flags.DEFINE_string("against", None, "A second run on the same protocol: its per-class AP "
                      "and the difference are printed beside.")
  flags.DEFINE_enum("codes", "auto", ["auto", "sign", "itq"], "Which codes: the run's "
                    "learned quantiser's when it has one (auto), the network's sign(h), or "
                    "the quantiser's (itq, required).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)

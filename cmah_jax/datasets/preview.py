"""Contact sheet of a dataset: per category a few objects, each rendered view beside a plot
of its point cloud.

    python -m cmah_jax.datasets.preview --dataset=synthetic_shapes --config=default \
        --data_dir=work/data --out=sheet.png [--split=train] [--per_class=3] [--view=0]

Prepares the dataset first if needed (idempotent; real datasets need --manual_dir).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from cmah_jax.datasets import available_datasets, class_names
from cmah_jax.datasets.prepare import prepare


def pick_examples(source, per_class: int, max_scan: int = 20000) -> dict[int, list[dict]]:
  """The first `per_class` examples of every label met in the first `max_scan` records."""
  found: dict[int, list[dict]] = {}
  for i in range(min(len(source), max_scan)):
    ex = source[i]
    label = int(ex["label"])
    if len(found.setdefault(label, [])) < per_class:
      found[label].append(ex)
  return dict(sorted(found.items()))


def contact_sheet(examples: dict[int, list[dict]], names: list[str] | None, out: str,
                  view: int = 0, blocks_per_row: int = 2, title: str = "") -> None:
  """Writes the sheet to `out` (PNG): per class, `[view | points]` pairs, classes in a grid."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  labels = list(examples)
  per_class = max(len(v) for v in examples.values())
  rows = -(-len(labels) // blocks_per_row)
  cols = blocks_per_row * per_class * 2
  fig = plt.figure(figsize=(cols * 1.1, rows * 1.25))
  for b, label in enumerate(labels):
    r, c0 = divmod(b, blocks_per_row)
    for k, ex in enumerate(examples[label]):
      col = c0 * per_class * 2 + 2 * k
      ax = fig.add_subplot(rows, cols, r * cols + col + 1)
      images = np.asarray(ex["images"])
      ax.imshow(images[min(view, images.shape[0] - 1)])
      ax.set_axis_off()
      if k == 0:
        name = names[label] if names and label < len(names) else str(label)
        ax.set_title(name, fontsize=8, loc="left")
      ax3 = fig.add_subplot(rows, cols, r * cols + col + 2, projection="3d")
      p = np.asarray(ex["points"])
      # Data are y-up; matplotlib's 3D axes are z-up.
      ax3.scatter(p[:, 0], p[:, 2], p[:, 1], s=0.5, c=p[:, 1], cmap="viridis", linewidths=0)
      ax3.set_box_aspect((1, 1, 1), zoom=1.6)
      ax3.set_xlim(-1, 1)
      ax3.set_ylim(-1, 1)
      ax3.set_zlim(-1, 1)
      ax3.view_init(elev=20, azim=-60)
      ax3.set_axis_off()
  if title:
    fig.suptitle(title, fontsize=10)
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95 if title else 0.98,
                      wspace=0.02, hspace=0.25)
  fig.savefig(out, dpi=100)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, choices=available_datasets())
  parser.add_argument("--config", default=None)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--manual_dir", default=None)
  parser.add_argument("--split", default="train")
  parser.add_argument("--out", default="sheet.png")
  parser.add_argument("--per_class", type=int, default=3)
  parser.add_argument("--view", type=int, default=0)
  parser.add_argument("--blocks_per_row", type=int, default=2)
  args = parser.parse_args(argv)
  builder, _ = prepare(args.dataset, args.data_dir, args.config, args.manual_dir)
  source = builder.as_data_source(split=args.split)
  examples = pick_examples(source, args.per_class)
  config = builder.builder_config.name if builder.builder_config else ""
  contact_sheet(examples, class_names(builder), args.out, args.view, args.blocks_per_row,
                title=f"{args.dataset}/{config} ({args.split}): rendered view | point cloud")
  print(f"wrote {args.out}: {len(examples)} classes x {args.per_class} objects")
  return 0


if __name__ == "__main__":
  sys.exit(main())

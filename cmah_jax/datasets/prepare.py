"""Prepare any registered dataset once, offline, and print a summary.

    python -m cmah_jax.datasets.prepare --dataset=synthetic_shapes [--config=tiny] \
        --data_dir=work/data [--manual_dir=DIR] [--overwrite]

Idempotent: an already prepared dataset is reused, not regenerated (unless --overwrite).
Real datasets read their hand-downloaded files from --manual_dir; nothing is fetched.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import tensorflow_datasets as tfds

from cmah_jax import datasets, multihost


def _dir_size(path) -> int:
  total = 0
  for root, _, files in os.walk(os.fspath(path)):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def prepare(dataset: str, data_dir: str, config: str | None = None,
            manual_dir: str | None = None, overwrite: bool = False):
  """Prepares `dataset` under `data_dir` (no-op if prepared); returns (builder, summary str)."""
  builder = datasets.get_builder(dataset, data_dir, config)
  was_prepared = builder.is_prepared() and not overwrite
  kwargs = {}
  if manual_dir:
    kwargs["manual_dir"] = os.path.abspath(os.path.expanduser(manual_dir))
  if overwrite:
    kwargs["download_mode"] = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  start = time.perf_counter()
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(**kwargs) if kwargs else None)
  seconds = time.perf_counter() - start
  info = builder.info
  lines = [
      f"dataset  {info.name}/{builder.builder_config.name if builder.builder_config else '-'}"
      f" v{info.version}",
      f"path     {builder.data_path}",
      "status   " + ("already prepared: reused" if was_prepared
                     else f"prepared in {seconds:.1f} s"),
      f"size     {_dir_size(builder.data_path) / 2**20:.1f} MiB ({info.file_format.value})",
      "splits   " + ", ".join(f"{k}={v.num_examples}" for k, v in info.splits.items()),
      "features " + ", ".join(f"{k}: {np_dtype(f)} {list(f.shape)}"
                              for k, f in info.features.items()),
  ]
  names = datasets.class_names(builder)
  if names:
    lines.append(f"classes  {len(names)}: {', '.join(names)}")
  return builder, "\n".join(lines)


def prepare_on_every_process(spec, log=print):
  """The builder of `spec` (a `config.DatasetSpec`: name, data_dir, config, manual_dir),
  prepared once: process 0 prepares it (or finds it prepared) and `log`s its summary; in a
  multi-process run the others wait for it, then open it (the data dir must be shared)."""
  args = (spec.name, spec.data_dir, spec.config, spec.manual_dir)
  error = None
  if jax.process_index() == 0:
    try:
      builder, summary_text = prepare(*args)
      log("Dataset:\n%s" % summary_text)
    except Exception as e:  # pylint: disable=broad-except  (raised below, on every process)
      error = e
  multihost.raise_if_any_failed(error, f"preparing the dataset {spec.name}")
  if jax.process_count() > 1:
    builder, _ = prepare(*args)  # reused on a shared filesystem
  return builder


def np_dtype(feature) -> str:
  dtype = getattr(feature, "np_dtype", None) or feature.dtype
  return getattr(dtype, "__name__", str(dtype))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, choices=datasets.available_datasets())
  parser.add_argument("--config", default=None, help="builder config, e.g. default | tiny")
  parser.add_argument("--data_dir", required=True, help="where prepared data is written")
  parser.add_argument("--manual_dir", default=None, help="hand-downloaded files (real data)")
  parser.add_argument("--overwrite", action="store_true", help="regenerate even if prepared")
  args = parser.parse_args(argv)
  _, summary = prepare(args.dataset, args.data_dir, args.config, args.manual_dir,
                       args.overwrite)
  print(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())

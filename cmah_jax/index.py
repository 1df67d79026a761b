"""Command line of the retrieval index (`cmah_jax.retrieval`).

  python -m cmah_jax.index build  --workdir=RUN (--points=DIR | --images=DIR |
                                   --dataset=NAME[/CONFIG]:SPLIT --data_dir=DIR
                                   --modality=points|images) --out=INDEX [--codes=sign]
  python -m cmah_jax.index add    --index=INDEX (--points=DIR | --images=DIR) [--prefix=P]
  python -m cmah_jax.index search --index=INDEX --query=FILE [--query=FILE ...] [--k=10]
                                  [--json=OUT.json] [--picture=OUT.png]
  python -m cmah_jax.index export --index=INDEX --faiss=OUT
  python -m cmah_jax.index info   --index=INDEX

`--workdir` is a training run: its latest checkpoint and config define the model
(`cmah_jax.inference.load_trained`). The index records it, so `add` and `search` load the
same run unless `--workdir` says otherwise; either way a model whose fingerprint (config
hash, bits, checkpoint step, codes) differs from the index's is refused. The codes are the
run's learned quantiser's, sign((h - mean) R) from `quantizer.npz`, when it has one
(`build --codes=sign` for the network's own sign(h)); an index of sign codes stays one.

Exit status: 0 on success (files that could not be indexed are reported, not fatal), 2 on
an error (printed as one `error: ...` line).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


def load_trained(workdir: str):
  """The model of training run `workdir` (the lead's loader, imported when needed)."""
  try:
    from cmah_jax.inference import load_trained as load  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"cannot load the model of --workdir {workdir}: "
                      f"cmah_jax.inference.load_trained is unavailable ({e})") from e
  return load(workdir)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m cmah_jax.index",
                              description="Build, extend, search and export a hash index.")
  sub = p.add_subparsers(dest="command", required=True)

  b = sub.add_parser("build", help="index a folder or a dataset split")
  b.add_argument("--workdir", required=True, help="training run that defines the model")
  src = b.add_mutually_exclusive_group(required=True)
  src.add_argument("--points", help="folder of .npy/.ply/.obj/.off/.stl (recursive)")
  src.add_argument("--images", help="folder of .png/.jpg (recursive)")
  src.add_argument("--dataset", help="NAME[/CONFIG]:SPLIT of a prepared dataset")
  b.add_argument("--data_dir", help="with --dataset: where it was prepared")
  b.add_argument("--modality", choices=("points", "images"), help="with --dataset")
  b.add_argument("--out", required=True, help="index directory to write")
  b.add_argument("--codes", choices=("auto", "sign"), default="auto",
                 help="auto: the run's learned quantiser's codes (quantizer.npz) when it has "
                      "one, else sign(h); sign: always the network's own sign(h)")

  a = sub.add_parser("add", help="append a folder to an index")
  a.add_argument("--index", required=True)
  src = a.add_mutually_exclusive_group(required=True)
  src.add_argument("--points")
  src.add_argument("--images")
  a.add_argument("--prefix", default="", help="prepended to the new ids (keeps them unique)")
  a.add_argument("--workdir", help="default: the run recorded in the index")

  s = sub.add_parser("search", help="k nearest codes of query files")
  s.add_argument("--index", required=True)
  s.add_argument("--query", action="append", required=True, help="repeatable")
  s.add_argument("--k", type=int, default=10)
  s.add_argument("--json", help="write the results as JSON here")
  s.add_argument("--picture", help="write a PNG grid of queries and results here")
  s.add_argument("--workdir", help="default: the run recorded in the index")
  s.add_argument("--chunk_rows", type=int, default=None, help="codes per device call")

  e = sub.add_parser("export", help="write a faiss IndexBinaryFlat")
  e.add_argument("--index", required=True)
  e.add_argument("--faiss", required=True)

  i = sub.add_parser("info", help="describe an index")
  i.add_argument("--index", required=True)
  i.add_argument("--skipped", action="store_true", help="list every file not indexed")

  for sp in (b, a, s):
    sp.add_argument("--batch_size", type=int, default=256, help="encoding batch")
    sp.add_argument("--quiet", action="store_true", help="no progress lines")
  return p


def with_codes(bound, codes: str):
  """`bound` giving sign(h) codes when `codes == "sign"` (its learned quantiser dropped);
  unchanged for "auto"."""
  if codes == "sign" and getattr(bound, "quantizer", None) is not None:
    return dataclasses.replace(bound, quantizer=None)
  return bound


def _model_for(index, args, loader):
  workdir = args.workdir or index.workdir
  if not workdir:
    raise ValueError(f"index {index.path} records no training run; pass --workdir")
  # The codes the index was built with: an index of sign(h) codes (or one written before
  # fingerprints named their codes) is extended and searched with sign(h) codes.
  codes = "sign" if index.fingerprint["codes"] == "sign" else "auto"
  bound = with_codes(loader(workdir), codes)
  index.check_model(bound, model_name=f"the model of --workdir {workdir}")
  return bound


def info_text(index, list_skipped: bool = False) -> str:
  m = index.manifest
  fp = index.fingerprint
  lines = [
      f"index      {index.path}",
      f"codes      {index.count:,} {index.modality}, {index.bits} bits "
      f"({index.code_bytes} bytes each, faiss bit order)",
      f"model      config_hash={fp['config_hash']} bits={fp['bits']} step={fp['step']} "
      f"codes={fp['codes']}",
      f"workdir    {index.workdir}",
      f"inputs     {m['model'].get('num_points')} points / {m['model'].get('image_size')} px",
      f"disk       {index.nbytes_on_disk() / 2 ** 20:,.1f} MiB",
      f"created    {m['created']}, updated {m['updated']}",
      f"segments   {len(index.segments)}",
  ]
  for seg in index.segments:
    r = seg.record
    src = r["source"]
    where = src.get("root") or f"{src.get('name')}:{src.get('split')} ({src.get('data_dir')})"
    lines.append(f"  {r['name']}  {r['count']:,} codes, {r['skipped']:,} failed, "
                 f"{r.get('ignored', 0):,} ignored  <- {src['kind']} {where}")
  if list_skipped:
    for s in index.skipped():
      lines.append(f"  failed {s['id']}: {s['reason']}")
  return "\n".join(lines)


def main(argv=None, loader=None) -> int:
  """Run one command; returns the exit status. `loader(workdir) -> bound model` defaults to
  `cmah_jax.inference.load_trained` (tests pass their own)."""
  # pylint: disable=import-outside-toplevel
  from cmah_jax import retrieval
  from cmah_jax.retrieval import index as index_lib
  args = _parser().parse_args(argv)
  loader = loader or load_trained
  log = None if getattr(args, "quiet", False) else sys.stderr
  try:
    if args.command == "build":
      if args.dataset and not (args.data_dir and args.modality):
        raise ValueError("--dataset needs --data_dir and --modality")
      if not args.dataset and (args.modality or args.data_dir):
        raise ValueError("--modality and --data_dir go with --dataset only")
      bound = with_codes(loader(args.workdir), args.codes)
      summary = retrieval.build_index(
          args.out, bound, points=args.points, images=args.images, dataset=args.dataset,
          data_dir=args.data_dir, modality=args.modality, workdir=args.workdir,
          batch_size=args.batch_size, log=log)
      print(summary.report())
    elif args.command == "add":
      index = retrieval.HashIndex.open(args.index)
      bound = _model_for(index, args, loader)
      summary = retrieval.add_to_index(args.index, bound, points=args.points,
                                       images=args.images, id_prefix=args.prefix,
                                       batch_size=args.batch_size, log=log)
      print(summary.report())
    elif args.command == "search":
      index = retrieval.HashIndex.open(args.index)
      bound = _model_for(index, args, loader)
      missing = [q for q in args.query if not os.path.isfile(q)]
      if missing:
        raise FileNotFoundError(f"query file(s) not found: {missing}")
      kw = {} if args.chunk_rows is None else {"chunk_rows": args.chunk_rows}
      encoder = retrieval.Encoder(bound, batch_size=min(args.batch_size, len(args.query)))
      results = retrieval.search_files(index, bound, args.query, args.k, check_model=False,
                                       encoder=encoder, **kw)
      print(retrieval.format_results(results, index))
      if args.json:
        index_lib.atomic_write_bytes(
            args.json, (json.dumps(results, indent=1, ensure_ascii=False) + "\n").encode())
        print(f"wrote {args.json}")
      if args.picture:
        from cmah_jax.retrieval.picture import draw_results
        draw_results(args.picture, results, index, bound)
        print(f"wrote {args.picture}")
    elif args.command == "export":
      index = retrieval.HashIndex.open(args.index)
      path = retrieval.export_faiss(index, args.faiss)
      print(f"wrote {path} (faiss IndexBinaryFlat, {index.count:,} codes of "
            f"{8 * index.code_bytes} bits) and {path}.ids.jsonl")
    elif args.command == "info":
      print(info_text(retrieval.HashIndex.open(args.index), args.skipped))
  except (retrieval.BadIndex, retrieval.BadInput, ValueError, OSError, RuntimeError,
          ImportError) as e:  # OSError: an unwritable --out / --json, a missing file;
    # RuntimeError: a damaged or unreadable checkpoint of --workdir
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())

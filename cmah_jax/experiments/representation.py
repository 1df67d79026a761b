"""Where retrieval loses: the binary codes against the continuous codes they come from.

  python -m cmah_jax.experiments.representation --workdir=work/suite/runs/cmah/b64-s0-...

For a trained run, on its own evaluation protocol (query split against its database), mAP@all
(ties by database index) in four directions, image -> point cloud, point cloud -> image,
image -> image and point cloud -> point cloud, ranked two ways:
- `code`: Hamming distance of the +-1 codes (what the run's report scores cross-modally);
- `continuous`: cosine similarity of the continuous codes h = tanh(...) they are the sign of.

`continuous - code` is what binarisation costs; a gap to the supervised bound that the
continuous codes share is a gap in the representation, not in the quantiser; the
within-modality directions say which tower is the weaker. Also, per tower, how many
directions carry the database's codes (`spectrum_dims`): of h, and of atanh(h), the hash
head's LayerNorm output, which is linear in the pooled feature (so its rank is at most the
model width, whatever the code length). Written to `<workdir>/representation.json` and
printed. With `--quantizer_seeds=N`, also the spread of the learned quantiser's
tie-aware mAP over ITQ seeds 0..N-1 (`quantizer_seed_spread`): how much of a run's mAP is
its quantiser's random start rather than its training. With `--reduced_bits=16,32`, also
the tie-aware mAP of k-bit codes cut from the run's K-bit continuous codes by PCA-ITQ
(`reduced_code_maps`): whether one wide run serves shorter codes as well as a run trained at
k bits.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from cmah_jax import metrics

DIRECTIONS = {"i2p": ("image", "point"), "p2i": ("point", "image"),
              "i2i": ("image", "image"), "p2p": ("point", "point")}


def cosine_similarity(a, b) -> np.ndarray:
  """`[q, K]`, `[n, K]` float -> `[q, n]` float64 cosine (a zero row scores 0)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  return a @ b.T


SPECTRUM_FRACTIONS = (0.9, 0.99, 0.999)


def spectrum_dims(x, fractions=SPECTRUM_FRACTIONS) -> dict:
  """How many principal directions hold each fraction of the variance of the rows of `x`.

  Args:
    x: `[n, K]` float, n >= 2.
    fractions: in (0, 1].
  Returns:
    {str(fraction): the least d such that the top d squared singular values of the centred
    x sum to at least that fraction of all}; all 0 for constant rows.
  """
  x = np.asarray(x, np.float64)
  energy = np.linalg.svd(x - x.mean(axis=0), compute_uv=False) ** 2
  total = energy.sum()
  if total <= 0:
    return {str(f): 0 for f in fractions}
  cumulative = np.cumsum(energy) / total
  return {str(f): int(min(np.searchsorted(cumulative, f - 1e-12) + 1, len(energy)))
          for f in fractions}


def code_spectra(database: dict, clip: float = 1 - 1e-6) -> dict:
  """{"<tower>/h" and "<tower>/pre_tanh": `spectrum_dims`} of the database's continuous
  codes; pre_tanh = atanh(h clipped to +-clip), the hash head's LayerNorm output."""
  out = {}
  for tower in ("image", "point"):
    h = np.asarray(database[f"{tower}/h"], np.float64)
    out[f"{tower}/h"] = spectrum_dims(h)
    out[f"{tower}/pre_tanh"] = spectrum_dims(np.arctanh(np.clip(h, -clip, clip)))
  return out


def representation_maps(query: dict, database: dict) -> dict:
  """{direction: {"code": mAP by Hamming distance, "continuous": mAP by cosine of h}}.

  Args:
    query, database: {"image/code", "point/code": [n, K] +-1, "image/h", "point/h": [n, K]
      float, "label": [n] int}.
  """
  out = {}
  for name, (src, dst) in DIRECTIONS.items():
    out[name] = {
        "code": metrics.mean_average_precision(query[f"{src}/code"], database[f"{dst}/code"],
                                               query["label"], database["label"]),
        "continuous": metrics.similarity_mean_average_precision(
            cosine_similarity(query[f"{src}/h"], database[f"{dst}/h"]),
            query["label"], database["label"])}
  return out


def quantized_cross_modal_maps(fitted, query: dict, database: dict) -> dict:
  """{"i2p", "p2i": tie-aware mAP@all} of the query and database codes a fitted
  `quantizer.Quantizer` makes from their continuous codes ({"image/h", "point/h": [n, K]
  float, "label": [n] int} each)."""
  from cmah_jax import quantizer as quantizer_lib  # pylint: disable=import-outside-toplevel
  q, d = (quantizer_lib.quantize_split(split, fitted) for split in (query, database))
  return {name: metrics.tie_aware_mean_average_precision(q[src], d[dst], q["label"], d["label"])
          for name, (src, dst) in DIRECTIONS.items() if src != dst}


def quantizer_seed_spread(train: dict, query: dict, database: dict, seeds) -> dict:
  """How much the learned quantiser's random initial rotation moves the run's mAP.

  For each seed, `quantizer.fit_quantizer` on the training split's continuous codes (as
  the evaluator fits it, with that seed in place of the run's), then the tie-aware mAP of
  the requantised query and database codes.

  Args:
    train, query, database: {"image/h", "point/h": [n, K] float, "label": [n] int}.
    seeds: ITQ seeds.
  Returns:
    {"per_seed": {str(seed): {"i2p", "p2i", "quantization_loss" (ITQ's ||B - VR||^2 on
    the training codes)}}, and per direction "mean", "std" (ddof 1; 0 for one seed),
    "range" (max - min), "loss_correlation" (Pearson r of mAP and the quantisation loss
    over the seeds; NaN for fewer than 3)}.
  """
  from cmah_jax import quantizer as quantizer_lib  # pylint: disable=import-outside-toplevel
  from cmah_jax.baselines.itq import quantization_loss  # pylint: disable=import-outside-toplevel
  pooled = np.concatenate([train["point/h"], train["image/h"]]).astype(np.float64)
  per_seed = {}
  for seed in seeds:
    fitted = quantizer_lib.fit_quantizer(train["point/h"], train["image/h"], seed=int(seed))
    per_seed[str(seed)] = quantized_cross_modal_maps(fitted, query, database)
    per_seed[str(seed)]["quantization_loss"] = quantization_loss(
        pooled - np.asarray(fitted.mean, np.float64), np.asarray(fitted.rotation, np.float64))
  out = {"per_seed": per_seed}
  for name in ("i2p", "p2i"):
    values = np.array([m[name] for m in per_seed.values()])
    losses = np.array([m["quantization_loss"] for m in per_seed.values()])
    out[name] = {"mean": float(values.mean()),
                 "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                 "range": float(values.max() - values.min()),
                 "loss_correlation": (float(np.corrcoef(values, losses)[0, 1])
                                      if len(values) > 2 else float("nan"))}
  return out


def reduced_code_maps(train: dict, query: dict, database: dict, code_bits, seed: int = 0) -> dict:
  """Cross-modal tie-aware mAP of k-bit codes cut from K-bit continuous codes.

  For each k, `quantizer.fit_quantizer(..., bits=k)` on the training split's continuous
  codes (PCA onto their top k principal directions, then ITQ), then the query and database
  codes `sign((h - mean) W)`.

  Args:
    train, query, database: {"image/h", "point/h": [n, K] float, "label": [n] int}.
    code_bits: the k's, each in [1, K].
    seed: ITQ's seed.
  Returns:
    {str(k): {"i2p", "p2i": tie-aware mAP@all}}.
  """
  from cmah_jax import quantizer as quantizer_lib  # pylint: disable=import-outside-toplevel
  out = {}
  for k in code_bits:
    fitted = quantizer_lib.fit_quantizer(train["point/h"], train["image/h"], seed=seed,
                                         bits=int(k))
    out[str(int(k))] = quantized_cross_modal_maps(fitted, query, database)
  return out


def encode_run(workdir: str, splits=("query", "database")) -> tuple[dict, ...]:
  """Codes and continuous codes of the run's `splits` ("query", "database", "train"), on
  its protocol.

  Returns:
    (one dict per split, as `representation_maps` takes..., protocol description).
  """
  from cmah_jax.evaluate import RetrievalEvaluator  # pylint: disable=import-outside-toplevel
  from cmah_jax.inference import load_trained  # pylint: disable=import-outside-toplevel

  trained = load_trained(workdir, codes="sign")
  # The evaluator's batching, sharding and ordering, with both outputs of the hash heads.
  evaluator = RetrievalEvaluator.for_run(
      trained, outputs=[(k, k) for k in ("image/code", "point/code", "image/h", "point/h")])
  return (*(evaluator.encode(trained.params, split) for split in splits),
          evaluator.sources.description)


def main(argv):
  del argv
  seeds = range(flags.FLAGS.quantizer_seeds)
  reduced_bits = [int(k) for k in flags.FLAGS.reduced_bits]
  for workdir in flags.FLAGS.workdir:
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if reduced_bits:  # before the minute of encoding that would precede fit_quantizer's check
      from cmah_jax.train import read_config  # pylint: disable=import-outside-toplevel
      width = read_config(workdir).model.bits
      bad = [k for k in reduced_bits if not 1 <= k <= width]
      if bad:
        raise app.UsageError(f"--reduced_bits {bad}: {workdir} has {width}-bit codes; "
                             f"each k must be in [1, {width}]")
    query, database, *train, protocol = encode_run(
        workdir, ("query", "database") + (("train",) if seeds or reduced_bits else ()))
    maps = representation_maps(query, database)
    spectra = code_spectra(database)
    record = {"protocol": protocol, "map": maps, "spectrum_dims": spectra}
    if seeds:
      record["quantizer_seeds"] = quantizer_seed_spread(train[0], query, database, seeds)
    if reduced_bits:
      record["reduced_codes"] = reduced_code_maps(train[0], query, database, reduced_bits)
    with open(os.path.join(workdir, "representation.json"), "w") as f:
      json.dump(record, f, indent=2)
    print(f"{workdir}\n  {protocol}\n  direction  code   continuous  cost of binarising")
    for name, m in maps.items():
      print(f"  {name:9}  {m['code']:.3f}  {m['continuous']:.3f}       "
            f"{m['continuous'] - m['code']:+.3f}")
    bits = np.shape(database["image/h"])[1]
    print(f"  directions holding {', '.join(f'{f:g}' for f in SPECTRUM_FRACTIONS)} of the "
          f"database codes' variance ({bits} bits)")
    for name, dims in spectra.items():
      print(f"  {name:16} {' / '.join(str(v) for v in dims.values())}")
    if seeds:
      spread = record["quantizer_seeds"]
      print(f"  learned quantiser over {len(seeds)} ITQ seeds (tie-aware mAP): " + ", ".join(
          f"{d} {spread[d]['mean']:.4f} +- {spread[d]['std']:.4f} (range {spread[d]['range']:.4f}, "
          f"r with ITQ's loss {spread[d]['loss_correlation']:+.2f})"
          for d in ("i2p", "p2i")))
    if reduced_bits:
      print("  codes cut to fewer bits by PCA-ITQ of the continuous codes (tie-aware mAP): "
            + ", ".join(f"{k} bits {m['i2p']:.3f} / {m['p2i']:.3f}"
                        for k, m in record["reduced_codes"].items()))


if __name__ == "__main__":
  # Defined here, not at import: `gradients` (imported beside this module) owns --workdir.
  flags.DEFINE_list("workdir", None, "Finished (or checkpointed) training runs, comma-separated.")
  flags.DEFINE_integer("quantizer_seeds", 0, "Also refit the learned quantiser with ITQ seeds "
                       "0..N-1 and report the spread of its tie-aware mAP (0: skip).")
  flags.DEFINE_list("reduced_bits", [], "Also score codes of these lengths cut from the "
                    "run's continuous codes by PCA-ITQ (each at most the run's bits).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)

"""Which loss term drives which part of the model: per-term gradient norms of a trained run.

  python -m cmah_jax.experiments.gradients --workdir=work/suite/runs/cmah/b16-s0-...

For each logged term of the run's objective (`loss/contrastive`, `loss/point_recon`,
`loss/image_recon`, ...; unweighted, as logged) and each top-level parameter group
(`point_tokenizer`, `point_encoder`, `image_decoder`, ...), the L2 norm of the term's
gradient at the run's latest checkpoint, averaged over `--batches` training batches (the
run's own masking and augmentation, at its last step), with the ratio to the contrastive
term's on the same group. A term whose gradient on the shared encoders is orders of
magnitude below another's is one the encoders barely hear (Adam normalises the summed
gradient, not each term). An objective that carries state across steps (a negative queue,
UCCH's memory bank) sees its initial state (an empty queue: in-batch negatives only).
Written to `<workdir>/gradient_terms.json` and printed.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished (or checkpointed) training run.")
_BATCHES = flags.DEFINE_integer("batches", 4, "Training batches to average over.")


def group_norms(grads) -> dict[str, float]:
  """{top-level parameter group: L2 norm of its gradient} for a params-shaped tree."""
  sq: dict[str, float] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
    group = str(getattr(path[0], "key", path[0]))
    sq[group] = sq.get(group, 0.0) + float(jnp.sum(jnp.square(leaf.astype(jnp.float32))))
  return {g: float(np.sqrt(v)) for g, v in sq.items()}


def make_term_gradients(model, objective):
  """A jitted `(params, batch, mask_key, dropout_key, step, loss_state) -> {term name:
  gradient tree}` over every loss term the objective logs (`loss/...`) except the total;
  compiled once, reused for every batch.

  Args:
    model: the `CMAH` module; objective: `get_objective(...)`. The returned function takes
      the model's params, a training batch (`TrainPipeline`), the masking and dropout keys
      (`train.step_keys`), the step the objective sees (int32 [], schedules inside an
      objective use it) and the objective's carried state (`objective.init_state(n)`; None
      when it carries none).
  """
  from cmah_jax.train import loss_terms, train_outputs  # pylint: disable=import-outside-toplevel

  def terms_of(params, batch, mask_key, dropout_key, step, loss_state):
    out = train_outputs(model, params, batch, mask_key, dropout_key)
    _, terms, _ = objective(out, batch, loss_state, step)
    return {n: terms[n] for n in loss_terms(terms)}

  return jax.jit(jax.jacrev(terms_of))  # one reverse pass per term, in one program


def main(argv):
  del argv
  from cmah_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  from cmah_jax import train  # pylint: disable=import-outside-toplevel
  from cmah_jax.datasets.prepare import prepare_on_every_process  # pylint: disable=import-outside-toplevel
  from cmah_jax.inference import load_trained  # pylint: disable=import-outside-toplevel
  from cmah_jax.input import TrainPipeline  # pylint: disable=import-outside-toplevel
  from cmah_jax.objectives import get_objective  # pylint: disable=import-outside-toplevel
  from cmah_jax.protocol import retrieval_sources  # pylint: disable=import-outside-toplevel

  workdir = os.path.abspath(_WORKDIR.value)
  cfg = train.read_config(workdir)
  trained = load_trained(workdir)
  sources = retrieval_sources(prepare_on_every_process(cfg.dataset), cfg.eval)
  objective = get_objective(cfg.loss, cfg.model.bits, cfg.seed)
  term_gradients = make_term_gradients(trained.model, objective)
  loss_state = objective.init_state(len(sources.train)) or None
  sums: dict = {}
  _, train_key = train.run_keys(cfg.seed)
  with TrainPipeline(sources.train, "train", cfg.input, shd.make_mesh(None), seed=cfg.seed,
                     start_step=trained.step) as pipe:
    it = iter(pipe)
    for b in range(_BATCHES.value):  # the batches and keys of steps step, step + 1, ...
      mask_key, dropout_key = train.step_keys(train_key, trained.step + b)
      grads = term_gradients(trained.params, next(it), mask_key, dropout_key,
                             jnp.int32(trained.step), loss_state)
      for term, g in grads.items():
        for group, norm in group_norms(g).items():
          sums[term, group] = sums.get((term, group), 0.0) + norm / _BATCHES.value
  terms = sorted({t for t, _ in sums})
  groups = sorted({g for _, g in sums})
  ref = "loss/contrastive" if "loss/contrastive" in terms else terms[0]
  print(f"Gradient L2 norm per term and parameter group, step {trained.step}, mean of "
        f"{_BATCHES.value} batches; (x) = ratio to {ref} on that group.")
  print(f"{'group':22s}" + "".join(f"{t.removeprefix('loss/'):>26s}" for t in terms))
  for g in groups:
    cells = []
    for t in terms:
      v, r = sums[t, g], sums[ref, g]
      cells.append(f"{v:.3g}" + (f" ({v / r:.2g}x)" if r > 0 and t != ref else ""))
    print(f"{g:22s}" + "".join(f"{c:>26s}" for c in cells))
  path = os.path.join(workdir, "gradient_terms.json")
  with open(path, "w") as f:
    json.dump({"step": trained.step, "batches": _BATCHES.value,
               "norms": {t: {g: sums[t, g] for g in groups} for t in terms}}, f, indent=2)
  print(f"written {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)

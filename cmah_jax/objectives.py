"""Training objectives by name (`config.loss.objective`): CMAH's, and baselines' that train
the same two towers with another loss.

An objective is called inside the jitted train step:

    total, terms, new_loss_state = objective(outputs, batch, loss_state, step)

`outputs` is the `CMAH.apply(..., train=True)` dict, `batch` the global train batch
(`points`, `images`, `label`, `index` = dataset record index), `loss_state` a pytree the
objective carries across steps (e.g. a memory bank) or None. `init_state(num_examples)`
gives its initial value ({} when it carries nothing; the train state then has no
`loss_state`). Objectives must use labels only when `spec.supervised`. An objective that
draws random numbers (UCCH's sampled negatives) draws them from the run's `seed`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from cmah_jax.losses import LossSpec, NegativeQueue, cmah_loss
from cmah_jax.losses.combined import weighted_reconstruction


# The memories of earlier codes an objective may carry: loss_state key -> `config.loss` size.
MEMORIES = (("queue", "queue_size"), ("support", "nn_support_size"),
            ("assignment", "prototype_queue_size"))


@dataclasses.dataclass(frozen=True)
class CmahObjective:
  """`L_c + lambda_r (L_3D + L_2D)` (+ optional code-quality terms): `losses.cmah_loss`."""
  spec: LossSpec
  bits: int
  seed: int = 0  # the run's; CMAH's objective draws nothing (the model draws the masks)

  def init_state(self, num_examples: int) -> dict:
    """{}, plus `{key: NegativeQueue.empty(size, bits)}` for each memory of `MEMORIES`
    whose `config.loss` size is > 0."""
    state = {}
    for key, field in MEMORIES:
      q = int(getattr(self.spec, field))
      if not q:
        continue
      if q >= num_examples:
        raise ValueError(f"config.loss.{field}={q} must be smaller than the training set "
                         f"({num_examples} objects)")
      state[key] = NegativeQueue.empty(q, self.bits)
    return state

  def __call__(self, outputs, batch, loss_state, step):
    """With `spec.reconstruction_only_steps = S > 0`, before step S the total is the
    reconstruction part alone (`lambda_r (w_3D L_3D + w_2D L_2D)`, whose gradient is then
    the only one) and the terms log `contrastive_on` = 0; from step S on, 1 and
    `cmah_loss`'s total."""
    labels = batch["label"] if self.spec.supervised else None
    memories = {}
    for key, field in MEMORIES:
      memories[key] = (loss_state or {}).get(key)
      if memories[key] is None and getattr(self.spec, field):
        raise ValueError(f"CmahObjective: config.loss.{field} > 0 needs the loss_state of "
                         "init_state (train.py carries it)")
    used = {k: m for k, m in memories.items() if m is not None}
    index = batch["index"] if used else None
    total, terms = cmah_loss(outputs, self.spec, labels=labels, index=index, **memories)
    if self.spec.reconstruction_only_steps:
      total, terms = self._reconstruction_first(total, terms, step)
    new_state = {}
    for key, memory in used.items():
      new_state[key] = memory.push(outputs["point/h"], outputs["image/h"], batch["index"])
      terms[f"{key}/filled"] = new_state[key].filled.astype(jnp.float32)
    return total, terms, (new_state if new_state else loss_state)

  def _reconstruction_first(self, total, terms, step):
    """`recon + on * (total - recon)`, on = [step >= reconstruction_only_steps]: the
    gradient is recon's alone while off, and total's once on."""
    recon = weighted_reconstruction(self.spec, terms["loss/point_recon"],
                                    terms["loss/image_recon"])
    on = (jnp.asarray(step) >= int(self.spec.reconstruction_only_steps)).astype(jnp.float32)
    total = recon + on * (total - recon)
    return total, {**terms, "loss/total": total, "contrastive_on": on}


_REGISTRY: dict[str, Callable[[LossSpec, int, int], Any]] = {"cmah": CmahObjective}


def register(name: str, factory: Callable[[LossSpec, int, int], Any]) -> None:
  """Make `config.loss.objective = name` build `factory(spec, bits, seed=seed)`."""
  _REGISTRY[name] = factory


def available() -> list[str]:
  _load_baselines()
  return sorted(_REGISTRY)


def get_objective(spec: LossSpec, bits: int, seed: int = 0):
  """The objective named by `spec.objective`, for codes of `bits` bits, in a run of `seed`
  (`config.seed`)."""
  _load_baselines()
  if spec.objective not in _REGISTRY:
    raise ValueError(f"unknown config.loss.objective={spec.objective!r}; "
                     f"known: {sorted(_REGISTRY)}")
  return _REGISTRY[spec.objective](spec, bits, seed=seed)


def _load_baselines():
  """Import the deep baselines' modules, which register their objectives."""
  import importlib  # pylint: disable=import-outside-toplevel
  for module in ("cmah_jax.baselines.deep",):
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:
        raise


def tree_is_empty(tree) -> bool:
  return not jax.tree.leaves(tree)

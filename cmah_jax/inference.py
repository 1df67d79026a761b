"""A trained model for inference: `load_trained(workdir)` -> `TrainedModel`.

The run's resolved config (`workdir/config.json`) defines the module; the latest checkpoint
under `workdir/checkpoints` gives the parameters.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from cmah_jax.models import CMAH, abstract_variables


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A CMAH module with the parameters of one checkpoint of a run."""
  model: CMAH
  params: Any
  step: int
  bits: int
  num_points: int
  image_size: int
  config_hash: str
  config: Any = None  # the run's resolved `ExperimentConfig`

  @property
  def fingerprint(self) -> dict:
    """What identifies the hash functions: the resolved config's hash, bits and step."""
    return {"config_hash": self.config_hash, "bits": self.bits, "step": self.step}


def load_trained(workdir: str, step: int | None = None) -> TrainedModel:
  """The model of the run in `workdir` at checkpoint `step` (default: the latest).

  Raises:
    FileNotFoundError: no config.json or no checkpoint (the path is named).
  """
  from cmah_jax import train  # pylint: disable=import-outside-toplevel (the trainer's stack)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  cfg = train.read_config(workdir)
  model = CMAH(cfg.model)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
  with ocp.CheckpointManager(ckpt_dir) as manager:
    step = manager.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f"no checkpoint found in {ckpt_dir}")
    restored = manager.restore(step, args=ocp.args.StandardRestore(None))
  abstract = abstract_variables(model)["params"]
  params = restored["params"]
  if jax.tree.structure(params) != jax.tree.structure(abstract):
    raise ValueError(f"checkpoint {step} in {ckpt_dir} does not fit the model of "
                     f"{os.path.join(workdir, train.CONFIG_FILE)}")
  params = jax.tree.map(lambda x, a: jax.numpy.asarray(x, a.dtype), params, abstract)
  return TrainedModel(model=model, params=params, step=int(step), bits=cfg.model.bits,
                      num_points=cfg.model.num_points, image_size=cfg.model.image_size,
                      config_hash=cfg.fingerprint(), config=cfg)

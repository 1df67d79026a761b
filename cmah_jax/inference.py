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

from cmah_jax import quantizer as quantizer_lib
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
  quantizer: Any = None  # a `quantizer.Quantizer` (codes sign((h - mean) R)), or None: sign(h)

  @property
  def codes(self) -> str:
    """Which codes the model gives: "sign" (the network's sign(h)) or "itq:<digest>"."""
    return "sign" if self.quantizer is None else f"itq:{quantizer_lib.digest(self.quantizer)}"

  @property
  def fingerprint(self) -> dict:
    """What identifies the hash functions: the resolved config's hash, bits, step and
    which codes (`codes`)."""
    return {"config_hash": self.config_hash, "bits": self.bits, "step": self.step,
            "codes": self.codes}


def load_trained(workdir: str, step: int | None = None, codes: str = "auto") -> TrainedModel:
  """The model of the run in `workdir` at checkpoint `step` (default: the latest).

  `codes`: "auto" gives the run's learned quantiser's codes (`quantizer.npz`, fitted at
  the end of training) when it has one for this checkpoint and sign(h) otherwise; "sign"
  always the network's own sign(h); "itq" requires the quantiser.

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
  if codes not in ("auto", "sign", "itq"):
    raise ValueError(f"load_trained: codes must be 'auto', 'sign' or 'itq', got {codes!r}")
  quantizer = None if codes == "sign" else quantizer_lib.load(workdir, step=int(step))
  if codes == "itq" and quantizer is None:
    raise FileNotFoundError(
        f"{os.path.join(workdir, quantizer_lib.FILE)}: no learned quantiser for checkpoint "
        f"{step} (runs fit it when they finish; `cmah_jax.run.add_quantizer` fits it for "
        "older runs); pass codes='sign' for the network's own codes")
  return TrainedModel(model=model, params=params, step=int(step), bits=cfg.model.bits,
                      num_points=cfg.model.num_points, image_size=cfg.model.image_size,
                      config_hash=cfg.fingerprint(), config=cfg, quantizer=quantizer)

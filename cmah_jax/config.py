"""The experiment configuration, resolved once into frozen dataclasses.

A config file (`configs/*.py`) returns an `ml_collections.ConfigDict`: the user-facing,
overridable form. `resolve(config)` turns it, once, into an `ExperimentConfig` of frozen
dataclasses that every other module takes: `InputSpec` (input pipeline), `ModelConfig`
(network sizes), `LossSpec`, `OptimSpec`, `EvalSpec`, `DatasetSpec`. Input sizes left to the
model (`input.num_points` / `input.image_size` = None) are filled in here, so the resolved
values are what a run uses and what `report.json` records.

Each default lives in exactly one place: the dataclass fields below (tagged with their
source), the model variants in `models/variants.py`, and in the config files only what a
setting changes. `base_config()` builds the ConfigDict skeleton from these dataclasses.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from cmah_jax.input.spec import InputSpec
from cmah_jax.losses import LossSpec
from cmah_jax.losses.spec import EXTRA_VIEW_TOWERS, SECOND_VIEW_PAIR
from cmah_jax.models.variants import ModelConfig, resolve_config


# The paper-faithful objective (dotted config keys): CLIP's temperature, Point-MAE's
# per-axis scaling and the 1:1 weighting of L_2D [paper; Point-MAE]. Since round 16b our
# defaults depart from it in the temperature (0.2) and the L_2D weight (0.1), both chosen
# on the validation carve. `configs/<name>.py:paper` applies these, and so do the
# experiment method `cmah_paper` and the tuning candidates (which pin them, so they stay
# the runs they were whatever the defaults).
PAPER_OBJECTIVE = {"loss.temperature": 0.07, "input.point_scale_isotropic": False,
                   "loss.image_recon_weight": 1.0}
# L_c's pairs as the paper states them, full-full and masked-masked [paper]: the default
# until round 18, which paired the masked point view with the full image instead
# (docs/tuning.md). Runs recorded before round 18 pin them (`Method.pinned`), and
# `configs/<name>.py:paper` applies them with `PAPER_OBJECTIVE`. Kept apart from it, so
# that the tuning candidates, which list `PAPER_OBJECTIVE` among their overrides, keep
# their fingerprints.
PAPER_PAIRS = {"loss.pairs": "full_full,masked_masked"}
# The defaults from round 10 to round 16b (temperature 0.2 and isotropic scaling from
# round 1, L_2D weight 0.1 from round 10): the CMAH, ablation, baseline and bound runs
# recorded then keep them (`Method.pinned`).
DEFAULTS_ROUND10 = {"loss.temperature": 0.2, "input.point_scale_isotropic": True,
                    "loss.image_recon_weight": 0.1}
# MAE's linear patch embedding [paper; MAE]: the `small` variant's image tokenizer until
# round 25 made the hMLP stem its default (docs/tuning.md). Every run recorded before then
# pins it (`Method.pinned`), and `configs/<name>.py:paper` applies it with the objective.
LINEAR_PATCHES = {"model.overrides.image_stem_dims": ()}
# UCCH's bank and negatives drawn from seed 0 in every run: what UCCH's runs recorded
# before 2026-12-07 did (`loss.ucch_seed_per_run`); they pin it.
UCCH_SEED_0 = {"loss.ucch_seed_per_run": False}


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
  """Set dotted keys (`(key, value)` pairs, e.g. `("loss.temperature", 0.07)`) of a
  ConfigDict in place; `"model.overrides.depth"` creates the key under `overrides`,
  which accepts any ModelConfig field."""
  for key, value in overrides:
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
      node[leaf] = value


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Which prepared TFDS dataset to read."""
  name: str = "synthetic_shapes"
  config: str | None = None          # builder config; None: the builder's default
  data_dir: str = "work/data"
  manual_dir: str | None = None      # real datasets: the downloaded files


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  """AdamW with linear warm-up then cosine decay [Point-MAE]."""
  base_learning_rate: float = 1e-3      # [Point-MAE], scaled by batch / base batch
  learning_rate_base_batch: int = 128   # [Point-MAE]
  weight_decay: float = 0.05            # [Point-MAE]
  b1: float = 0.9                       # AdamW defaults [Point-MAE]
  b2: float = 0.999
  warmup_steps: int | None = 100        # [ours: CPU budget]; None: WARMUP_FRACTION of the
                                        # run (Point-MAE: 10 of 300 epochs)
  min_learning_rate_ratio: float = 0.01  # cosine floor [ours]
  grad_clip_norm: float = 1.0           # [ours]

  def validate(self) -> "OptimSpec":
    positive = {"base_learning_rate": self.base_learning_rate,
                "learning_rate_base_batch": self.learning_rate_base_batch,
                "grad_clip_norm": self.grad_clip_norm}
    for name, value in positive.items():
      if not value > 0:
        raise ValueError(f"config.optim.{name}={value!r} must be > 0")
    if self.weight_decay < 0:
      raise ValueError(f"config.optim.weight_decay={self.weight_decay!r} must be >= 0")
    for name in ("b1", "b2"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"config.optim.{name}={getattr(self, name)!r} must be in [0, 1)")
    if self.warmup_steps is not None and not (isinstance(self.warmup_steps, int)
                                              and self.warmup_steps >= 0):
      raise ValueError(f"config.optim.warmup_steps={self.warmup_steps!r} must be an int >= 0 "
                       "or None (a fraction of the run)")
    if not 0.0 <= self.min_learning_rate_ratio <= 1.0:
      raise ValueError(f"config.optim.min_learning_rate_ratio={self.min_learning_rate_ratio!r}"
                       " must be in [0, 1]")
    return self


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Retrieval evaluation settings; the protocol is described in `cmah_jax/protocol.py`."""
  precision_ks: tuple[int, ...] = (1, 10, 50, 100)
  num_examples_in_figure: int = 4      # query rows in retrieval_examples.png
  protocol: str = "test"               # "test" | "validation" (carved from train) [ours]
  # test protocol: "database" (held out) [ours: the embedded set's default; docs/PAPER.md]
  # or "train" (the UCCH protocol: the real-dataset configs)
  database_split: str = "database"
  validation_fraction: float = 0.2     # of train held out by the validation protocol [ours]
  validation_query_fraction: float = 0.2  # of the held-out part, used as queries [ours]
  hamming_radius: int = 2              # precision within this radius [hashing literature]

  def validate(self) -> "EvalSpec":
    if self.protocol not in ("test", "validation"):
      raise ValueError(f"config.eval.protocol={self.protocol!r}: 'test' or 'validation'")
    if self.database_split not in ("database", "train"):
      raise ValueError(f"config.eval.database_split={self.database_split!r}: 'database' "
                       "(held-out split) or 'train' (UCCH protocol)")
    for name in ("validation_fraction", "validation_query_fraction"):
      if not 0.0 < getattr(self, name) < 1.0:
        raise ValueError(f"config.eval.{name}={getattr(self, name)!r} must be in (0, 1)")
    if self.hamming_radius < 0:
      raise ValueError(f"config.eval.hamming_radius={self.hamming_radius!r} must be >= 0")
    if not self.precision_ks or min(self.precision_ks) < 1:
      raise ValueError(f"config.eval.precision_ks={self.precision_ks!r}: cut-offs >= 1")
    if self.num_examples_in_figure < 1:
      raise ValueError(f"config.eval.num_examples_in_figure={self.num_examples_in_figure!r}"
                       " must be >= 1 (query rows in retrieval_examples.png)")
    return self


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything a run reads, resolved and validated."""
  seed: int
  variant: str                        # the model variant `model` was built from
  dataset: DatasetSpec
  input: InputSpec
  model: ModelConfig
  loss: LossSpec
  optim: OptimSpec
  eval: EvalSpec
  total_steps: int | None            # None: `epochs` of the prepared train split
  log_every_steps: int
  checkpoint_every_steps: int
  keep_checkpoints: int
  eval_every_steps: int | None        # 0: at the end only; None: EVAL_FRACTION of the run
  init_from: str | None               # warm start: a checkpoint directory (params only)
  epochs: float | None = None         # run length when total_steps is None (resolve_schedule)

  def to_dict(self) -> dict:
    """JSON-ready nested dict (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
    """Inverse of `to_dict` (e.g. a run's `config.json`); validates every section."""
    def section(sub, values, where):
      return _section(sub, dict(values), where)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"unknown key(s) {unknown} in a resolved config; valid: {sorted(fields)}")
    # JSON holds the tuple fields (pointnet_dims, image_stem_dims) as lists; ModelConfig is
    # hashed as a static module field, so they go back to tuples.
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in d["model"].items()}
    return cls(
        seed=d["seed"], variant=d["variant"],
        dataset=section(DatasetSpec, d["dataset"], "dataset"),
        input=section(InputSpec, d["input"], "input").validate(),
        model=ModelConfig(**model).validate(),
        loss=section(LossSpec, d["loss"], "loss").validate(),
        optim=section(OptimSpec, d["optim"], "optim").validate(),
        eval=section(EvalSpec, d["eval"], "eval").validate(),
        **{k: d[k] for k in ("total_steps", "log_every_steps", "checkpoint_every_steps",
                             "keep_checkpoints", "eval_every_steps", "init_from")},
        epochs=d.get("epochs"))

  def fingerprint_dict(self, trains: bool = True) -> dict:
    """`to_dict()` without the fields of `ADDED_LATER` that are at their neutral value,
    and with the weights the loss never reads (`INERT_WHEN`) set to that value first: what
    identifies a config (here and in a suite's run fingerprints). So a changed default
    weight of a reconstruction term does not re-run contrastive-only, which has none.
    `trains=False` (a method computed without training, e.g. a classic baseline): no
    loss weight is read and no model is built, so all of `INERT_WHEN` are, and so are the
    model fields of `ADDED_LATER`."""
    d = self.to_dict()
    loss = d["loss"]
    for field, (_, inert) in INERT_WHEN.items():
      if not trains or inert(loss):
        loss[field] = ADDED_LATER[f"loss.{field}"]
    for path in ADDED_LATER:
      *parents, leaf = path.split(".")
      node = d
      for p in parents:
        node = node.get(p, {})
      if leaf in node and (is_neutral(path, node[leaf]) or (not trains and parents == ["model"])):
        del node[leaf]
    return d

  def fingerprint(self) -> str:
    """sha256 (hex, 16 chars) of the canonical JSON of `fingerprint_dict()` (and `epochs`
    only when set), so earlier configs keep their fingerprints."""
    d = self.fingerprint_dict()
    if d.get("epochs") is None:  # added before ADDED_LATER existed
      d.pop("epochs", None)
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Fields added after runs were fingerprinted, with the value that reproduces what those
# runs did: `fingerprint` leaves them out at that value.
ADDED_LATER = {
    "loss.point_recon_weight": 1.0,
    "loss.image_recon_weight": 1.0,
    "loss.queue_size": 0,
    "loss.nn_positive_weight": 0.0,
    "loss.nn_support_size": 0,
    "input.random_crop_min_scale": 1.0,
    "loss.debias_positive_prior": 0.0,
    "model.num_prototypes": 0,
    "loss.prototype_weight": 0.0,
    "loss.prototype_temperature": 0.1,
    "loss.sinkhorn_epsilon": 0.05,
    "loss.sinkhorn_iterations": 3,
    "loss.prototype_queue_size": 0,
    "loss.ucch_temperature": 0.9,
    "model.masked_views": 1,
    "model.hash_sharpness_end": 1.0,
    "model.extra_image_views": True,
    "loss.reconstruction_only_steps": 0,
    "input.second_view": False,
    "loss.relation_weight": 0.0,
    "loss.relation_targets": "image_image",
    "model.image_stem_dims": [],
    "loss.ucch_seed_per_run": False,
    "model.fusion_context": "tokens",
}


def is_neutral(path: str, value) -> bool:
  """Whether `value` of the field `path` (a key of `ADDED_LATER`) is its neutral value,
  compared as JSON, where a tuple and its list default are one value."""
  return json.loads(json.dumps(value)) == ADDED_LATER[path]


# Loss weights that cannot change a run when their term is off (`losses.cmah_loss` skips
# the term and adds an exact 0): field -> (why, predicate on the loss section's dict).
INERT_WHEN = {
    "point_recon_weight": ("L_3D is off",
                           lambda loss: not LossSpec(**loss).reconstruction_on()[0]),
    "image_recon_weight": ("L_2D is off",
                           lambda loss: not LossSpec(**loss).reconstruction_on()[1]),
    "ucch_temperature": ("the objective is not UCCH's",
                         lambda loss: loss["objective"] != "ucch"),
    "ucch_seed_per_run": ("the objective is not UCCH's",
                          lambda loss: loss["objective"] != "ucch"),
    "relation_targets": ("the relational term is off",
                         lambda loss: not LossSpec(**loss).relation_on()),
}

_SECTIONS = {"dataset": DatasetSpec, "input": InputSpec, "loss": LossSpec,
             "optim": OptimSpec, "eval": EvalSpec}
_TOP = {"seed": 0, "total_steps": 2400, "log_every_steps": 25,
        "checkpoint_every_steps": 400, "keep_checkpoints": 2, "eval_every_steps": 0,
        "init_from": None, "epochs": None}


def _defaults(cls) -> dict:
  return {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}


def base_config() -> ml_collections.ConfigDict:
  """The ConfigDict skeleton: every field at its dataclass default (config files start
  here and change only what their setting needs)."""
  c = ml_collections.ConfigDict(dict(_TOP))
  for name, cls in _SECTIONS.items():
    c[name] = ml_collections.ConfigDict(_defaults(cls))
  del c.loss["pairs"]
  c.loss.pairs = ",".join(LossSpec().pairs)  # a string: `--config.loss.pairs=a,b` works
  del c.input["second_view"]  # derived from loss.pairs by `resolve`, never set by hand
  c.input.num_points = None   # None: the model variant's [ours]
  c.input.image_size = None   # None: the model variant's [ours]
  c.model = ml_collections.ConfigDict(dict(
      variant="small", bits=64, overrides=model_override_slots()))
  return c


def model_override_slots() -> ml_collections.ConfigDict:
  """`config.model.overrides`: one unset (None) slot per `ModelConfig` field but `bits`,
  typed by its default, so `--config.model.overrides.depth=6` works on a locked config;
  an unset slot leaves the variant's value (`resolve` drops them)."""
  slots = {f.name: config_dict.placeholder(type(f.default))
           for f in dataclasses.fields(ModelConfig) if f.name != "bits"}
  return ml_collections.ConfigDict(slots)


def _as_dict(node: Any) -> dict:
  if node is None:
    return {}
  if hasattr(node, "to_dict"):
    return node.to_dict()
  return dict(node)


def _section(cls, values: Mapping[str, Any], where: str):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"unknown key(s) {unknown} in config.{where}; valid: {sorted(names)}")
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in values:
      v = values[f.name]
      out[f.name] = tuple(v) if isinstance(v, list) else v
  return cls(**out)


def resolve(config: Any) -> ExperimentConfig:
  """`ConfigDict` (or mapping, or an `ExperimentConfig`) -> validated `ExperimentConfig`.

  The extra masked views are encoded only where a pair of L_c reads them:
  `model.masked_views` resolves to 1 where `loss.pairs` has neither the masked-masked pair
  nor the masked points against the full image, so such a run (contrastive-only, say)
  trains and is fingerprinted as the one-view run it is; and `model.extra_image_views`
  resolves to False where only the latter reads them (the point tower's views alone), to
  its neutral True with one view. Likewise `input.second_view` (a second rendered image
  view in each train batch) is on exactly when `loss.pairs` has its pair, and is never
  set by hand.

  Raises:
    ValueError: an unknown key (named with the valid ones), an inconsistent size, or
      `input.num_points` / `image_size` disagreeing with `model.overrides`.
  """
  if isinstance(config, ExperimentConfig):
    return config
  raw = _as_dict(config)
  unknown = sorted(set(raw) - set(_TOP) - set(_SECTIONS) - {"model"})
  if unknown:
    raise ValueError(f"unknown top-level config key(s) {unknown}; valid: "
                     f"{sorted(set(_TOP) | set(_SECTIONS) | {'model'})}")
  model_raw = _as_dict(raw.get("model"))
  bad = sorted(set(model_raw) - {"variant", "bits", "overrides"})
  if bad:
    raise ValueError(f"unknown key(s) {bad} in config.model; valid: "
                     "['bits', 'overrides', 'variant'] (sizes go in config.model.overrides)")
  variant = model_raw.get("variant", "small")
  overrides = {k: v for k, v in _as_dict(model_raw.get("overrides")).items()
               if v is not None}  # None: an unset slot (`model_override_slots`)
  input_raw = dict(_as_dict(raw.get("input")))
  for field in ("num_points", "image_size"):
    value = input_raw.get(field)
    if value is None:
      continue
    if field in overrides and overrides[field] != value:
      raise ValueError(
          f"config.input.{field}={value} disagrees with config.model.overrides."
          f"{field}={overrides[field]}; set one of them")
    overrides[field] = value
  model = resolve_config(variant, model_raw.get("bits", 64), overrides)
  input_raw.update(num_points=model.num_points, image_size=model.image_size)
  if "second_view" in input_raw:
    raise ValueError("config.input.second_view is derived from config.loss.pairs (on with the "
                     f"{SECOND_VIEW_PAIR!r} pair); remove it from config.input")
  top = {k: raw.get(k, v) for k, v in _TOP.items()}
  for k in ("seed", "total_steps", "log_every_steps", "checkpoint_every_steps",
            "keep_checkpoints"):
    if k == "total_steps" and top[k] is None:
      continue  # sized from `epochs` once the dataset is prepared (resolve_schedule)
    if not isinstance(top[k], int) or isinstance(top[k], bool) or top[k] < 0:
      raise ValueError(f"config.{k}={top[k]!r} must be a non-negative int")
  _check_schedule(top)
  for k in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    if top[k] < 1:
      raise ValueError(f"config.{k}={top[k]!r} must be >= 1")
  spec = ExperimentConfig(
      seed=top["seed"], variant=variant,
      dataset=_section(DatasetSpec, _as_dict(raw.get("dataset")), "dataset"),
      input=_section(InputSpec, input_raw, "input").validate(),
      model=model,
      loss=_section(LossSpec, _as_dict(raw.get("loss")), "loss").validate(),
      optim=_section(OptimSpec, _as_dict(raw.get("optim")), "optim").validate(),
      eval=_section(EvalSpec, _as_dict(raw.get("eval")), "eval").validate(),
      total_steps=top["total_steps"], log_every_steps=top["log_every_steps"],
      checkpoint_every_steps=top["checkpoint_every_steps"],
      keep_checkpoints=top["keep_checkpoints"],
      eval_every_steps=(None if top["eval_every_steps"] is None
                        else int(top["eval_every_steps"])),
      init_from=top["init_from"],
      epochs=None if top["epochs"] is None else float(top["epochs"]))
  if float(spec.loss.prototype_weight) > 0 and not spec.model.num_prototypes:
    raise ValueError(f"config.loss.prototype_weight={spec.loss.prototype_weight} needs "
                     "prototypes to predict: set config.model.overrides.num_prototypes > 0")
  return _resolve_views(spec)


def _resolve_views(spec: ExperimentConfig) -> ExperimentConfig:
  """`spec` with the views L_c's pairs read and no others (`resolve`): the masked views
  that no pair reads left out, and the second image view drawn exactly when its pair is
  there."""
  pairs = spec.loss.pairs
  spec = dataclasses.replace(spec, input=dataclasses.replace(
      spec.input, second_view=SECOND_VIEW_PAIR in pairs))
  model = spec.model
  towers = {t for pair in pairs for t in EXTRA_VIEW_TOWERS.get(pair, ())}
  if model.masked_views == 1 or not towers:
    # Views 1 .. V-1 would be computed and thrown away: one view is the run this trains.
    model = dataclasses.replace(model, masked_views=1, extra_image_views=True)
  elif "image" not in towers:  # the point tower's extra views are read, not the image's
    model = dataclasses.replace(model, extra_image_views=False)
  elif not model.extra_image_views:
    raise ValueError(
        f"config.model.overrides.extra_image_views=False with masked_views="
        f"{model.masked_views}: the masked-masked pair of config.loss.pairs={','.join(pairs)} "
        "reads the image tower's extra masked views")
  return dataclasses.replace(spec, model=model)


# ----------------------------------------------------------------------------- schedule
WARMUP_FRACTION = 1 / 30  # optim.warmup_steps=None: 10 of 300 epochs [Point-MAE]
EVAL_FRACTION = 1 / 12    # eval_every_steps=None: every 25 of 300 epochs [ours]


def _check_schedule(top: Mapping[str, Any]) -> None:
  """`total_steps` xor `epochs`; `epochs` positive."""
  epochs = top.get("epochs")
  if top["total_steps"] is None and epochs is None:
    raise ValueError("config.total_steps=None needs config.epochs (the run length in epochs "
                     "of the prepared train split); set one of them")
  if top["total_steps"] is not None and epochs is not None:
    raise ValueError(f"config.total_steps={top['total_steps']} and config.epochs={epochs} "
                     "are both set; set one of them (the other None)")
  if epochs is not None and (isinstance(epochs, bool) or not float(epochs) > 0):
    raise ValueError(f"config.epochs={epochs!r} must be a positive number")
  every = top.get("eval_every_steps")
  if every is not None and (not isinstance(every, int) or isinstance(every, bool)
                            or every < 0):
    raise ValueError(f"config.eval_every_steps={every!r} must be a non-negative int or "
                     "None (EVAL_FRACTION of the run)")


def schedule_resolved(cfg: ExperimentConfig) -> bool:
  """Whether every step count is known (nothing left to the dataset's size)."""
  return (cfg.total_steps is not None and cfg.optim.warmup_steps is not None
          and cfg.eval_every_steps is not None)


def resolve_schedule(cfg: ExperimentConfig, train_examples: int) -> ExperimentConfig:
  """Fill in the step counts a config leaves to the prepared dataset.

  - `total_steps=None`: `round(epochs * steps_per_epoch)`, where an epoch is
    `train_examples // input.batch_size` full batches (the input pipeline drops the rest);
  - `optim.warmup_steps=None`: `round(WARMUP_FRACTION * total_steps)` (10 of 300 epochs
    [Point-MAE]; with an explicit `total_steps` the warm-up stays in proportion);
  - `eval_every_steps=None`: `round(EVAL_FRACTION * total_steps)` (every 25 of 300 epochs).

  Args:
    cfg: a resolved config; returned unchanged when nothing is left (`schedule_resolved`).
    train_examples: examples the training pipeline draws from (the prepared train split,
      less any validation carve).
  Raises:
    ValueError: the batch is larger than the training set (no full batch per epoch).
  """
  if schedule_resolved(cfg):
    return cfg
  total = cfg.total_steps
  if total is None:
    steps_per_epoch = int(train_examples) // cfg.input.batch_size
    if steps_per_epoch < 1:
      raise ValueError(
          f"config.input.batch_size={cfg.input.batch_size} exceeds the {train_examples} "
          f"training examples of {cfg.dataset.name}/{cfg.dataset.config}: config.epochs "
          "needs at least one full batch per epoch; choose a smaller batch.")
    total = max(int(round(cfg.epochs * steps_per_epoch)), 1)
  optim = cfg.optim
  if optim.warmup_steps is None:
    optim = dataclasses.replace(optim, warmup_steps=int(round(WARMUP_FRACTION * total)))
  every = cfg.eval_every_steps
  if every is None:
    every = max(int(round(EVAL_FRACTION * total)), 1)
  return dataclasses.replace(cfg, total_steps=total, optim=optim, eval_every_steps=every)

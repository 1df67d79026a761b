"""Resuming a run: is the checkpoint's config the one we are asked to continue with?

Every checkpoint carries the resolved config it was written with (`cmah_jax.checkpointing`
stores `ExperimentConfig.to_dict()` in the step's Orbax metadata). On resume the trainer
compares it with the new resolved config:

- fields in `FREE_FIELDS` only say how often to log / checkpoint / evaluate, where the
  files are, or how evaluation is batched; they may change freely (the trained parameters
  do not depend on them);
- any other difference (temperature, loss pairs, model, seed, batch, data, and also
  `total_steps` / `epochs` / warm-up, which reshape the learning-rate schedule) stops the
  run with `ConfigChangedError`, listing `field: old -> new`, unless the change is
  explicitly allowed (`main.py --allow_config_change`, `train_and_evaluate(...,
  allow_config_change=True)`), e.g. to train an old run for more steps. An allowed change
  is logged and appended to `workdir/config_changes.jsonl`.

A field missing from an older checkpoint's config (a field added since) stands for the
behaviour before it existed: the value `config.ADDED_LATER` or `ABSENT_MEANS` gives it, so
it is a change where today's value differs (an L_2D weight of 1 then, 0.1 now); a field in
neither is no change where it is at its default now.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

# Fields that do not affect the trained parameters: logging / checkpoint / evaluation
# frequency, file locations, evaluation batching and prefetch depth. `init_from` only
# matters for a fresh start (a resumed run continues from its own checkpoint).
FREE_FIELDS = frozenset({
    "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "eval_every_steps",
    "init_from", "dataset.data_dir", "dataset.manual_dir", "input.eval_batch_size",
    "input.prefetch", "eval.precision_ks", "eval.num_examples_in_figure",
    "eval.hamming_radius",
})

_ABSENT = object()

# Fields added with a default that differs from what runs did before the field existed: in
# an older checkpoint's config their absence means this value, not today's default.
ABSENT_MEANS = {
    "input.point_scale_isotropic": False,   # per-axis scaling before 2026-12-02
}


class ConfigChangedError(ValueError):
  """The config differs from the checkpoint's in fields that change what is trained."""


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
                ) -> list[tuple[str, Any, Any]]:
  """Differences between two nested config dicts: `[(dotted.path, old, new)]`, sorted by
  path; a key missing on one side has the value `"<absent>"` there."""
  out = []
  for key in sorted(set(old) | set(new)):
    path = f"{prefix}{key}"
    a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out += config_diff(a, b, path + ".")
    elif _normalise(a) != _normalise(b):
      out.append((path, _show(a), _show(b)))
  return out


def _normalise(v):
  return [_normalise(x) for x in v] if isinstance(v, (list, tuple)) else v


def _show(v):
  return "<absent>" if v is _ABSENT else v


def format_diff(changes) -> str:
  """One line per change: `  loss.temperature: 0.1 -> 0.2`."""
  return "\n".join(f"  {path}: {old!r} -> {new!r}" for path, old, new in changes)


def check_config(saved: Mapping[str, Any] | None, cfg, *, where: str,
                 allow_change: bool = False, defaults: Mapping[str, Any] | None = None
                 ) -> list[tuple[str, Any, Any]]:
  """Compare the config a checkpoint was written with (`saved`, a `to_dict()`; None when
  the checkpoint has none) with the resolved config `cfg` of this run.

  Args:
    saved: the checkpoint's config dict, or None (nothing to compare: returns []).
    cfg: the new resolved `ExperimentConfig`.
    where: names the checkpoint in messages (e.g. "work/run/checkpoints step 400").
    allow_change: accept changes outside `FREE_FIELDS` (they are returned).
    defaults: `to_dict()` of a config at every default, to ignore fields absent from
      `saved` that are at their default now (fields added since it was written).
  Returns:
    the changes outside `FREE_FIELDS` (only when allowed; else they raise).
  Raises:
    ConfigChangedError: changes outside `FREE_FIELDS` and not `allow_change`.
  """
  if saved is None:
    return []
  from cmah_jax.config import ADDED_LATER  # pylint: disable=import-outside-toplevel
  absent_means = {**ADDED_LATER, **ABSENT_MEANS}
  new = cfg.to_dict()
  changes = []
  for path, old, value in config_diff(saved, new):
    if path in FREE_FIELDS:
      continue
    if old == "<absent>" and path in absent_means:
      old = absent_means[path]
      if _normalise(old) == _normalise(value):
        continue
    elif old == "<absent>" and defaults is not None and _lookup(defaults, path) == value:
      continue
    changes.append((path, old, value))
  if changes and not allow_change:
    raise ConfigChangedError(
        f"The config differs from the one {where} was trained with:\n"
        f"{format_diff(changes)}\n"
        "Resuming would silently mix two experiments. Use another --workdir for a new "
        "experiment, or pass --allow_config_change (train_and_evaluate(..., "
        "allow_config_change=True)) to continue this run with the new values (e.g. more "
        "steps).")
  return changes


def _lookup(d: Mapping[str, Any], path: str):
  for key in path.split("."):
    if not isinstance(d, Mapping) or key not in d:
      return _ABSENT
    d = d[key]
  return d


CHANGES_FILE = "config_changes.jsonl"


def record_change(workdir: str, step: int, changes) -> str:
  """Append an allowed change to `workdir/config_changes.jsonl`; returns the path."""
  path = os.path.join(workdir, CHANGES_FILE)
  row = {"resumed_at_step": int(step),
         "changes": [{"field": p, "old": o, "new": n} for p, o, n in changes]}
  with open(path, "a") as f:
    f.write(json.dumps(row, default=str) + "\n")
  return path


def recorded_changes(workdir: str) -> list[dict]:
  """The changes a run was resumed with (`record_change`), in order:
  [{"resumed_at_step", "changes": [{"field", "old", "new"}]}]; [] for none."""
  from cmah_jax.metric_writer import read_jsonl  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, CHANGES_FILE)
  return read_jsonl(path) if os.path.exists(path) else []

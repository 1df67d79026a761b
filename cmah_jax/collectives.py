"""Collectives a multi-process CPU (gloo) run cannot do: those inside control flow.

XLA:CPU runs a conditional's / loop's body in a nested executor, concurrently with the
program's top-level collectives, and its gloo collectives use one tag for every operation:
two in flight between the same processes take each other's messages. The run then aborts
("Received data size doesn't match expected size ... collective mismatch") or, when the
sizes agree, silently exchanges the wrong data. `check_for_gloo` refuses such a compiled
train step before it runs (`cmah_jax.train.compile_train_step`).
"""
from __future__ import annotations

import re

_COLLECTIVE = re.compile(r"=\s.*?\b(all-gather|all-reduce|reduce-scatter|all-to-all|"
                         r"collective-permute|collective-broadcast)(-start)?\(")


def collectives_outside_entry(hlo_text: str) -> list[str]:
  """Collectives of an optimized HLO module that sit outside its ENTRY computation (in a
  conditional branch, while body or called computation): `"kind (op_name)"` each."""
  found, in_entry = [], False
  for line in hlo_text.splitlines():
    if line.endswith("{") and not line.startswith(" "):
      in_entry = line.startswith("ENTRY ")
      continue
    m = _COLLECTIVE.search(line)
    if m and not in_entry:
      name = re.search(r'op_name="([^"]*)"', line)
      found.append(f"{m.group(1)} ({name.group(1)[-120:] if name else '?'})")
  return found


def check_for_gloo(hlo_text: str) -> None:
  """Refuse a multi-process CPU train step with collectives inside control flow (see the
  module docstring).

  Raises:
    RuntimeError: naming the offending collectives and their source ops.
  """
  found = collectives_outside_entry(hlo_text)
  if found:
    listing = "\n  ".join(found[:8]) + ("\n  ..." if len(found) > 8 else "")
    raise RuntimeError(
        f"The compiled train step has {len(found)} collective(s) inside control flow "
        f"(conditional / while / call bodies):\n  {listing}\nWith several CPU processes "
        "XLA:CPU runs them concurrently with the step's other collectives and gloo mixes up "
        "their messages (an abort with 'collective mismatch', or wrong data). Rewrite the "
        "op without control flow (e.g. jnp.diagonal of a square matrix -> "
        "cmah_jax.losses.square_diagonal), or train in one process.")

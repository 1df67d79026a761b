"""A failure on one process of a multi-process run, raised on every process.

Some steps run on process 0 only (taking the workdir lock, preparing the dataset, writing
the report). If one fails there, the other processes would wait at the next barrier for
ever. `raise_if_any_failed` is that barrier: each process passes the exception it met, or
None, and every process raises when any did.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def raise_if_any_failed(error: BaseException | None, what: str,
                        error_type: type[Exception] = RuntimeError) -> None:
  """Raise `error` where it happened and `error_type("... {what} ...")` on the other
  processes; return on all of them when none failed. A barrier in a multi-process run (all
  processes must call it), a plain `raise error` in a single-process one."""
  if jax.process_count() > 1:
    failed = multihost_utils.process_allgather(np.array([error is not None]))
    if error is None and bool(np.any(failed)):
      others = [int(i) for i in np.flatnonzero(np.asarray(failed).reshape(-1))]
      raise error_type(f"process {', '.join(map(str, others))} failed while {what} "
                       "(see its log)")
  if error is not None:
    raise error

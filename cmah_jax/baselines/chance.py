"""The chance baseline: codes independent of the input."""
from __future__ import annotations

import numpy as np


def random_codes(n: int, bits: int, seed: int) -> np.ndarray:
  """`[n, bits]` float32 codes, each entry an independent fair draw from {-1, +1} of
  `default_rng(seed)`. Expected mAP is the fraction of relevant items in the database."""
  rng = np.random.default_rng(seed)
  return np.where(rng.random((int(n), int(bits))) < 0.5, -1.0, 1.0).astype(np.float32)

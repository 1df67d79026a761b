#!/usr/bin/env bash
# The test command: set up .venv if needed, then run the default (CI) test suite.
# Slow checks are marked `slow` and excluded; run them with: launch/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source launch/allocator.sh  # tcmalloc when available (CMAH_ALLOCATOR=system: off)
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest -n 2 --durations=15 "$@"

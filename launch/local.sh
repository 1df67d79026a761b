#!/usr/bin/env bash
# The main job: set up .venv, then train + evaluate on the embedded dataset and write the
# retrieval report to $WORKDIR (default work/default). Extra arguments go to main.py.
#   bash launch/local.sh
#   CONFIG=configs/default.py:bits=32 WORKDIR=work/b32 bash launch/local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source launch/allocator.sh  # tcmalloc: ~1.4x faster CPU steps (CMAH_ALLOCATOR=system: off)
CONFIG=${CONFIG:-configs/default.py}
WORKDIR=${WORKDIR:-work/default}
.venv/bin/python - <<'PY'
import jax
print(f"[launch/local.sh] topology: {jax.process_count()} process, {jax.device_count()} "
      f"{jax.devices()[0].platform} device(s)")
PY
time .venv/bin/python main.py --config="$CONFIG" --workdir="$WORKDIR" "$@"
echo "[launch/local.sh] report: $WORKDIR/report.md"
cat "$WORKDIR/report.md"

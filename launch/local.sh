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
# main.py runs as a child that SIGTERM/SIGINT sent to this script are passed on to: it
# saves a checkpoint and exits 3 (the same command resumes it), 0 when finished.
start=$SECONDS
.venv/bin/python main.py --config="$CONFIG" --workdir="$WORKDIR" "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM INT
set +e
wait "$pid"; rc=$?
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done  # a trapped signal ends wait
set -e
echo "[launch/local.sh] main.py exited with status $rc after $((SECONDS - start)) s"
if [ "$rc" -ne 0 ]; then
  [ "$rc" -eq 3 ] && echo "[launch/local.sh] stopped with a checkpoint saved: run the same command again to resume"
  exit "$rc"
fi
echo "[launch/local.sh] report: $WORKDIR/report.md"
cat "$WORKDIR/report.md"

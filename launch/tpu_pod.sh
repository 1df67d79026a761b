#!/usr/bin/env bash
# Run the same training command on every worker of a TPU VM pod slice.
#   TPU_NAME=my-pod ZONE=us-central2-b CONFIG=configs/shapenet55.py WORKDIR=/mnt/bucket/run \
#     bash launch/tpu_pod.sh
# WORKDIR must be a directory every worker shares (a bucket mounted with gcsfuse at the same
# path on each worker, or NFS / Filestore): runs write through the local file system, and
# a gs:// URL is refused.
# Each worker: installs requirements + jax[tpu] (once), then `python main.py --distributed`.
# jax.distributed discovers the pod topology itself; the script checks that every worker
# sees the same global device count and fails loudly otherwise.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
REPO_DIR=${REPO_DIR:-cmah_jax}
EXPECTED_DEVICES=${EXPECTED_DEVICES:-}
read -r -d '' REMOTE <<EOS || true
set -euo pipefail
cd ~/${REPO_DIR}
bash launch/setup.sh
.venv/bin/pip install -q "jax[tpu]==0.10.2"
source launch/allocator.sh
.venv/bin/python - <<'PY'
import os, sys, jax
jax.distributed.initialize()
n = jax.device_count()
print(f"[tpu_pod] worker {jax.process_index()}/{jax.process_count()}: "
      f"{jax.local_device_count()} local / {n} global devices", flush=True)
want = os.environ.get("EXPECTED_DEVICES")
if want and int(want) != n:
  sys.exit(f"[tpu_pod] topology mismatch: expected {want} devices, found {n}")
PY
EXPECTED_DEVICES=${EXPECTED_DEVICES} .venv/bin/python main.py --distributed \
  --config=${CONFIG} --workdir=${WORKDIR}
EOS
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "EXPECTED_DEVICES=${EXPECTED_DEVICES} bash -c '$REMOTE'"

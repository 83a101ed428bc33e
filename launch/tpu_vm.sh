#!/bin/bash
# The same command on every worker of a Cloud TPU VM slice (a multi-host slice needs all its
# workers to run it; jax.distributed.initialize() finds them by itself).
#   launch/tpu_vm.sh my-tpu us-central2-b configs/ps.py:real /mnt/shared/runs/ps \
#       [--config.key=value ...]
# Every worker needs the repository at ~/merjax (MERJAX_DIR: another folder, absolute or
# relative to the home directory) with requirements-tpu.txt installed for python3
# (MERJAX_PYTHON: another interpreter, e.g. venv/bin/python). The workdir and the prepared
# dataset must be on a file system every worker sees (e.g. a Filestore or gcsfuse mount; gs://
# paths are not supported): each worker writes its share of every checkpoint there.
set -euo pipefail
if [[ $# -lt 4 ]]; then
    echo "usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
    exit 2
fi
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
# %q quotes each word for the workers' shell (a value may hold spaces or quotes).
# config.distributed comes last so that no override turns it off.
command=$(printf '%q ' cd "${MERJAX_DIR:-merjax}")
command+="&& $(printf '%q ' "${MERJAX_PYTHON:-python3}" -m merjax.main --config="$config" \
    --workdir="$workdir" "$@" --config.distributed=True)"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="${command% }"

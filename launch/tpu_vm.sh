#!/bin/bash
# The same command on every worker of a Cloud TPU VM slice (multi-host TPU pods need all hosts
# to run it; jax.distributed.initialize() finds the pod by itself).
#   launch/tpu_vm.sh my-tpu us-central2-b configs/ps.py:real gs-or-local-workdir \
#       [--config.key=value ...]
# The repository and its requirements must already be on every worker (e.g. at ~/merjax).
set -euo pipefail
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
# %q quotes each argument for the workers' shell (a value may hold spaces or quotes).
args=$(printf ' %q' --config="$config" --workdir="$workdir" --config.distributed=True "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
    --command "cd ~/merjax && python -m merjax.main$args"

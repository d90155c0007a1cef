#!/usr/bin/env bash
# TPU VM pod slice: the same command on every worker; JAX finds the other workers itself
# (jasper_jax.train.distributed detects TPU_WORKER_HOSTNAMES / CLOUD_TPU_TASK_ID and calls
# jax.distributed.initialize() without arguments).
#   launch/tpu_vm.sh TPU_NAME ZONE configs/jasper_paper.py --stages 1,2,3 [--config.key=value ...]
# The repository and its venv (`make install ACCEL=tpu`) must exist on every worker at ~/jasper-jax (e.g. via a startup script) and
# config.workdir must be shared storage (a GCS-fuse or Filestore mount) so that every worker resumes alike.
# A maintenance event sends SIGTERM: every worker saves a checkpoint at one agreed step and exits 75 (EXIT_REQUEUE);
# run this script again (the same command) to resume.
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [train arguments...]" >&2
  exit 2
fi
tpu=$1; zone=$2; config=$3; shift 3
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/jasper-jax && .venv/bin/python -m jasper_jax train --config $config$args"

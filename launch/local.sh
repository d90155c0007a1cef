#!/usr/bin/env bash
# launch/local.sh N D COMMAND...
# Run COMMAND as N JAX processes on this machine, each with D fake CPU devices, talking over gloo
# through a coordinator on 127.0.0.1 (jasper_jax.train.distributed reads JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID). Process 0's output is shown; the others' go to
# $LOCAL_LOG_DIR/process_<i>.log (default: a temporary folder, printed at the end if a process failed).
# Exits non-zero if any process fails (75 if they were all preempted: rerun the same command to resume).
# Example: launch/local.sh 2 4 .venv/bin/python -m jasper_jax train --config configs/tiny.py
set -u
if [ "$#" -lt 3 ]; then
  echo "usage: $0 N_PROCESSES DEVICES_PER_PROCESS COMMAND..." >&2
  exit 2
fi
n_processes=$1; devices=$2; shift 2
case "$n_processes$devices" in *[!0-9]*) echo "N and D must be positive integers" >&2; exit 2;; esac
port=${LOCAL_COORDINATOR_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=${LOCAL_LOG_DIR:-$(mktemp -d -t jasper-local-XXXXXX)}
mkdir -p "$log_dir"
pids=()
# a TERM to this script is passed on to every process (each then saves a checkpoint and exits 75)
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done; }
trap cleanup INT TERM
for ((i = 0; i < n_processes; i++)); do
  export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
         JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$n_processes" JAX_PROCESS_ID="$i"
  if [ "$i" -eq 0 ]; then
    "$@" > >(tee "$log_dir/process_$i.log") 2>&1 &  # $! is the process itself (signals reach it)
  else
    "$@" > "$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done
# exit codes: 0 all done; 75 (preempted, a checkpoint saved: rerun to resume) when every process that
# did not succeed exited 75; otherwise 1
status=0
for ((i = 0; i < n_processes; i++)); do
  while true; do  # a TERM/INT trapped during `wait` returns early: wait again for the process to end
    wait "${pids[$i]}"; code=$?
    if [ "$code" -gt 128 ] && kill -0 "${pids[$i]}" 2>/dev/null; then continue; fi
    break
  done
  if [ "$code" -eq 75 ]; then
    echo "launch/local.sh: process $i was preempted (exit 75): a checkpoint is saved; rerun to resume" >&2
    [ "$status" -eq 0 ] && status=75
  elif [ "$code" -ne 0 ]; then
    echo "launch/local.sh: process $i failed (exit $code); its log: $log_dir/process_$i.log" >&2
    tail -n 20 "$log_dir/process_$i.log" >&2
    status=1
  fi
done
exit $status

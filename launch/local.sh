#!/usr/bin/env bash
# Train on one host: its GPUs, or its CPU cores as XLA devices.
#
#   launch/local.sh CONFIG WORKDIR [--config.field=value ...]
#
#   launch/local.sh configs/byol.py:digits /tmp/byol_digits --config.num_steps=20
#   launch/local.sh configs/byol.py:cifar10 /tmp/byol_cifar10 --config.data.root=~/data/cifar10
#
# One process drives every device of the host (JAX's default on GPU; on CPU ssljax makes one
# XLA device per core). NUM_PROCESSES=N instead starts N processes joined by a coordinator on
# 127.0.0.1 -- on GPUs one per GPU (--local_device_ids), on CPU each with cores/N devices: the
# multi-host code path on one machine. Process 0 prints to the console, process i>0 to
# WORKDIR/logs/process_i.log; if one process fails the others are stopped.
#
# Environment:
#   PYTHON          interpreter with ssljax installed (default: python3, or .venv/bin/python)
#   NUM_PROCESSES   processes to start (default 1)
#   PORT            coordinator port for NUM_PROCESSES > 1 (default: a free one)
#   CPU_DEVICES     XLA CPU devices per process (default: cores / NUM_PROCESSES, at least 1)
#   MAIN_MODULE     module run with python -m (default ssljax.main)
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
config=$1
workdir=$2
shift 2

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
main_module=${MAIN_MODULE:-ssljax.main}
num_processes=${NUM_PROCESSES:-1}
if ! [[ $num_processes =~ ^[1-9][0-9]*$ ]]; then
  echo "NUM_PROCESSES=$num_processes must be a positive integer." >&2
  exit 2
fi
# Config files are given relative to the repository (configs/...), wherever this runs from.
if [[ $config != /* && -f $repo/${config%%:*} ]]; then config=$repo/$config; fi

num_gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  num_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi

if [[ $num_processes -eq 1 ]]; then
  echo "ssljax: one process on $(hostname), $([[ $num_gpus -gt 0 ]] && echo "$num_gpus GPU(s)" || echo "CPU")." >&2
  exec "$PYTHON" -m "$main_module" --config="$config" --workdir="$workdir" "$@"
fi

# ---- Several processes on this host -------------------------------------------------------
if [[ $num_gpus -gt 0 && $num_processes -gt $num_gpus ]]; then
  echo "NUM_PROCESSES=$num_processes exceeds the $num_gpus GPUs of this host: use one process" \
    "per GPU at most." >&2
  exit 2
fi
port=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
cores=$(nproc)
cpu_devices=${CPU_DEVICES:-$((cores / num_processes > 0 ? cores / num_processes : 1))}
mkdir -p "$workdir/logs"

pids=()
# shellcheck disable=SC2329  # invoked by the trap
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

for ((i = 0; i < num_processes; i++)); do
  args=(--config="$config" --workdir="$workdir" --coordinator_address="127.0.0.1:$port"
    --num_processes="$num_processes" --process_id="$i" "$@")
  env_vars=()
  if [[ $num_gpus -gt 0 ]]; then
    args+=(--local_device_ids="$i")
  else
    env_vars+=("XLA_FLAGS=${XLA_FLAGS:-} --xla_force_host_platform_device_count=$cpu_devices")
  fi
  if [[ $i -eq 0 ]]; then
    env "${env_vars[@]}" "$PYTHON" -m "$main_module" "${args[@]}" &
  else
    env "${env_vars[@]}" "$PYTHON" -m "$main_module" "${args[@]}" >"$workdir/logs/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
echo "ssljax: $num_processes processes (pids ${pids[*]}), coordinator 127.0.0.1:$port; logs of" \
  "processes 1.. in $workdir/logs/." >&2

# The first process to fail ends the job: its peers would otherwise wait for it forever.
status=0
for ((n = 0; n < num_processes; n++)); do
  if ! wait -n "${pids[@]}"; then
    status=1
    echo "ssljax: a process failed; stopping the others (see $workdir/logs/)." >&2
    break
  fi
done
exit "$status"

#!/usr/bin/env bash
# Start the head node of a Ray cluster on this machine and print the RAY_ADDRESS that joins it.
#
#   bash scripts/ray_start_head.sh [more `ray start` options, e.g. --block --dashboard-host=0.0.0.0]
#
# Env (all optional):
#   RAY_PORT     the head's port (default 6379)
#   NUM_CPUS     CPUs Ray may use here (--num-cpus; default: all of this machine's)
#   NUM_GPUS     GPUs Ray may use here (--num-gpus; default: all it detects)
#   RAY_HEAD_IP  the address the other machines reach this one at (default: Ray's guess, the outgoing interface)
#   VENV         the environment whose `ray` and python to use (default: $RL_TRAINER_VENV, else the repo's .venv,
#                else the ones on PATH)
# Then on every other machine: bash scripts/ray_start_worker.sh <the printed address>; and run the trainer with
# RAY_ADDRESS=<address> (or ray_kwargs.ray_init.address=<address>) trainer.nnodes=<machines>.
# With --block the command stays in the foreground (for job schedulers) and the Ray node stops when it is killed.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-${RL_TRAINER_VENV:-$REPO/.venv}}
RAY_PORT=${RAY_PORT:-6379}
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
if [ -x "$VENV/bin/ray" ]; then RAY=$VENV/bin/ray PY=$VENV/bin/python; else RAY=ray PY=python3; fi

args=(--head --port="$RAY_PORT")
if [ -n "${RAY_HEAD_IP:-}" ]; then
    args+=(--node-ip-address="$RAY_HEAD_IP")
    HEAD_IP=$RAY_HEAD_IP
else
    HEAD_IP=$("$PY" -c 'import ray.util; print(ray.util.get_node_ip_address())')
fi
if [ -n "${NUM_CPUS:-}" ]; then args+=(--num-cpus="$NUM_CPUS"); fi
if [ -n "${NUM_GPUS:-}" ]; then args+=(--num-gpus="$NUM_GPUS"); fi
ADDRESS=$HEAD_IP:$RAY_PORT

say_address() {
    echo "ray_start_head: other machines join with:  bash scripts/ray_start_worker.sh $ADDRESS"
    echo "ray_start_head: run the trainer with:       RAY_ADDRESS=$ADDRESS python -m rl_trainer.main trainer.nnodes=N ..."
    echo "RAY_ADDRESS=$ADDRESS"
}
for arg in "$@"; do
    if [ "$arg" = "--block" ]; then  # blocks forever: say where it will be before starting
        say_address
        exec "$RAY" start "${args[@]}" "$@"
    fi
done
"$RAY" start "${args[@]}" "$@"
say_address

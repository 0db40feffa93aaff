#!/usr/bin/env bash
# Join this machine to a running Ray cluster (started with scripts/ray_start_head.sh).
#
#   bash scripts/ray_start_worker.sh HEAD_ADDR [more `ray start` options, e.g. --block]     # HEAD_ADDR = ip:port
#
# Env (all optional): NUM_CPUS / NUM_GPUS (--num-cpus / --num-gpus; default: all Ray detects here),
# RAY_NODE_IP (--node-ip-address: the address the other machines reach this one at; default: Ray's guess),
# VENV (the environment whose `ray` to use; default: $RL_TRAINER_VENV, else the repo's .venv, else `ray` on PATH).
# With --block the command stays in the foreground (for job schedulers) and the Ray node stops when it is killed.
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash scripts/ray_start_worker.sh HEAD_ADDR [ray start options]   (HEAD_ADDR as printed by ray_start_head.sh)" >&2
    exit 2
fi
HEAD_ADDR=$1
shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-${RL_TRAINER_VENV:-$REPO/.venv}}
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
if [ -x "$VENV/bin/ray" ]; then RAY=$VENV/bin/ray; else RAY=ray; fi

args=(--address="$HEAD_ADDR")
if [ -n "${NUM_CPUS:-}" ]; then args+=(--num-cpus="$NUM_CPUS"); fi
if [ -n "${NUM_GPUS:-}" ]; then args+=(--num-gpus="$NUM_GPUS"); fi
if [ -n "${RAY_NODE_IP:-}" ]; then args+=(--node-ip-address="$RAY_NODE_IP"); fi
echo "ray_start_worker: joining the Ray cluster at $HEAD_ADDR"
exec "$RAY" start "${args[@]}" "$@"

#!/usr/bin/env bash
# The GPU check in one command:  bash scripts/gpu_check.sh [--dry-run] [--pack] [config overrides...]
#
# On a CUDA machine that has torch and transformers (no Ray, vLLM, hub or network needed): builds a random-init
# Qwen2.5-0.5B-shaped model, runs GRPO steps through the torchrun entry point (rl_trainer.tools.torchrun) in bf16
# over NCCL on every visible GPU, and checks (--check) finite losses, the rollout/actor log-prob gap
# (training/rollout_probs_diff_mean <= rollout.max_probs_diff_mean) and a checkpoint save/load round trip; each
# step's line has tokens/s and the actor update's MFU. Exit 0 when every check passes.
#
#   --dry-run  the same on CPU: gloo, 2 ranks, fp32, a tiny shape, 2 steps (CI runs it so the script cannot rot)
#   --pack     copy omegaconf and what it imports (antlr4, PyYAML: pure Python) from this Python into
#              $GPU_CHECK_DEPS (default .gpu_check_deps/, git-ignored), then exit; on a machine whose Python lacks
#              omegaconf the check puts that folder on PYTHONPATH (carry it along with the tree)
# PYTHON (default python3) runs it; NPROC (default: the number of GPUs) sets the ranks.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
DEPS=${GPU_CHECK_DEPS:-$ROOT/.gpu_check_deps}
dry_run=0
overrides=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        --pack)
            mkdir -p "$DEPS"
            "$PY" - "$DEPS" <<'PYEOF'
import importlib, shutil, sys
from pathlib import Path
for name in ("omegaconf", "antlr4", "yaml"):
    source = Path(importlib.import_module(name).__file__).parent
    shutil.copytree(source, Path(sys.argv[1]) / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"gpu_check: packed {name} from {source}")
PYEOF
            exit 0 ;;
        *) overrides+=("$arg") ;;
    esac
done
path="$ROOT"
if ! PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import omegaconf" 2>/dev/null; then
    if [ ! -d "$DEPS/omegaconf" ]; then
        echo "gpu_check: $PY cannot import omegaconf; install it, or run 'bash scripts/gpu_check.sh --pack' where it is installed and bring $DEPS along" >&2
        exit 2
    fi
    path="$ROOT:$DEPS"
fi
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
if [ "$dry_run" = 1 ]; then
    nproc=${NPROC:-2}
    args=(--shape qwen2-tiny --steps 2 --prompts-per-rank 2 --prompt-length 16 trainer.device=cpu
          data.max_response_length=8 actor_rollout_ref.rollout.n=4 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4
          actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8)
    export OMP_NUM_THREADS=1
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: torch sees no CUDA device here; run on a GPU machine, or pass --dry-run for the CPU rehearsal" >&2
        exit 2
    fi
    nproc=${NPROC:-$("$PY" -c "import torch; print(torch.cuda.device_count())")}
    args=(--shape qwen2.5-0.5b --steps 5 --prompts-per-rank 16 --prompt-length 256 data.max_response_length=256
          actor_rollout_ref.rollout.n=8 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=32
          actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64 actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=64)
fi
# Shared by both: GRPO with the KL loss (the reference model is exercised), a learning rate large enough that one
# step moves bf16 weights (the checkpoint check needs a step that changes the log-probs), rollout log-probs for the
# gap check.
args+=(algorithm.adv_estimator=grpo actor_rollout_ref.actor.use_kl_loss=true actor_rollout_ref.actor.optim.lr=1e-5
       actor_rollout_ref.rollout.calculate_log_probs=true actor_rollout_ref.rollout.max_probs_diff_mean=0.05)
echo "gpu_check: $nproc rank(s), $("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
exec "$PY" -m torch.distributed.run --standalone --nproc-per-node "$nproc" -m rl_trainer.tools.torchrun --check \
    "${args[@]}" ${overrides[@]+"${overrides[@]}"}
